"""ControlNet tab: a control picture (edges, shuffle, …) pins the composition; the prompt the rest."""

from __future__ import annotations

import gradio as gr
from PIL import Image

from pipelines.controlnet import (CANNY_DEFAULT, EMBEDDED_CONTROLNET, HUB_PREPROCESSORS, controlnet_stream,
                                  list_controlnets, load_controlnet, preprocess,
                                  preprocessor_names)
from pipelines.inputs import prepare_picture
from ui.controls import GenerationControls, user_error
from ui.lora_panel import LoraPanel
from ui.runner import MODEL_GROUP, api_preview_inputs, api_request, api_stream, result_image, to_viewer, wire_stop
from ui.step_viewer import StepViewer

TAB = "controlnet"


def controlnet_choices() -> list[str]:
    return sorted(set(list_controlnets()) | {EMBEDDED_CONTROLNET})


def make_control(model, picture, preprocessor, low, high, target_side=None) -> tuple[Image.Image, list[str]]:
    prepared, notes = prepare_picture(picture, model, target_side=target_side, what="control picture")
    return preprocess(preprocessor, prepared, low, high), notes


def build(manager, model_choice: gr.Dropdown) -> dict:
    model = manager.get()
    with gr.Row(elem_classes="ds-main"):
        with gr.Column(scale=2, min_width=320, elem_classes="ds-col"):
            with gr.Row():
                picture = gr.Image(label="Control picture (upload, or send a result here)", type="pil",
                                   image_mode=None, sources=["upload", "clipboard"], height=220,
                                   elem_classes="ds-pixelated", elem_id=f"{TAB}-picture")
                processed = gr.Image(label="What the ControlNet sees", type="pil", interactive=False, height=220,
                                     elem_classes="ds-pixelated", elem_id=f"{TAB}-processed", format="png")
            preprocessor = gr.Dropdown(preprocessor_names(), value="canny", label="Preprocessor",
                                       info=f"online only (need annotator weights): {', '.join(HUB_PREPROCESSORS)}")
            with gr.Row():
                low = gr.Slider(0, 255, value=CANNY_DEFAULT[0], step=1, label="Canny low threshold")
                high = gr.Slider(0, 255, value=CANNY_DEFAULT[1], step=1, label="Canny high threshold")
            controlnet_name = gr.Dropdown(controlnet_choices(), value=EMBEDDED_CONTROLNET, allow_custom_value=True,
                                          label="ControlNet", info="a folder in models/, or a Hub id (online)")
            with gr.Row():
                scale = gr.Slider(0, 2, value=1.0, step=0.05, label="Conditioning scale")
                start = gr.Slider(0, 1, value=0.0, step=0.05, label="Control from")
                end = gr.Slider(0, 1, value=1.0, step=0.05, label="Control until")
            controls = GenerationControls(TAB, model,
                                          prompt_placeholder="colours and kinds for the shapes in the control picture")
            lora = LoraPanel(TAB, manager, model_choice)
        with gr.Column(scale=3, min_width=360, elem_classes="ds-col"):
            viewer = StepViewer(TAB)
            result = result_image(TAB)
            info = gr.Markdown(elem_id=f"{TAB}-info")

    def show_control(model_name, picture_value, preprocessor_value, low_value, high_value):
        if picture_value is None:
            return None
        try:
            return make_control(manager.get(model_name), picture_value, preprocessor_value, low_value, high_value)[0]
        except Exception as error:
            raise user_error(error) from None

    for trigger in (picture.change, preprocessor.change, low.release, high.release):
        trigger(show_control, [model_choice, picture, preprocessor, low, high], processed,
                concurrency_id=MODEL_GROUP, api_visibility="private", show_progress="minimal")

    def generate(model_name, picture_value, preprocessor_value, low_value, high_value, controlnet_value,
                 scale_value, start_value, end_value, prompt, negative_prompt, steps, guidance_scale, seed, width,
                 height, scheduler, preview_every, preview_decoder, step_delay_ms, view, loras, request: gr.Request):
        settings = controls.request(prompt, negative_prompt, steps, guidance_scale, seed, width, height, scheduler,
                                    preview_every, preview_decoder, step_delay_ms)
        settings.loras = [tuple(entry) for entry in loras or []]

        def begin(control):
            loaded = manager.get(model_name)
            picture_for_model, notes = make_control(loaded, picture_value, preprocessor_value, low_value, high_value,
                                                    max(settings.width, settings.height))
            controlnet = load_controlnet(loaded, controlnet_value)
            return controlnet_stream(loaded, settings, [picture_for_model], [controlnet], [scale_value],
                                     start_value, end_value, control.cancel, names=[controlnet_value],
                                     notes=notes, live_view=control.watched)

        yield from to_viewer(begin, TAB, view, request)

    run_args = dict(fn=generate, inputs=[model_choice, picture, preprocessor, low, high, controlnet_name, scale,
                                         start, end, *controls.values, viewer.view, lora.selection],
                    outputs=[*viewer.outputs, result, info, controls.last_seed], concurrency_id=MODEL_GROUP,
                    show_progress="hidden", api_visibility="private")
    controls.generate.click(**run_args)
    controls.prompt.submit(**run_args)
    wire_stop(controls.stop, TAB)

    def controlnet(prompt: str, control_image: Image.Image, negative_prompt: str | None = None, steps: int = 25,
                   guidance_scale: float = 5.0, seed: int = -1, preprocessor: str = "canny",
                   low_threshold: int = CANNY_DEFAULT[0], high_threshold: int = CANNY_DEFAULT[1],
                   controlnet_model: str = EMBEDDED_CONTROLNET, conditioning_scale: float = 1.0,
                   control_start: float = 0.0, control_end: float = 1.0, scheduler: str = "model default",
                   loras: list | None = None, preview_every: int = 1, preview_decoder: str = "auto",
                   view: str = "x0"):
        """Generate following a control picture; streams previews of `view` (every `preview_every` steps,
        decoded by `preview_decoder`), then the final PNG and settings."""
        request = api_request(prompt, negative_prompt, steps, guidance_scale, seed, 0, 0, scheduler, loras,
                              preview_every, preview_decoder, view)

        def run():
            loaded = manager.get()
            control, notes = make_control(loaded, control_image, preprocessor, low_threshold, high_threshold)
            yield from controlnet_stream(loaded, request, [control], [load_controlnet(loaded, controlnet_model)],
                                         [conditioning_scale], control_start, control_end,
                                         names=[controlnet_model], notes=notes)

        yield from api_stream(run(), request.view)

    api_control = gr.Image(visible=False, type="pil", image_mode=None)
    gr.Button(visible=False).click(
        controlnet, [controls.prompt, api_control, controls.negative_prompt, controls.steps, controls.guidance_scale,
                     controls.seed, preprocessor, low, high, controlnet_name, scale, start, end, controls.scheduler,
                     gr.JSON(visible=False), *api_preview_inputs()],
        [gr.Image(visible=False, type="pil", format="png"), gr.JSON(visible=False)], api_name="controlnet",
        concurrency_id=MODEL_GROUP)
    return {"picture": picture, "controls": controls, "viewer": viewer, "result": result}
