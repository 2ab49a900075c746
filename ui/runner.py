"""Turns a stream of step events into widget updates; shared by every generation tab."""

from __future__ import annotations

import time

import gradio as gr

from pipelines.generation import GenerationResult
from pipelines.metadata import attach, infotext
from ui import runs
from ui.controls import user_error
from ui.step_viewer import LIVE_EVERY_S, StepViewer

MODEL_GROUP = "model"  # every event that runs the model shares this concurrency group


def result_info(result: GenerationResult) -> str:
    notes = "".join(f"\n- ⚠️ {note}" for note in result.notes)
    return f"**Seed {result.seed}** · {result.total_ms / 1000:.2f} s{notes}\n```\n{infotext(result.settings)}\n```"


def result_image(tab: str) -> gr.Image:
    """The finished picture; a PNG download keeps the settings in its text chunks."""
    return gr.Image(label="Result (PNG with settings)", type="pil", format="png", interactive=False,
                    elem_classes="ds-pixelated", height=200, elem_id=f"{tab}-result")


def to_viewer(start_stream, tab: str, view: str, request: gr.Request):
    """Run `start_stream(cancel_flag)` and yield updates for `StepViewer.outputs + [result, info, last_seed]`.

    Live pictures are throttled to what a browser can show; every step is still kept for scrubbing.
    """
    flag = runs.start(request, tab)
    try:
        last_yield = 0.0
        for item in start_stream(flag):
            if isinstance(item, GenerationResult):
                attach(item.image, item.settings)
                yield (*StepViewer.final_update(item, view), item.image, result_info(item), item.seed)
            elif time.perf_counter() - last_yield >= LIVE_EVERY_S or item.index == item.total - 1:
                last_yield = time.perf_counter()
                yield (*StepViewer.live_update(item, view), gr.skip(), gr.skip(), gr.skip())
    except Exception as error:  # shown to the user as a message, never a stack trace
        raise user_error(error) from None
    finally:
        runs.finish(request, tab, flag)


def wire_stop(button: gr.Button, tab: str) -> None:
    def stop(request: gr.Request):
        if runs.stop(request, tab):
            gr.Info("Stopping after this step …")

    button.click(stop, None, None, queue=False, api_visibility="private")


def api_stream(stream, final_only: bool = False):
    """For API endpoints: (x̂0 preview, step info) per previewed step, then (final PNG, settings)."""
    from PIL import Image

    try:
        for item in stream:
            if isinstance(item, GenerationResult):
                yield attach(item.image, item.settings), {**item.settings, "notes": item.notes, "final": True}
            elif item.pictures and not final_only:
                yield Image.fromarray(item.pictures["x0"]), {"step": item.index, "total": item.total,
                                                             "timestep": item.timestep,
                                                             "noise_left": item.noise_left, "final": False}
    except Exception as error:
        raise user_error(error) from None
