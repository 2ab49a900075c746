"""Controls shared by the generation tabs: prompt, sliders, seed, size, scheduler, preset, previews."""

from __future__ import annotations

import logging

import gradio as gr

from pipelines.generation import MAX_SEED, MAX_STEPS, GenerationError, GenerationRequest, decoder_names
from pipelines.loading import ModelLoadError
from pipelines.lora import LoraError
from pipelines.presets import PresetError, load_preset, preset_names
from pipelines.schedulers import DEFAULT_SCHEDULER, SchedulerError, scheduler_names

log = logging.getLogger("denoise_studio")
SCREEN_FPS = 20  # live frames a second a browser is sent; only those are decoded while the model runs
USER_ERRORS = (GenerationError, ModelLoadError, SchedulerError, PresetError, LoraError)


def user_error(error: Exception) -> gr.Error:
    """A message for the browser: the error's own text for expected problems, no stack trace."""
    if isinstance(error, USER_ERRORS):
        return gr.Error(str(error))
    log.exception("unexpected error")
    return gr.Error(f"Something went wrong ({type(error).__name__}: {error}). Your settings are unchanged; try again.")


class GenerationControls:
    """Creates the shared controls in the current Blocks context; `values` lists them in the
    order `request()` takes them."""

    def __init__(self, tab: str, model, prompt_placeholder: str = ""):
        size_multiple, default_size, decoders = model.size_multiple, model.default_size, decoder_names(model)
        self.decoders = decoders
        self.prompt = gr.Textbox(label="Prompt", lines=1, max_lines=6, placeholder=prompt_placeholder, autofocus=True,
                                 info="Enter generates", elem_id=f"{tab}-prompt",
                                 elem_classes="ds-o1")
        self.negative_prompt = gr.Textbox(label="Negative prompt", lines=1, placeholder="what to steer away from")
        with gr.Row(elem_classes="ds-o2"):
            self.generate = gr.Button("Generate", variant="primary", scale=3, elem_id=f"{tab}-generate")
            self.stop = gr.Button("Stop", variant="stop", scale=1, elem_id=f"{tab}-stop")
        names = preset_names()
        self.preset = gr.Dropdown(names, value="default" if "default" in names else None, label="Preset",
                                  info="files in presets/ (add your own)")
        self.steps = gr.Slider(1, MAX_STEPS, value=25, step=1, label="Steps", elem_id=f"{tab}-steps")
        self.guidance_scale = gr.Slider(0, 20, value=5.0, step=0.5, label="Guidance scale",
                                        info="≤ 1 turns classifier-free guidance off")
        with gr.Row():
            self.seed = gr.Number(value=-1, precision=0, minimum=-1, maximum=MAX_SEED, label="Seed (-1 = random)",
                                  scale=3)
            self.dice = gr.Button("🎲", scale=0, min_width=40)
            self.reuse = gr.Button("♻️", scale=0, min_width=40)
        self.last_seed = gr.State(None)
        with gr.Row():
            self.width = gr.Slider(size_multiple, 1024, value=default_size, step=size_multiple, label="Width")
            self.height = gr.Slider(size_multiple, 1024, value=default_size, step=size_multiple, label="Height")
        self.scheduler = gr.Dropdown(scheduler_names(), value=DEFAULT_SCHEDULER, label="Scheduler")
        with gr.Accordion("Step previews", open=False, elem_id=f"{tab}-previews"):
            self.preview_every = gr.Slider(0, 20, value=1, step=1, label="Preview every N steps (0 = none)",
                                           elem_id=f"{tab}-preview-every")
            self.preview_decoder = gr.Radio(decoders, value=decoders[0], label="Preview decoder",
                                            info="TAESD: a tiny learned decoder (when the model has one) · "
                                                 "linear: a fitted colour map, fastest · full VAE: exact, slowest",
                                            elem_id=f"{tab}-preview-decoder")
            self.step_delay_ms = gr.Slider(0, 1000, value=0, step=10, label="Pause after each step (ms, for teaching)",
                                           elem_id=f"{tab}-step-delay")

        self.dice.click(lambda: -1, None, self.seed, queue=False, api_visibility="private")
        self.reuse.click(lambda last, current: current if last is None else last, [self.last_seed, self.seed],
                         self.seed, queue=False, api_visibility="private")
        self.preset.change(self.apply_preset, self.preset, self.preset_outputs, queue=False,
                           api_visibility="private")

    @property
    def values(self):
        return [self.prompt, self.negative_prompt, self.steps, self.guidance_scale, self.seed, self.width,
                self.height, self.scheduler, self.preview_every, self.preview_decoder, self.step_delay_ms]

    @property
    def preset_outputs(self):
        return [self.steps, self.guidance_scale, self.scheduler, self.width, self.height, self.negative_prompt,
                self.preview_every, self.preview_decoder, self.step_delay_ms]

    def apply_preset(self, name):
        if not name:
            return [gr.skip()] * len(self.preset_outputs)
        try:
            preset = load_preset(name)
        except PresetError as error:
            raise gr.Error(str(error)) from None
        keys = ["steps", "guidance_scale", "scheduler", "width", "height", "negative_prompt", "preview_every",
                "preview_decoder", "step_delay_ms"]
        updates = []
        for key in keys:
            value = preset.get(key)
            if key in ("width", "height") and value == 0:
                value = None  # keep the model's native size already in the form
            if key == "preview_decoder" and value == "auto":
                value = self.decoders[0]
            elif key == "preview_decoder" and value is not None and value not in self.decoders:
                gr.Warning(f"Preset {name}: the {value} preview decoder is not loaded; keeping {self.decoders[0]}.")
                value = None
            updates.append(gr.skip() if value is None else value)
        if preset.get("description"):
            gr.Info(f"Preset {name}: {preset['description']}")
        return updates

    @staticmethod
    def request(prompt, negative_prompt, steps, guidance_scale, seed, width, height, scheduler, preview_every,
                preview_decoder, step_delay_ms) -> GenerationRequest:
        if seed is None:
            seed = -1
        return GenerationRequest(prompt=prompt or "", negative_prompt=negative_prompt or "", steps=int(steps),
                                 guidance_scale=float(guidance_scale), seed=int(seed), width=int(width),
                                 height=int(height), scheduler=scheduler or DEFAULT_SCHEDULER,
                                 preview_every=int(preview_every), preview_decoder=preview_decoder,
                                 preview_fps=SCREEN_FPS,
                                 step_delay_ms=int(step_delay_ms))
