"""A generation request -> a stream of step events -> a result.

`stream()` runs one diffusers pipeline call as one job on the torch thread and yields a
`StepEvent` after every denoising step, then a `GenerationResult`. What the events show comes from
tapping the request's own scheduler (`StepTap`): its `step(model_output, timestep, sample)` call
already holds everything needed for x_t, x̂0 and ε̂, so previews cost no extra UNet evaluation.
Each event keeps those two tensors; only the view being watched is decoded while the run goes on,
the others when someone asks for them (`decode_views`, between two steps of whatever is running).

Isolation: every request runs on its own pipeline object (`from_pipe` on shared weights) with its
own scheduler instance, its own CPU generator and its own cancel flag.
"""

from __future__ import annotations

import copy
import functools
import math
import queue
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image

from pipelines.noise_math import noise_level, view_coefficients
from pipelines.previews import (AUTO, FULL_VAE, LINEAR, TAESD, FullVaeDecoder, LinearDecoder, TinyVaeDecoder,
                                load_linear, save_linear, vae_fingerprint)
from pipelines.schedulers import DEFAULT_SCHEDULER, SchedulerError, describe, make_scheduler, scheduler_names
from pipelines.worker import WORKERS, on_worker_soon, run_soon_jobs

MAX_SEED = 2**32 - 1
MAX_STEPS = 150
MAX_SIDE = 2048
VIEWS = ("x_t", "x0", "eps")  # what the sampler holds, the guess of the picture, the guess of the noise
DECODE_BATCH = 16  # on-demand decodes run between two steps of a running generation: keep each short


# Every torch call runs on the one torch thread (pipelines/worker.py): one job per request builds
# its pipeline and preview decoder (fitting the linear decoder runs the VAE), runs the pipeline with
# previews between steps, and decodes a stopped run's last guess; the consumer only forwards events.
# Torch work on the consumer's thread starts a second OpenMP team, which slowed every later
# generation about 2x.


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
    preview_every: int = 1  # decode the watched view every N steps (0: none while running)
    preview_decoder: str = AUTO  # "auto": the model's best loaded decoder (see `decoder_names`)
    view: str = "x0"  # the view decoded while running: "x_t", "x0" or "eps"
    preview_fps: float = 0.0  # decode at most this many live previews a second (a screen's rate); 0: no limit
    step_delay_ms: int = 0  # teaching: pause after each step so people can follow
    loras: list = field(default_factory=list)  # [(LoRA name, weight)]: folder names, Hub ids or loaded names


@dataclass
class StepEvent:
    index: int  # 0-based step (model evaluation) index
    total: int  # the pipeline's `num_timesteps`: model evaluations this run makes
    timestep: float
    sigma: float
    alpha_bar: float
    noise_left: float  # fraction of the sample's variance that is noise, 0…1
    ms: float  # wall time of this step
    sample: torch.Tensor | None = field(default=None, repr=False)  # what the scheduler got (1×C×h×w)
    model_output: torch.Tensor | None = field(default=None, repr=False)  # the (guided) model output
    coefficients: dict = field(default_factory=dict, repr=False)  # view -> (α, β), see noise_math
    decoder: object = field(default=None, repr=False)  # the request's preview decoder
    pictures: dict = field(default_factory=dict, repr=False)  # view -> H×W×3 uint8, decoded so far

    def numbers(self) -> str:
        return (f"step {self.index + 1}/{self.total} · t={self.timestep:.0f} · σ={self.sigma:.3g} · "
                f"ᾱ={self.alpha_bar:.4f} · noise left {100 * self.noise_left:.1f}% · {self.ms:.0f} ms")

    def latents(self, view: str) -> torch.Tensor:
        """x_t, x̂0 or ε̂ of this step in the model's latent space (1×C×h×w)."""
        alpha, beta = self.coefficients[view]
        return alpha * self.sample + beta * self.model_output

    def picture(self, view: str) -> np.ndarray:
        """The view decoded by the request's preview decoder (decoded now if it was not yet)."""
        if view not in self.pictures:
            decode_views([self], view)
        return self.pictures[view]


@dataclass
class GenerationResult:
    image: Image.Image
    seed: int
    settings: dict  # everything needed to reproduce it (recorded in the PNG)
    steps: list[StepEvent] = field(default_factory=list)
    interrupted: bool = False
    total_ms: float = 0.0
    notes: list[str] = field(default_factory=list)  # adjustments made to the request


def decode_views(steps: list[StepEvent], view: str) -> None:
    """Decode `view` for every step that lacks it, in short batches on the torch thread."""
    missing = [s for s in steps if view not in s.pictures and s.decoder is not None]

    def decode(batch):
        pictures = batch[0].decoder(torch.cat([s.latents(view) for s in batch]))
        for step, picture in zip(batch, pictures):
            step.pictures[view] = picture

    for start in range(0, len(missing), DECODE_BATCH):
        on_worker_soon(decode, missing[start:start + DECODE_BATCH])


def as_number(value, what: str, integer: bool = False, notes: list[str] | None = None):
    """A request's number as the type diffusers wants; a note when a fraction is dropped."""
    name = what[:1].upper() + what[1:]
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise GenerationError(f"{name} must be a number; got {value!r}.") from None
    if math.isnan(number) or math.isinf(number):
        raise GenerationError(f"{name} must be a finite number; got {value!r}.")
    if integer and number != int(number) and notes is not None:
        notes.append(f"{what} {value} → {int(number)} (whole numbers only)")
    return int(number) if integer else number


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
        value = as_number(value or model.default_size, label, True, notes)
        rounded = min(max(multiple, round(value / multiple) * multiple), MAX_SIDE)
        if rounded != value:
            notes.append(f"{label} {value} → {rounded} (this model needs multiples of {multiple}, at most {MAX_SIDE})")
        sizes.append(rounded)
    return sizes[0], sizes[1], notes


def check_request(model, request: GenerationRequest) -> tuple[GenerationRequest, list[str]]:
    """Validate and normalise a request for a model; returns the request to run and notes."""
    notes: list[str] = []
    if not isinstance(request.prompt, str):
        raise GenerationError("The prompt must be text.")
    for entry in request.loras or []:
        if len(entry) != 2 or not -2 <= as_number(entry[1], "LoRA weight", False, notes) <= 2:
            raise GenerationError(f"Each LoRA needs a name and a weight between -2 and 2; got {entry!r}.")
    steps = as_number(request.steps, "steps", True, notes)
    if not 1 <= steps <= MAX_STEPS:
        raise GenerationError(f"Steps must be between 1 and {MAX_STEPS}; got {steps}.")
    guidance = as_number(request.guidance_scale, "guidance scale", False, notes)
    if not 0 <= guidance <= 50:
        raise GenerationError(f"Guidance scale must be between 0 and 50; got {request.guidance_scale}.")
    seed = -1 if request.seed is None else as_number(request.seed, "seed", True, notes)
    if request.scheduler and request.scheduler not in scheduler_names():
        raise SchedulerError(f"Unknown scheduler {request.scheduler!r}. Choose one of: {', '.join(scheduler_names())}.")
    if request.view not in VIEWS:
        raise GenerationError(f"Unknown view {request.view!r}. Choose one of: {', '.join(VIEWS)}.")
    decoders = decoder_names(model)
    if (request.preview_decoder or AUTO) not in (AUTO, *decoders):
        raise GenerationError(f"The preview decoder {request.preview_decoder!r} is not available for this model; "
                              f"choose one of: {', '.join(decoders)}."
                              + (" (TAESD needs --taesd FOLDER_OR_HUB_ID.)" if request.preview_decoder == TAESD else ""))
    every = as_number(request.preview_every, "preview every", True, notes)
    width, height, size_notes = check_size(model, request.width, request.height)
    notes += size_notes
    tokenizer = model.pipe.tokenizer
    if tokenizer is not None and request.prompt:
        used = len(tokenizer(request.prompt).input_ids)
        if used > tokenizer.model_max_length:
            notes.append(f"prompt is {used} tokens; this model reads only the first {tokenizer.model_max_length}")
    fixed = GenerationRequest(**{**asdict(request), "steps": steps, "guidance_scale": guidance,
                                 "seed": resolve_seed(seed), "width": width, "height": height,
                                 "scheduler": request.scheduler or DEFAULT_SCHEDULER,
                                 "preview_decoder": request.preview_decoder or AUTO,
                                 "preview_every": max(0, every),
                                 "preview_fps": max(0.0, as_number(request.preview_fps, "preview rate", False, notes)),
                                 "step_delay_ms": max(0, as_number(request.step_delay_ms, "pause", True, notes))})
    return fixed, notes


def decoder_names(model) -> list[str]:
    """The preview decoders this model has loaded, best first (the first is the default)."""
    return ([TAESD] if getattr(model, "taesd", None) is not None else []) + [LINEAR, FULL_VAE]


def preview_decoder(model, name: str):
    """The decoder called `name` for this model (runs on the torch thread: fitting runs the VAE)."""
    name = decoder_names(model)[0] if name in (AUTO, "", None) else name
    if name == FULL_VAE:
        return FullVaeDecoder(model.pipe.vae)
    if name == TAESD:
        return TinyVaeDecoder(model.taesd)
    return linear_decoder(model)


GUESS_PROMPTS = ("a photo", "a red circle on a white background", "a blue star on a yellow background", "")


def linear_decoder(model) -> LinearDecoder:
    """The linear map fitted for this model: from the model's cache, the disk cache, or fitted now on
    the x̂0 guesses of a few short runs of this model plus encoded pictures (a few seconds)."""
    cache = model.cache
    if "linear" not in cache:
        fingerprint = cache.setdefault("vae_fingerprint", vae_fingerprint(model.pipe.vae))
        decoder = load_linear(fingerprint)
        if decoder is None:
            # an inpainting UNet (latents + mask + masked picture in) cannot make text-to-image guesses
            plain = model.pipe.unet.config.in_channels == model.pipe.vae.config.latent_channels
            decoder = LinearDecoder.fit(model.pipe.vae, guesses=_guesses(model) if plain else None)
            save_linear(fingerprint, decoder)
        cache["linear"] = decoder
    return cache["linear"]


@torch.no_grad()
def _guesses(model, steps: int = 8) -> torch.Tensor:
    """x̂0 at every step of short runs of the model on a few prompts (at its native size)."""
    scheduler = make_scheduler(DEFAULT_SCHEDULER, model.pipe.scheduler)
    pipe = type(model.pipe).from_pipe(model.pipe, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    tap, guesses = StepTap(scheduler), []
    prediction_type = scheduler.config.get("prediction_type", "epsilon")

    def keep(p, index, timestep, callback_kwargs):
        model_output, sample, level, _ = tap.last
        alpha, beta = view_coefficients(level, prediction_type)["x0"]
        guesses.append((alpha * sample[:1].float() + beta * model_output[:1].float()).cpu())
        return callback_kwargs

    for seed, prompt in enumerate(GUESS_PROMPTS):
        pipe(prompt, num_inference_steps=steps, guidance_scale=5.0, output_type="latent", callback_on_step_end=keep,
             generator=torch.Generator("cpu").manual_seed(seed))
    return torch.cat(guesses)


def warm_up(model) -> None:
    """One short run with the default preview decoder, so the first visitor gets a warm model."""
    run(model, type(model.pipe), GenerationRequest(prompt="warm-up", steps=2, seed=0))


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
           extra_settings: dict | None = None,
           live_view: Callable[[], str] | None = None) -> Iterator[StepEvent | GenerationResult]:
    """Run one request, yielding a `StepEvent` per denoising step and then the `GenerationResult`.

    Args:
        model: a `LoadedModel`.
        pipeline_class: the diffusers pipeline class for the task (text-to-image, inpaint, …).
        request: the settings; validated here (see `check_request`).
        cancel: set it to stop this request at the next step (other requests are untouched).
        extra_call_args: task inputs passed to the pipeline call (image, mask_image, …).
        extra_components: components to add to the shared ones (a ControlNet).
        extra_settings: task settings to record in the result's metadata.
        live_view: returns the view to decode at each step (the user may switch while it runs);
            default: `request.view`.
    """
    request, notes = check_request(model, request)
    cancel = cancel or threading.Event()
    watched = live_view or (lambda: request.view)
    events: queue.Queue = queue.Queue()
    done = object()
    generator = torch.Generator("cpu").manual_seed(request.seed)  # same seed, same picture, any device
    call_args = dict(prompt=request.prompt, negative_prompt=request.negative_prompt or None,
                     num_inference_steps=request.steps, guidance_scale=request.guidance_scale,
                     width=request.width, height=request.height, generator=generator, **(extra_call_args or {}))
    outcome: dict = {}

    def work():
        """The whole request as one torch-thread job: set up, run, decode a stopped run's guess."""
        try:
            loras = [(model.loras.load(name).name, float(weight)) for name, weight in request.loras or []]
            shared = model.derive(pipeline_class, **(extra_components or {}))
            scheduler = make_scheduler(request.scheduler, model.pipe.scheduler)
            # own object, so own flags (_interrupt, _guidance_scale …) and own scheduler, on shared weights:
            # a shallow copy of the derived pipeline is what `from_pipe` gives, at a thousandth of its cost
            pipe = copy.copy(shared)
            pipe.scheduler = scheduler  # re-registers the config on the copy only
            decoder = preview_decoder(model, request.preview_decoder)
            tap = StepTap(scheduler)
            prediction_type = scheduler.config.get("prediction_type", "epsilon")
            last_time, last_decode = [time.perf_counter()], [0.0]

            def on_step_end(p, index, timestep, callback_kwargs):
                model_output, sample, level, t = tap.last
                total = p.num_timesteps  # Heun takes 2 model calls a step; strength < 1 runs fewer
                event = StepEvent(index=index, total=total, timestep=t, sigma=level.sigma, alpha_bar=level.alpha_bar,
                                  noise_left=level.noise_left, ms=(time.perf_counter() - last_time[0]) * 1000,
                                  sample=sample[:1].float().clone(), model_output=model_output[:1].float().clone(),
                                  coefficients=view_coefficients(level, prediction_type), decoder=decoder)
                every, last = request.preview_every, index == total - 1
                due = every and (index % every == 0 or last)
                if due and request.preview_fps and not last:  # frames a screen would skip are decoded if asked
                    due = time.perf_counter() - last_decode[0] >= 1.0 / request.preview_fps
                if due:
                    view = watched()
                    event.pictures[view] = decoder(event.latents(view))[0]
                    last_decode[0] = time.perf_counter()
                outcome["last"] = event
                events.put(event)
                run_soon_jobs()  # others' small jobs (a scrub) wait one step, not a whole run
                if request.step_delay_ms:
                    time.sleep(request.step_delay_ms / 1000)
                if cancel.is_set():
                    p._interrupt = True  # this request's pipeline object only
                last_time[0] = time.perf_counter()
                return callback_kwargs

            with model.loras.use(loras):  # waits while other requests run with another LoRA set
                image = pipe(**call_args, callback_on_step_end=on_step_end).images[0]
            outcome.update(loras=loras, scheduler=scheduler, interrupted=bool(pipe._interrupt), decoder=decoder.name)
            if outcome["interrupted"] and "last" in outcome:  # the picture is the last guess, not a half-run
                image = Image.fromarray(FullVaeDecoder(model.pipe.vae)(outcome["last"].latents("x0"))[0])
            events.put(image)
        except BaseException as error:  # handed to the consumer thread
            events.put(error)
        finally:
            events.put(done)

    started = time.perf_counter()
    WORKERS.submit(work)
    steps: list[StepEvent] = []
    image = None
    finished = False
    try:
        while (item := events.get()) is not done:
            if isinstance(item, StepEvent):
                steps.append(item)
                yield item
            elif isinstance(item, BaseException):
                if isinstance(item, (GenerationError, SchedulerError)) or type(item).__name__ in EXPECTED_ERRORS:
                    raise item
                raise GenerationError(f"Generation failed: {type(item).__name__}: {item}") from item
            else:
                image = item
        finished = True
    finally:
        if not finished:
            cancel.set()  # a consumer that stops listening stops the work at its next step; no waiting here
    interrupted = outcome["interrupted"]
    if interrupted:
        notes.append(f"stopped after step {len(steps)} of {steps[-1].total if steps else request.steps}: "
                     "the picture is the model's guess x̂0 at that point")
    scheduler_name = describe(outcome["scheduler"])
    if request.scheduler == DEFAULT_SCHEDULER:
        scheduler_name = f"{DEFAULT_SCHEDULER} ({scheduler_name})"
    settings = dict(asdict(request), scheduler=scheduler_name, model=model.name, preview_decoder=outcome["decoder"],
                    loras=model.loras.describe(outcome["loras"]), **(extra_settings or {}))
    if interrupted:
        settings["steps_run"] = len(steps)  # the PNG says where it stopped; `steps` still reproduces the run
    yield GenerationResult(image=image, seed=request.seed, settings=settings, steps=steps, interrupted=interrupted,
                           total_ms=(time.perf_counter() - started) * 1000, notes=notes)


EXPECTED_ERRORS = ("LoraError", "ModelLoadError")  # user errors raised by the torch-thread job, passed on as is


def run(model, pipeline_class, request: GenerationRequest, **kwargs) -> GenerationResult:
    """Run a request to completion and return only its result."""
    result = None
    for item in stream(model, pipeline_class, request, **kwargs):
        result = item
    return result
