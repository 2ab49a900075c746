"""A generation request -> a stream of step events -> a result.

`stream()` runs one diffusers pipeline call in a worker thread and yields a `StepEvent` after
every denoising step, then a `GenerationResult`. What the events show comes from tapping the
request's own scheduler (`StepTap`): its `step(model_output, timestep, sample)` call already holds
everything needed for x_t, x̂0 and ε̂, so previews cost no extra UNet evaluation.

Isolation: every request runs on its own pipeline object (`from_pipe` on shared weights) with its
own scheduler instance, its own CPU generator and its own cancel flag.
"""

from __future__ import annotations

import functools
import queue
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from pipelines.noise_math import model_view, noise_level, view_coefficients
from pipelines.previews import LINEAR_DECODERS, FullVaeDecoder, TinyVaeDecoder
from pipelines.schedulers import DEFAULT_SCHEDULER, describe, make_scheduler
from pipelines.worker import WORKERS, on_worker

MAX_SEED = 2**32 - 1
MAX_STEPS = 150
MAX_SIDE = 2048


# Every torch call runs on the one torch thread (pipelines/worker.py): building the request's pipeline
# and preview decoder (fitting the linear decoder runs the VAE), the pipeline call, previews between
# steps and the final decode of a stopped run; the consumer only forwards events. Torch work on the
# consumer's thread starts a second OpenMP team, which slowed every later generation about 2x.


class GenerationError(Exception):
    """A request that cannot run as given; the message is meant for the user."""


@dataclass
class GenerationRequest:
    """Settings of one generation. Width/height 0 mean the model's native size; seed -1 random."""

    prompt: str
    negative_prompt: str = ""
    steps: int = 25
    guidance_scale: float = 5.0
    seed: int = -1
    width: int = 0
    height: int = 0
    scheduler: str = DEFAULT_SCHEDULER
    preview_every: int = 1  # decode previews every N steps (0: no previews)
    preview_decoder: str = "linear approximation"
    step_delay_ms: int = 0  # teaching: pause after each step so people can follow
    loras: list = field(default_factory=list)  # [(LoRA name, weight)]: folder names, Hub ids or loaded names


@dataclass
class StepEvent:
    index: int  # 0-based step (model evaluation) index
    total: int
    timestep: float
    sigma: float
    alpha_bar: float
    noise_left: float  # fraction of the sample's variance that is noise, 0…1
    ms: float  # wall time of this step
    pictures: dict[str, np.ndarray] | None  # view name -> H×W×3 uint8, None when not previewed

    def numbers(self) -> str:
        return (f"step {self.index + 1}/{self.total} · t={self.timestep:.0f} · σ={self.sigma:.3g} · "
                f"ᾱ={self.alpha_bar:.4f} · noise left {100 * self.noise_left:.1f}% · {self.ms:.0f} ms")


@dataclass
class GenerationResult:
    image: Image.Image
    seed: int
    settings: dict  # everything needed to reproduce it (recorded in the PNG)
    steps: list[StepEvent] = field(default_factory=list)
    interrupted: bool = False
    total_ms: float = 0.0
    notes: list[str] = field(default_factory=list)  # adjustments made to the request


def resolve_seed(seed) -> int:
    """-1/None -> a fresh random seed; otherwise must be an integer in 0 … 2^32−1."""
    if seed is None or int(seed) < 0:
        return secrets.randbelow(MAX_SEED + 1)
    seed = int(seed)
    if seed > MAX_SEED:
        raise GenerationError(f"Seed must be between 0 and {MAX_SEED} (or -1 for random); got {seed}.")
    return seed


def check_size(model, width: int, height: int) -> tuple[int, int, list[str]]:
    """Round a requested size to what the model accepts; say so when it changes."""
    multiple, notes = model.size_multiple, []
    sizes = []
    for label, value in (("width", width), ("height", height)):
        value = int(value or model.default_size)
        rounded = min(max(multiple, round(value / multiple) * multiple), MAX_SIDE)
        if rounded != value:
            notes.append(f"{label} {value} → {rounded} (this model needs multiples of {multiple}, at most {MAX_SIDE})")
        sizes.append(rounded)
    return sizes[0], sizes[1], notes


def check_request(model, request: GenerationRequest) -> tuple[GenerationRequest, list[str]]:
    """Validate and normalise a request for a model; returns the request to run and notes."""
    if not isinstance(request.prompt, str):
        raise GenerationError("The prompt must be text.")
    for entry in request.loras or []:
        if len(entry) != 2 or not -2 <= float(entry[1]) <= 2:
            raise GenerationError(f"Each LoRA needs a name and a weight between -2 and 2; got {entry!r}.")
    steps = int(request.steps)
    if not 1 <= steps <= MAX_STEPS:
        raise GenerationError(f"Steps must be between 1 and {MAX_STEPS}; got {steps}.")
    guidance = float(request.guidance_scale)
    if not 0 <= guidance <= 50 or guidance != guidance:
        raise GenerationError(f"Guidance scale must be between 0 and 50; got {request.guidance_scale}.")
    width, height, notes = check_size(model, request.width, request.height)
    tokenizer = model.pipe.tokenizer
    if tokenizer is not None and request.prompt:
        used = len(tokenizer(request.prompt).input_ids)
        if used > tokenizer.model_max_length:
            notes.append(f"prompt is {used} tokens; this model reads only the first {tokenizer.model_max_length}")
    fixed = GenerationRequest(**{**asdict(request), "steps": steps, "guidance_scale": guidance,
                                 "seed": resolve_seed(request.seed), "width": width, "height": height,
                                 "preview_every": max(0, int(request.preview_every))})
    return fixed, notes


def preview_decoder(model, name: str):
    if name == "full VAE":
        return FullVaeDecoder(model.pipe.vae)
    if name == "TAESD":
        taesd = getattr(model, "taesd", None)
        if taesd is None:
            raise GenerationError("No TAESD decoder is loaded: start the app with --taesd FOLDER_OR_HUB_ID.")
        return TinyVaeDecoder(taesd)
    return LINEAR_DECODERS.get(model.pipe.vae)


class StepTap:
    """Wraps one request's scheduler so every step records what the model saw and predicted."""

    def __init__(self, scheduler):
        self.last = None
        original_step = scheduler.step

        # wraps: keeps step's signature visible, so pipelines still pass it `generator` and `eta`
        @functools.wraps(original_step)
        def step(model_output, timestep, sample, *args, **kwargs):
            level = noise_level(scheduler, timestep)
            self.last = (model_output.detach(), sample.detach(), level, float(timestep))
            return original_step(model_output, timestep, sample, *args, **kwargs)

        scheduler.step = step  # an instance attribute: only this request's scheduler is wrapped


def stream(model, pipeline_class, request: GenerationRequest, cancel: threading.Event | None = None,
           extra_call_args: dict | None = None, extra_components: dict | None = None,
           extra_settings: dict | None = None) -> Iterator[StepEvent | GenerationResult]:
    """Run one request, yielding a `StepEvent` per denoising step and then the `GenerationResult`.

    Args:
        model: a `LoadedModel`.
        pipeline_class: the diffusers pipeline class for the task (text-to-image, inpaint, …).
        request: the settings; validated here (see `check_request`).
        cancel: set it to stop this request at the next step (other requests are untouched).
        extra_call_args: task inputs passed to the pipeline call (image, mask_image, …).
        extra_components: components to add to the shared ones (a ControlNet).
        extra_settings: task settings to record in the result's metadata.
    """
    request, notes = check_request(model, request)
    loras = [(model.loras.load(name).name, float(weight)) for name, weight in request.loras or []]
    cancel = cancel or threading.Event()

    def prepare():
        shared = model.derive(pipeline_class, **(extra_components or {}))
        scheduler = make_scheduler(request.scheduler, model.pipe.scheduler)
        pipe = pipeline_class.from_pipe(shared, scheduler=scheduler)  # own object: own flags, own scheduler
        pipe.set_progress_bar_config(disable=True)
        decode = preview_decoder(model, request.preview_decoder) if request.preview_every else None
        return scheduler, pipe, decode

    scheduler, pipe, decode = on_worker(prepare)
    tap = StepTap(scheduler)
    prediction_type = scheduler.config.get("prediction_type", "epsilon")
    events: queue.Queue = queue.Queue()
    done = object()
    total = [request.steps]
    last_time = [time.perf_counter()]

    def on_step_end(p, index, timestep, callback_kwargs):
        if index == 0:
            total[0] = len(p.scheduler.timesteps)  # Heun and friends take more model calls than steps
        model_output, sample, level, t = tap.last
        now = time.perf_counter()
        pictures = None
        if decode is not None and (index % request.preview_every == 0 or index == total[0] - 1):
            pictures = decode.views(model_output[:1], sample[:1], view_coefficients(level, prediction_type))
        events.put(StepEvent(index=index, total=total[0], timestep=t, sigma=level.sigma, alpha_bar=level.alpha_bar,
                             noise_left=level.noise_left, ms=(now - last_time[0]) * 1000, pictures=pictures))
        if request.step_delay_ms:
            time.sleep(request.step_delay_ms / 1000)
        if cancel.is_set():
            p._interrupt = True  # this request's pipeline object only
        last_time[0] = time.perf_counter()
        return callback_kwargs

    generator = torch.Generator("cpu").manual_seed(request.seed)  # same seed, same picture, any device
    call_args = dict(prompt=request.prompt, negative_prompt=request.negative_prompt or None,
                     num_inference_steps=request.steps, guidance_scale=request.guidance_scale,
                     width=request.width, height=request.height, generator=generator,
                     callback_on_step_end=on_step_end, **(extra_call_args or {}))

    def work():
        try:
            with model.loras.use(loras):  # waits while other requests run with another LoRA set
                events.put(pipe(**call_args).images[0])
        except BaseException as error:  # handed to the consumer thread
            events.put(error)
        finally:
            events.put(done)

    started = time.perf_counter()
    worker = WORKERS.submit(work)
    steps: list[StepEvent] = []
    image = None
    try:
        while (item := events.get()) is not done:
            if isinstance(item, StepEvent):
                steps.append(item)
                yield item
            elif isinstance(item, BaseException):
                raise GenerationError(f"Generation failed: {type(item).__name__}: {item}") from item
            else:
                image = item
    finally:
        cancel.set()  # a consumer that stops listening stops the work too
        worker.result()
    interrupted = bool(pipe._interrupt)
    if interrupted and tap.last is not None:
        notes.append(f"stopped after step {len(steps)} of {total[0]}: the picture is the model's guess x̂0 at that point")
        model_output, sample, level, _ = tap.last

        def decode_guess():
            _, x0, _ = model_view(model_output[:1], sample[:1], level, prediction_type)
            return Image.fromarray(FullVaeDecoder(model.pipe.vae)(x0)[0])

        image = on_worker(decode_guess)
    scheduler_name = describe(scheduler)
    if request.scheduler == DEFAULT_SCHEDULER:
        scheduler_name = f"{DEFAULT_SCHEDULER} ({scheduler_name})"
    settings = dict(asdict(request), scheduler=scheduler_name, model=model.name, loras=model.loras.describe(loras),
                    **(extra_settings or {}))
    yield GenerationResult(image=image, seed=request.seed, settings=settings, steps=steps, interrupted=interrupted,
                           total_ms=(time.perf_counter() - started) * 1000, notes=notes)


def run(model, pipeline_class, request: GenerationRequest, **kwargs) -> GenerationResult:
    """Run a request to completion and return only its result."""
    result = None
    for item in stream(model, pipeline_class, request, **kwargs):
        result = item
    return result
