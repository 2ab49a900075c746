"""Text-to-image tab: shared controls on the left, the step viewer and the result on the right."""

from __future__ import annotations

import time

import gradio as gr
from PIL import Image

from pipelines.generation import GenerationRequest, GenerationResult, stream
from pipelines.metadata import attach, infotext
from ui import runs
from ui.controls import GenerationControls, user_error
from ui.step_viewer import LIVE_EVERY_S, StepViewer

TAB = "txt2img"
MODEL_GROUP = "model"  # every event that runs the model shares this concurrency group


def result_info(result: GenerationResult) -> str:
    notes = "".join(f"\n- ⚠️ {note}" for note in result.notes)
    return f"**Seed {result.seed}** · {result.total_ms / 1000:.2f} s{notes}\n```\n{infotext(result.settings)}\n```"


def build(manager, model_choice: gr.Dropdown) -> dict:
    """Create the tab inside the current Blocks; returns its components for other tabs to use."""
    model = manager.get()
    with gr.Row():
        with gr.Column(scale=2, min_width=320):
            controls = GenerationControls(TAB, model.size_multiple, model.default_size,
                                          prompt_placeholder="a large red circle on the left and a blue star on a white background")
        with gr.Column(scale=3, min_width=360):
            viewer = StepViewer(TAB)
            result = gr.Image(label="Result (PNG with settings)", type="pil", format="png", interactive=False,
                              elem_classes="ds-pixelated", height=200)
            info = gr.Markdown()

    def generate(model_name, prompt, negative_prompt, steps, guidance_scale, seed, width, height, scheduler,
                 preview_every, preview_decoder, step_delay_ms, view, request: gr.Request):
        values = (prompt, negative_prompt, steps, guidance_scale, seed, width, height, scheduler, preview_every,
                  preview_decoder, step_delay_ms)
        flag = runs.start(request, TAB)
        try:
            loaded = manager.get(model_name)
            last_yield = 0.0
            for item in stream(loaded, type(loaded.pipe), controls.request(*values), cancel=flag):
                if isinstance(item, GenerationResult):
                    attach(item.image, item.settings)
                    yield (*viewer.final_update(item, view), item.image, result_info(item), item.seed)
                elif time.perf_counter() - last_yield >= LIVE_EVERY_S or item.index == item.total - 1:
                    last_yield = time.perf_counter()
                    yield (*viewer.live_update(item, view), gr.skip(), gr.skip(), gr.skip())
        except Exception as error:  # shown to the user as a message, never a stack trace
            raise user_error(error) from None
        finally:
            runs.finish(request, TAB, flag)

    inputs = [model_choice, *controls.values, viewer.view]
    outputs = [*viewer.outputs, result, info, controls.last_seed]
    run_args = dict(fn=generate, inputs=inputs, outputs=outputs, concurrency_id=MODEL_GROUP,
                    show_progress="hidden", api_visibility="private")
    controls.generate.click(**run_args)
    controls.prompt.submit(**run_args)
    def stop(request: gr.Request):
        if runs.stop(request, TAB):
            gr.Info("Stopping after this step …")

    controls.stop.click(stop, None, None, queue=False, api_visibility="private")

    # API: /txt2img streams (x̂0 preview, step numbers) per step, then (final image, settings).
    api_image = gr.Image(visible=False, type="pil", format="png")
    api_info = gr.JSON(visible=False)

    def txt2img(prompt: str, negative_prompt: str | None = None, steps: int = 25, guidance_scale: float = 5.0,
                seed: int = -1, width: int = 0, height: int = 0, scheduler: str = "model default"):
        """Generate an image; yields one preview per step and then the final picture with its settings."""
        request = GenerationRequest(prompt=prompt or "", negative_prompt=negative_prompt or "", steps=int(steps),
                                    guidance_scale=float(guidance_scale), seed=int(-1 if seed is None else seed),
                                    width=int(width or 0), height=int(height or 0), scheduler=scheduler)
        try:
            loaded = manager.get()
            for item in stream(loaded, type(loaded.pipe), request):
                if isinstance(item, GenerationResult):
                    yield attach(item.image, item.settings), {**item.settings, "notes": item.notes, "final": True}
                elif item.pictures:
                    yield Image.fromarray(item.pictures["x0"]), {"step": item.index, "total": item.total,
                                                                 "timestep": item.timestep,
                                                                 "noise_left": item.noise_left, "final": False}
        except Exception as error:
            raise user_error(error) from None

    api_inputs = [controls.prompt, controls.negative_prompt, controls.steps, controls.guidance_scale, controls.seed,
                  controls.width, controls.height, controls.scheduler]
    gr.Button(visible=False).click(txt2img, api_inputs, [api_image, api_info], api_name="txt2img",
                                   concurrency_id=MODEL_GROUP)
    return {"controls": controls, "viewer": viewer, "result": result}
