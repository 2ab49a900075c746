"""Inpainting tab: paint a mask over a picture, repaint that part with the prompt."""

from __future__ import annotations

import gradio as gr
import numpy as np
from PIL import Image

from pipelines.generation import GenerationError
from pipelines.inpaint import inpaint_stream
from ui.controls import GenerationControls
from ui.lora_panel import LoraPanel
from ui.runner import MODEL_GROUP, api_preview_inputs, api_request, api_stream, result_image, to_viewer, wire_stop
from ui.step_viewer import StepViewer

TAB = "inpaint"


def editor_to_image_and_mask(value) -> tuple[Image.Image, Image.Image]:
    """ImageEditor value -> (background picture, mask that is white where any layer was painted)."""
    if not value or value.get("background") is None:
        raise GenerationError("No picture to repaint: upload one or use “Send to inpaint” on a result.")
    background = value["background"]
    alpha = np.zeros((background.height, background.width), dtype=np.uint8)
    for layer in value.get("layers") or []:
        if layer is not None:
            layer_alpha = np.asarray(layer.convert("RGBA").resize(background.size).getchannel("A"))
            alpha = np.maximum(alpha, layer_alpha)
    return background, Image.fromarray(alpha)


def build(manager, model_choice: gr.Dropdown) -> dict:
    model = manager.get()
    with gr.Row(elem_classes="ds-main"):
        with gr.Column(scale=2, min_width=320, elem_classes="ds-col"):
            editor = gr.ImageEditor(label="Picture and mask: paint over what to repaint", type="pil",
                                    image_mode="RGBA", sources=["upload", "clipboard"], height=360,
                                    brush=gr.Brush(default_size=8, colors=["#ffffff"], color_mode="fixed"),
                                    eraser=gr.Eraser(default_size=8), layers=False, elem_id=f"{TAB}-editor",
                                    elem_classes="ds-pixelated", transforms=())
            with gr.Row():
                strength = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Strength",
                                     info="1 repaints from pure noise; lower keeps more of what is there",
                                     elem_id=f"{TAB}-strength")
                mask_blur = gr.Slider(0, 16, value=2, step=1, label="Mask blur (px)", info="feathers the edge")
            controls = GenerationControls(TAB, model,
                                          prompt_placeholder="what to paint inside the mask, e.g. a blue star")
            lora = LoraPanel(TAB, manager, model_choice)
        with gr.Column(scale=3, min_width=360, elem_classes="ds-col"):
            viewer = StepViewer(TAB)
            result = result_image(TAB)
            info = gr.Markdown(elem_id=f"{TAB}-info")

    def generate(model_name, editor_value, strength_value, blur_value, prompt, negative_prompt, steps,
                 guidance_scale, seed, width, height, scheduler, preview_every, preview_decoder, step_delay_ms, view,
                 loras, request: gr.Request):
        settings = controls.request(prompt, negative_prompt, steps, guidance_scale, seed, width, height, scheduler,
                                    preview_every, preview_decoder, step_delay_ms)
        settings.loras = [tuple(entry) for entry in loras or []]

        def start(control):
            image, mask = editor_to_image_and_mask(editor_value)
            return inpaint_stream(manager.get(model_name), settings, image, mask, strength_value, blur_value,
                                  control.cancel, live_view=control.watched)

        yield from to_viewer(start, TAB, view, request)

    run_args = dict(fn=generate, inputs=[model_choice, editor, strength, mask_blur, *controls.values, viewer.view,
                                         lora.selection],
                    outputs=[*viewer.outputs, result, info, controls.last_seed], concurrency_id=MODEL_GROUP,
                    show_progress="hidden", api_visibility="private")
    controls.generate.click(**run_args)
    controls.prompt.submit(**run_args)
    wire_stop(controls.stop, TAB)

    def inpaint(prompt: str, image: Image.Image, mask: Image.Image, negative_prompt: str | None = None,
                steps: int = 25, guidance_scale: float = 5.0, seed: int = -1, strength: float = 1.0,
                mask_blur: int = 2, scheduler: str = "model default", loras: list | None = None,
                preview_every: int = 1, preview_decoder: str = "auto", view: str = "x0"):
        """Repaint the white part of `mask` in `image`; streams previews of `view` (every `preview_every`
        steps, decoded by `preview_decoder`), then the final PNG and settings."""
        request = api_request(prompt, negative_prompt, steps, guidance_scale, seed, 0, 0, scheduler, loras,
                              preview_every, preview_decoder, view)
        yield from api_stream(inpaint_stream(manager.get(), request, image, mask, strength, mask_blur), request.view)

    api_image = gr.Image(visible=False, type="pil", image_mode=None)
    api_mask = gr.Image(visible=False, type="pil", image_mode=None)
    gr.Button(visible=False).click(
        inpaint, [controls.prompt, api_image, api_mask, controls.negative_prompt, controls.steps,
                  controls.guidance_scale, controls.seed, strength, mask_blur, controls.scheduler, gr.JSON(visible=False),
                  *api_preview_inputs()],
        [gr.Image(visible=False, type="pil", format="png"), gr.JSON(visible=False)], api_name="inpaint",
        concurrency_id=MODEL_GROUP)
    return {"editor": editor, "controls": controls, "viewer": viewer, "result": result}
