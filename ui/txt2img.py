"""Text-to-image tab: shared controls on the left, the step viewer and the result on the right."""

from __future__ import annotations

import gradio as gr

from pipelines.generation import GenerationRequest, stream
from ui.controls import GenerationControls
from ui.lora_panel import LoraPanel
from ui.runner import MODEL_GROUP, api_stream, result_image, to_viewer, wire_stop
from ui.step_viewer import StepViewer

TAB = "txt2img"


def build(manager, model_choice: gr.Dropdown) -> dict:
    """Create the tab inside the current Blocks; returns its components for other tabs to use."""
    model = manager.get()
    with gr.Row():
        with gr.Column(scale=2, min_width=320):
            controls = GenerationControls(TAB, model.size_multiple, model.default_size,
                                          prompt_placeholder="a large red circle on the left and a blue star on a white background")
            lora = LoraPanel(TAB, manager, model_choice)
        with gr.Column(scale=3, min_width=360):
            viewer = StepViewer(TAB)
            result = result_image(TAB)
            send_row = gr.Row()
            info = gr.Markdown()

    def generate(model_name, prompt, negative_prompt, steps, guidance_scale, seed, width, height, scheduler,
                 preview_every, preview_decoder, step_delay_ms, view, loras, request: gr.Request):
        settings = controls.request(prompt, negative_prompt, steps, guidance_scale, seed, width, height, scheduler,
                                    preview_every, preview_decoder, step_delay_ms)
        settings.loras = [tuple(entry) for entry in loras or []]

        def start(flag):
            loaded = manager.get(model_name)
            return stream(loaded, type(loaded.pipe), settings, cancel=flag)

        yield from to_viewer(start, TAB, view, request)

    run_args = dict(fn=generate, inputs=[model_choice, *controls.values, viewer.view, lora.selection],
                    outputs=[*viewer.outputs, result, info, controls.last_seed], concurrency_id=MODEL_GROUP,
                    show_progress="hidden", api_visibility="private")
    controls.generate.click(**run_args)
    controls.prompt.submit(**run_args)
    wire_stop(controls.stop, TAB)

    # API: /txt2img streams (x̂0 preview, step numbers) per step, then (final image, settings).
    def txt2img(prompt: str, negative_prompt: str | None = None, steps: int = 25, guidance_scale: float = 5.0,
                seed: int = -1, width: int = 0, height: int = 0, scheduler: str = "model default",
                loras: list | None = None):
        """Generate an image; yields one preview per step and then the final picture with its settings.

        `loras`: [[name, weight], …] with names of LoRAs in models/loras or Hub ids."""
        request = GenerationRequest(prompt=prompt or "", negative_prompt=negative_prompt or "", steps=int(steps),
                                    guidance_scale=float(guidance_scale), seed=int(-1 if seed is None else seed),
                                    width=int(width or 0), height=int(height or 0), scheduler=scheduler,
                                    loras=[tuple(e) for e in loras or []])
        loaded = manager.get()
        yield from api_stream(stream(loaded, type(loaded.pipe), request))

    api_inputs = [controls.prompt, controls.negative_prompt, controls.steps, controls.guidance_scale, controls.seed,
                  controls.width, controls.height, controls.scheduler, gr.JSON(visible=False)]
    gr.Button(visible=False).click(txt2img, api_inputs, [gr.Image(visible=False, type="pil", format="png"),
                                                         gr.JSON(visible=False)],
                                   api_name="txt2img", concurrency_id=MODEL_GROUP)
    return {"controls": controls, "viewer": viewer, "result": result, "send_row": send_row}
