"""The step viewer shared by every generation tab.

While a run goes on it shows the live picture of the chosen view and a progress bar; afterwards a
step slider and a filmstrip scrub through every previewed step with its numbers. The run's
pictures stay in this browser session's `gr.State`, so scrubbing never touches the model.
"""

from __future__ import annotations

import html

import gradio as gr
import numpy as np

from pipelines.generation import GenerationResult, StepEvent

VIEW_LABELS = {"x_t (noisy latent)": "x_t", "x̂0 (predicted picture)": "x0", "ε̂ (predicted noise)": "eps"}
DEFAULT_VIEW = "x̂0 (predicted picture)"
MIN_SIDE = 320  # small pictures (64×64) are enlarged to at least this, nearest-neighbour (no blur)
LIVE_EVERY_S = 0.05  # at most ~20 live updates per second reach the browser; every step is kept

CSS = """
.ds-pixelated img, .ds-pixelated canvas { image-rendering: pixelated; }
.ds-progress progress { width: 100%; height: 14px; }
.ds-progress .ds-numbers { font-family: ui-monospace, monospace; font-size: 0.9em; }
"""


def enlarge(picture: np.ndarray, min_side: int = MIN_SIDE) -> np.ndarray:
    """Integer nearest-neighbour upscale so the smaller side is at least `min_side`."""
    factor = max(1, -(-min_side // min(picture.shape[:2])))
    return picture.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else picture


def progress_html(event: StepEvent | None, done: bool = False, message: str = "") -> str:
    if event is None:
        return f"<div class='ds-progress'><progress value='0' max='1'></progress> {html.escape(message)}</div>"
    value = event.total if done else event.index + 1
    return (f"<div class='ds-progress'><progress value='{value}' max='{event.total}'></progress>"
            f"<div class='ds-numbers'>{html.escape(event.numbers())}"
            f"{' · ' + html.escape(message) if message else ''}</div></div>")


class StepViewer:
    """Creates the viewer's components inside the current Blocks context and wires scrubbing."""

    def __init__(self, tab: str):
        self.live = gr.Image(label="Denoising, step by step", type="numpy", format="png", interactive=False,
                             height=MIN_SIDE + 40, elem_classes="ds-pixelated", elem_id=f"{tab}-live")
        self.progress = gr.HTML(progress_html(None, message="Press Generate to watch the picture form."),
                                elem_id=f"{tab}-progress")
        self.view = gr.Radio(list(VIEW_LABELS), value=DEFAULT_VIEW, label="View", elem_id=f"{tab}-view",
                             info="what the sampler holds · the model's guess of the final picture · its guess of the noise")
        self.step = gr.Slider(0, 1, value=0, step=1, label="Step (after the run: drag to scrub)",
                              interactive=False, elem_id=f"{tab}-step")
        self.numbers = gr.Markdown("", elem_id=f"{tab}-numbers")
        self.filmstrip = gr.Gallery(label="Filmstrip", columns=10, height=140, allow_preview=False,
                                    elem_classes="ds-pixelated", format="png", elem_id=f"{tab}-filmstrip")
        self.run = gr.State(None)  # {"steps": [StepEvent with pictures], "final": picture}

        scrub_inputs = [self.step, self.view, self.run]
        scrub_outputs = [self.live, self.numbers]
        self.step.change(self.show_step, scrub_inputs, scrub_outputs, queue=False, show_progress="hidden",
                         api_visibility="private")
        self.view.change(self.show_step, scrub_inputs, scrub_outputs, queue=False, show_progress="hidden",
                         api_visibility="private")
        self.view.change(self.strip, [self.view, self.run], self.filmstrip, queue=False, show_progress="hidden",
                         api_visibility="private")
        self.filmstrip.select(self.pick, None, self.step, queue=False, api_visibility="private")

    # outputs of a generation handler, in the order `live_update` and `final_update` return them
    @property
    def outputs(self):
        return [self.live, self.progress, self.step, self.numbers, self.filmstrip, self.run]

    @staticmethod
    def live_update(event: StepEvent, view: str):
        picture = event.pictures[VIEW_LABELS[view]] if event.pictures else None
        return (enlarge(picture) if picture is not None else gr.skip(), progress_html(event),
                gr.skip(), event.numbers(), gr.skip(), gr.skip())

    @classmethod
    def final_update(cls, result: GenerationResult, view: str):
        steps = [s for s in result.steps if s.pictures]
        run = {"steps": steps, "final": np.asarray(result.image.convert("RGB"))}
        last = len(steps)  # the slider's last position is the finished picture
        message = "stopped" if result.interrupted else f"done in {result.total_ms / 1000:.2f} s"
        return (enlarge(run["final"]), progress_html(result.steps[-1] if result.steps else None, True, message),
                gr.update(minimum=0, maximum=max(last, 1), value=last, interactive=True),
                cls.describe(run, last), cls.strip(view, run), run)

    @staticmethod
    def describe(run, index: int) -> str:
        if index >= len(run["steps"]):
            return "**final picture** (decoded by the full VAE)"
        return f"`{run['steps'][index].numbers()}`"

    @classmethod
    def show_step(cls, index, view, run):
        if not run:
            return gr.skip(), gr.skip()
        index = int(index)
        if index >= len(run["steps"]):
            return enlarge(run["final"]), cls.describe(run, index)
        return enlarge(run["steps"][index].pictures[VIEW_LABELS[view]]), cls.describe(run, index)

    @staticmethod
    def strip(view, run):
        if not run:
            return gr.skip()
        key = VIEW_LABELS[view]
        items = [(s.pictures[key], f"{s.index + 1}: {100 * s.noise_left:.0f}% noise") for s in run["steps"]]
        return items + [(run["final"], "final")]

    @staticmethod
    def pick(selection: gr.SelectData):
        return selection.index
