"""The step viewer shared by every generation tab.

While a run goes on it shows the live picture of the chosen view and a progress bar; afterwards a
step slider, a filmstrip and Play go through every step with its numbers. Pictures travel at the
model's own size (64×64 for the embedded model) and the browser enlarges them without blur (CSS),
so a frame costs a tiny PNG. The run's steps stay in this browser session's `gr.State`; a view that
was not decoded while running is decoded when asked for, between two steps of whatever runs.
"""

from __future__ import annotations

import html
import time

import gradio as gr

from pipelines.generation import GenerationResult, StepEvent, decode_views
from ui import runs

VIEW_LABELS = {"x_t (noisy latent)": "x_t", "x̂0 (predicted picture)": "x0", "ε̂ (predicted noise)": "eps"}
VIEW_NAMES = {key: label for label, key in VIEW_LABELS.items()}
DEFAULT_VIEW = "x̂0 (predicted picture)"
LIVE_SIDE = 360  # on-screen size of the live picture (px); the browser enlarges without blur

LEGEND = """
- **step k/N** — the k-th of the N model evaluations this run makes (Heun makes two per step;
  with strength below 1 the run starts part-way, so N is smaller than the Steps slider).
- **t** — the timestep: the model's clock, from 999 (all noise) down to 0 (a clean picture).
- **ᾱ** (alpha-bar) — how much of the picture is left in the sample:
  x_t = √ᾱ · x̂0 + √(1−ᾱ) · ε. 1 is a clean picture, 0 is pure noise.
- **σ** (sigma) — the noise scale, σ = √((1−ᾱ)/ᾱ): how many times stronger the noise is than the
  picture. At the first step ᾱ is (almost) 0, so σ is huge — 1e+06 or more just means
  "nothing but noise yet", not an error.
- **noise left** — 1 − ᾱ, the share of the sample that is still noise.
- **ms** — how long this step took.
- **Views** — *x_t* is what the model was given; *x̂0* is its guess of the finished picture
  from x_t; *ε̂* is its guess of the noise in x_t. x̂0 and ε̂ come from the same model output, so they
  cost nothing extra.
"""

CSS = """
.ds-pixelated img, .ds-pixelated canvas { image-rendering: pixelated; }
.ds-fill img { width: 100%; height: 100%; object-fit: contain; }
.ds-progress progress { width: 100%; height: 14px; }
.ds-progress .ds-numbers { font-family: ui-monospace, monospace; font-size: 0.9em; }
.ds-filmstrip .caption-label { font-size: 0.75em; white-space: nowrap; overflow: visible; max-width: none; }
@media (max-width: 768px) {  /* phones: prompt, Generate and the live picture on one screen */
  .ds-main { flex-direction: column !important; flex-wrap: nowrap !important; }
  .ds-main > .ds-col { display: contents; }
  .ds-main > .ds-col > * { order: 10; }
  .ds-main > .ds-col > :is(.ds-o1, :has(.ds-o1)) { order: 1; }
  .ds-main > .ds-col > :is(.ds-o2, :has(.ds-o2)) { order: 2; }
  .ds-main > .ds-col > :is(.ds-o3, :has(.ds-o3)) { order: 3; }
  .ds-main > .ds-col > :is(.ds-o4, :has(.ds-o4)) { order: 4; }
  .ds-live { height: 220px !important; }
  .ds-o2 { flex-wrap: nowrap !important; }
  .ds-o2 button { min-width: 0 !important; }
  .ds-model-bar { flex-wrap: nowrap !important; }
  .ds-model-bar .ds-model-status { display: none; }
  .ds-model-bar button { min-width: 64px !important; max-width: 96px; }
  .ds-title p { display: none; }
}
"""


def progress_html(event: StepEvent | None, state: str = "running", message: str = "") -> str:
    """A progress bar and its line: state is running, done, stopped, failed or scrub."""
    if event is None:
        return (f"<div class='ds-progress'><progress value='0' max='1'></progress>"
                f"<div class='ds-numbers'>{html.escape(message)}</div></div>")
    value = event.index + 1
    text = event.numbers() + (f" · {message}" if message else "")
    return (f"<div class='ds-progress' data-state='{state}'><progress value='{value}' max='{event.total}'></progress>"
            f"<div class='ds-numbers'>{html.escape(text)}</div></div>")


class StepViewer:
    """Creates the viewer's components inside the current Blocks context and wires scrubbing."""

    def __init__(self, tab: str):
        self.tab = tab
        self.live = gr.Image(label="Denoising, step by step", type="numpy", format="png", interactive=False,
                             height=LIVE_SIDE, elem_classes=["ds-pixelated", "ds-fill", "ds-live", "ds-o3"],
                             elem_id=f"{tab}-live", buttons=["download", "fullscreen"])
        self.progress = gr.HTML(progress_html(None, message="Press Generate to watch the picture form."),
                                elem_id=f"{tab}-progress", elem_classes="ds-o4")
        self.view = gr.Radio(list(VIEW_LABELS), value=DEFAULT_VIEW, label="View", elem_id=f"{tab}-view",
                             info="what the sampler holds · the model's guess of the final picture · its guess of the noise")
        self.step = gr.Slider(1, 2, value=1, step=1, label="Step (drag to scrub after the run)",
                              interactive=False, elem_id=f"{tab}-step")
        self.numbers = gr.Markdown("", elem_id=f"{tab}-numbers")
        with gr.Row():
            self.play = gr.Button("▶ Play", size="sm", elem_id=f"{tab}-play", interactive=False)
            self.pause = gr.Button("⏸ Pause", size="sm", elem_id=f"{tab}-pause")
            self.speed = gr.Slider(1, 30, value=8, step=1, label="Play speed (steps per second)",
                                   elem_id=f"{tab}-speed")
        with gr.Accordion("What the numbers mean", open=False):
            gr.Markdown(LEGEND)
        self.filmstrip = gr.Gallery(label="Filmstrip (step · noise left)", columns=13, height="auto",
                                    allow_preview=False, elem_classes=["ds-pixelated", "ds-filmstrip"], format="png",
                                    elem_id=f"{tab}-filmstrip")
        self.run = gr.State(None)  # {"steps": [StepEvent], "interrupted": bool}; None while a run goes on

        # `.input`, not `.change`: only the user's own moves; the run's updates set the slider themselves
        private = dict(queue=False, show_progress="hidden", api_visibility="private")
        shown = [self.live, self.numbers, self.progress]
        self.step.input(self.show_step, [self.step, self.view, self.run], shown, **private)
        self.view.change(self.switch_view, [self.view, self.step, self.run],
                         [self.live, self.numbers, self.filmstrip], **private)
        self.filmstrip.select(self.pick, [self.view, self.run], [self.step, *shown], **private)
        playing = self.play.click(self.play_run, [self.step, self.speed, self.view, self.run], [self.step, *shown],
                                  concurrency_limit=None, show_progress="hidden", api_visibility="private")
        self.pause.click(None, None, None, cancels=[playing], **private)

    # outputs of a generation handler, in the order `clear`, `live_update` and `final_update` return them
    @property
    def outputs(self):
        return [self.live, self.progress, self.step, self.numbers, self.filmstrip, self.run, self.play]

    @staticmethod
    def clear(message: str):
        """At the start of a run: nothing of the previous run stays on screen."""
        return (None, progress_html(None, message=message), gr.update(minimum=1, maximum=2, value=1, interactive=False),
                "", [], None, gr.update(interactive=False))

    @staticmethod
    def live_update(event: StepEvent, view: str):
        picture = event.pictures.get(view)  # the progress line carries the numbers while running
        return (picture if picture is not None else gr.skip(), progress_html(event), gr.skip(), gr.skip(),
                gr.skip(), gr.skip(), gr.skip())

    @classmethod
    def final_update(cls, result: GenerationResult, view: str):
        steps = result.steps
        run = {"steps": steps, "interrupted": result.interrupted}
        if not steps:
            return (None, progress_html(None, message="no steps were run"), gr.skip(), "", [], run, gr.skip())
        last = steps[-1]
        if result.interrupted:
            message = f"stopped at step {len(steps)} of {last.total}"
        else:
            message = f"done in {result.total_ms / 1000:.2f} s"
        return (last.picture(view), progress_html(last, "stopped" if result.interrupted else "done", message),
                gr.update(minimum=1, maximum=max(len(steps), 2), value=len(steps), interactive=len(steps) > 1),
                cls.describe(run, len(steps)), cls.strip(view, run), run, gr.update(interactive=len(steps) > 1))

    @staticmethod
    def describe(run, position: int) -> str:
        return f"`{run['steps'][position - 1].numbers()}`"

    @classmethod
    def show_step(cls, position, view_label, run):
        """Slider position k shows step k, in the chosen view, with its numbers and progress."""
        if not run or not run["steps"]:
            return gr.skip(), gr.skip(), gr.skip()
        position = min(max(int(position), 1), len(run["steps"]))
        event = run["steps"][position - 1]
        state = "stopped" if run["interrupted"] and position == len(run["steps"]) else "scrub"
        return (event.picture(VIEW_LABELS[view_label]), cls.describe(run, position),
                progress_html(event, state, "stopped here" if state == "stopped" else ""))

    def switch_view(self, view_label, position, run, request: gr.Request):
        """A view switch applies at once: to the run going on (its next live frame) or to the
        finished run on screen (this step and the filmstrip)."""
        control = runs.current(request, self.tab)
        if control is not None:
            control.view = VIEW_LABELS[view_label]
        if not run or not run["steps"]:
            return gr.skip(), gr.skip(), gr.skip()
        picture, numbers, _ = self.show_step(position, view_label, run)
        return picture, numbers, self.strip(view_label, run)

    @staticmethod
    def strip(view_label, run):
        if not run:
            return gr.skip()
        view = VIEW_LABELS.get(view_label, view_label)
        decode_views(run["steps"], view)
        return [(s.pictures[view], f"{s.index + 1} · {100 * s.noise_left:.0f}%") for s in run["steps"]]

    @classmethod
    def pick(cls, view_label, run, selection: gr.SelectData):
        return selection.index + 1, *cls.show_step(selection.index + 1, view_label, run)

    @classmethod
    def play_run(cls, position, speed, view_label, run):
        """Replay the run from the current step (from the start when at the end) at `speed` steps/s."""
        if not run or not run["steps"]:
            return
        count = len(run["steps"])
        first = 1 if int(position) >= count else int(position)
        decode_views(run["steps"], VIEW_LABELS[view_label])  # once, so frames come at an even pace
        for k in range(first, count + 1):
            yield k, *cls.show_step(k, view_label, run)
            time.sleep(1.0 / max(float(speed), 1.0))
