"""Turns a stream of step events into widget updates; shared by every generation tab."""

from __future__ import annotations

import gradio as gr

from pipelines.generation import GenerationRequest, GenerationResult
from pipelines.metadata import attach, infotext
from ui import runs
from ui.controls import user_error
from ui.step_viewer import VIEW_LABELS, StepViewer

MODEL_GROUP = "model"  # every event that runs the model shares this concurrency group


def result_info(result: GenerationResult) -> str:
    notes = "".join(f"\n- ⚠️ {note}" for note in result.notes)
    return f"**Seed {result.seed}** · {result.total_ms / 1000:.2f} s{notes}\n```\n{infotext(result.settings)}\n```"


def result_image(tab: str) -> gr.Image:
    """The finished picture; a PNG download keeps the settings in its text chunks."""
    return gr.Image(label="Result (PNG with settings)", type="pil", format="png", interactive=False,
                    elem_classes=["ds-pixelated", "ds-fill"], height=320, elem_id=f"{tab}-result")


def to_viewer(start_stream, tab: str, view_label: str, request: gr.Request):
    """Run `start_stream(control)` and yield updates for `StepViewer.outputs + [result, info, last_seed]`.

    `control` (ui/runs.py) carries this run's cancel flag and the view the user is watching. The
    first update clears the previous run, so a failed run never leaves another run's picture on
    screen as if it were its own. Live pictures come at the rate they are decoded (`SCREEN_FPS`
    a second, ui/controls.py); every step is still kept for scrubbing.
    """
    control = runs.start(request, tab, VIEW_LABELS[view_label])
    try:
        yield (*StepViewer.clear("starting …"), None, "", gr.skip())
        for item in start_stream(control):
            if isinstance(item, GenerationResult):
                attach(item.image, item.settings)
                yield (*StepViewer.final_update(item, control.view), item.image, result_info(item), item.seed)
            elif item.pictures or item.index == item.total - 1:  # frames decoded live: a screen's rate
                yield (*StepViewer.live_update(item, control.view), gr.skip(), gr.skip(), gr.skip())
    except Exception as error:  # shown to the user as a message, never a stack trace
        message = user_error(error)
        yield (*StepViewer.clear(f"failed: {message.message}"), None, f"**Failed:** {message.message}", gr.skip())
        raise message from None
    finally:
        runs.finish(request, tab, control)


def wire_stop(button: gr.Button, tab: str) -> None:
    def stop(request: gr.Request):
        if runs.stop(request, tab):
            gr.Info("Stopping after this step …")

    button.click(stop, None, None, queue=False, api_visibility="private")


def api_stream(stream, view: str = "x0"):
    """For API endpoints: (preview of `view`, step numbers) per previewed step, then (final PNG, settings)."""
    from PIL import Image

    try:
        for item in stream:
            if isinstance(item, GenerationResult):
                yield attach(item.image, item.settings), {**item.settings, "notes": item.notes, "final": True,
                                                          "total_ms": round(item.total_ms, 1)}
            elif view in item.pictures:
                yield Image.fromarray(item.pictures[view]), {
                    "step": item.index, "total": item.total, "view": view, "timestep": item.timestep,
                    "sigma": item.sigma, "alpha_bar": item.alpha_bar, "noise_left": item.noise_left,
                    "ms": round(item.ms, 2), "final": False}
    except Exception as error:
        raise user_error(error) from None


def api_preview_inputs() -> list:
    """Hidden inputs for the API's preview_every, preview_decoder and view (free values, checked later)."""
    return [gr.Number(1, visible=False, precision=None), gr.Textbox("auto", visible=False),
            gr.Textbox("x0", visible=False)]


def api_request(prompt, negative_prompt, steps, guidance_scale, seed, width, height, scheduler, loras,
                preview_every=1, preview_decoder="auto", view="x0") -> GenerationRequest:
    """An API call's settings as a request; numbers are checked and coerced by `check_request`."""
    return GenerationRequest(prompt=prompt or "", negative_prompt=negative_prompt or "", steps=steps,
                             guidance_scale=guidance_scale, seed=-1 if seed is None else seed,
                             width=width or 0, height=height or 0, scheduler=scheduler or "model default",
                             loras=[tuple(e) for e in loras or []],
                             preview_every=1 if preview_every is None else preview_every,
                             preview_decoder=preview_decoder or "auto", view=view or "x0")
