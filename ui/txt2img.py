"""Text-to-image tab: shared controls on the left, the step viewer and the result on the right."""

from __future__ import annotations

import gradio as gr

from pipelines.generation import stream
from ui.controls import GenerationControls
from ui.lora_panel import LoraPanel
from ui.runner import MODEL_GROUP, api_preview_inputs, api_request, api_stream, result_image, to_viewer, wire_stop
from ui.step_viewer import StepViewer

TAB = "txt2img"


def build(manager, model_choice: gr.Dropdown) -> dict:
    """Create the tab inside the current Blocks; returns its components for other tabs to use."""
    model = manager.get()
    with gr.Row(elem_classes="ds-main"):
        with gr.Column(scale=2, min_width=320, elem_classes="ds-col"):
            controls = GenerationControls(TAB, model,
                                          prompt_placeholder="a large red circle on the left and a blue star on a white background")
            lora = LoraPanel(TAB, manager, model_choice)
        with gr.Column(scale=3, min_width=360, elem_classes="ds-col"):
            viewer = StepViewer(TAB)
            result = result_image(TAB)
            send_row = gr.Row()
            info = gr.Markdown(elem_id=f"{TAB}-info")

    def generate(model_name, prompt, negative_prompt, steps, guidance_scale, seed, width, height, scheduler,
                 preview_every, preview_decoder, step_delay_ms, view, loras, request: gr.Request):
        settings = controls.request(prompt, negative_prompt, steps, guidance_scale, seed, width, height, scheduler,
                                    preview_every, preview_decoder, step_delay_ms)
        settings.loras = [tuple(entry) for entry in loras or []]

        def start(control):
            loaded = manager.get(model_name)
            return stream(loaded, type(loaded.pipe), settings, cancel=control.cancel, live_view=control.watched)

        yield from to_viewer(start, TAB, view, request)

    run_args = dict(fn=generate, inputs=[model_choice, *controls.values, viewer.view, lora.selection],
                    outputs=[*viewer.outputs, result, info, controls.last_seed], concurrency_id=MODEL_GROUP,
                    show_progress="hidden", api_visibility="private")
    controls.generate.click(**run_args)
    controls.prompt.submit(**run_args)
    wire_stop(controls.stop, TAB)

    # API: /txt2img streams (preview of `view`, step numbers) per previewed step, then (final image, settings).
    def txt2img(prompt: str, negative_prompt: str | None = None, steps: int = 25, guidance_scale: float = 5.0,
                seed: int = -1, width: int = 0, height: int = 0, scheduler: str = "model default",
                loras: list | None = None, preview_every: int = 1, preview_decoder: str = "auto",
                view: str = "x0"):
        """Generate an image; yields one preview per previewed step and then the final picture with its settings.

        `loras`: [[name, weight], …] with names of LoRAs in models/loras or Hub ids. `preview_every`: stream a
        preview every N steps (0: only the final picture). `preview_decoder`: "auto" (the model's best), "TAESD",
        "linear approximation" or "full VAE". `view`: "x0" (the predicted picture), "x_t" (the noisy latent)
        or "eps" (the predicted noise)."""
        request = api_request(prompt, negative_prompt, steps, guidance_scale, seed, width, height, scheduler, loras,
                              preview_every, preview_decoder, view)
        loaded = manager.get()
        yield from api_stream(stream(loaded, type(loaded.pipe), request), request.view)

    api_inputs = [controls.prompt, controls.negative_prompt, controls.steps, controls.guidance_scale, controls.seed,
                  controls.width, controls.height, controls.scheduler, gr.JSON(visible=False), *api_preview_inputs()]
    gr.Button(visible=False).click(txt2img, api_inputs, [gr.Image(visible=False, type="pil", format="png"),
                                                         gr.JSON(visible=False)],
                                   api_name="txt2img", concurrency_id=MODEL_GROUP)
    return {"controls": controls, "viewer": viewer, "result": result, "send_row": send_row}
