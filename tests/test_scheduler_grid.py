"""No failure at the defaults: every offered scheduler × common step counts, through the app's own
entry points (text-to-image, inpaint, ControlNet), on the tiny random-weight model and on the
embedded denoise-tiny (zero-terminal-SNR, trailing spacing, v-prediction), where DPM++ 2M Karras
used to fail from 21 steps on (duplicate first timesteps: IndexError on the last step).

Each run is watched from outside the app: forward hooks count the UNet evaluations and check every
UNet and VAE-decoder output is finite, and a spy on the pipeline class records the pipeline's own
`num_timesteps` once the call is done.
"""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionControlNetPipeline, StableDiffusionInpaintPipeline, StableDiffusionPipeline
from PIL import Image

from pipelines.controlnet import CANNY_DEFAULT, EMBEDDED_CONTROLNET, controlnet_stream, load_controlnet, preprocess
from pipelines.generation import GenerationRequest, GenerationResult, StepEvent, run
from pipelines.inpaint import inpaint_stream
from pipelines.inputs import prepare_picture
from pipelines.loading import MODELS_DIR, ModelManager
from pipelines.schedulers import make_scheduler, scheduler_names
from pipelines.worker import on_worker

NAMES = scheduler_names()
KARRAS = "DPM++ 2M Karras"
HAS_EMBEDDED = (MODELS_DIR / "denoise-tiny" / "model_index.json").is_file()
needs_embedded = pytest.mark.skipif(not HAS_EMBEDDED, reason="the embedded models are not in models/")
needs_controlnet = pytest.mark.skipif(not (MODELS_DIR / EMBEDDED_CONTROLNET / "config.json").is_file(),
                                      reason="the embedded ControlNet is not in models/")


def grid(names, counts):
    return [pytest.param(n, s, id=f"{n}-{s}") for s in counts for n in names]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """This grid is ~150 short runs of tiny models: one torch thread is as fast as two on an idle
    machine and several times faster when other work shares the cores (a two-thread OpenMP team
    whose second thread is descheduled stalls every op). Restored afterwards for other modules."""
    previous = on_worker(torch.get_num_threads)
    on_worker(torch.set_num_threads, 1)
    yield
    on_worker(torch.set_num_threads, previous)


def warm_up(model):
    """One short run first, so one-time work (fitting the linear preview decoder runs the pipeline
    and the VAE) happens before any run is watched and counted."""
    run(model, type(model.pipe), GenerationRequest(prompt="x", steps=1, seed=0))
    return model


@pytest.fixture(scope="module")
def tiny(tiny_model):
    return warm_up(tiny_model)


@pytest.fixture(scope="module")
def embedded():
    return warm_up(ModelManager(device="cpu").get())


class Watch:
    """Counts UNet calls, collects non-finite outputs, records each finished pipeline's num_timesteps."""

    def __init__(self, model, monkeypatch):
        self.unet_calls, self.bad, self.num_timesteps = 0, [], []
        pipe = model.pipe

        def on_unet(module, args, output):
            self.unet_calls += 1
            self._check("unet", output[0] if isinstance(output, tuple) else output.sample)

        self.hooks = [pipe.unet.register_forward_hook(on_unet),
                      pipe.vae.decoder.register_forward_hook(lambda m, a, out: self._check("vae", out))]
        for cls in (StableDiffusionPipeline, StableDiffusionInpaintPipeline, StableDiffusionControlNetPipeline):
            original = cls.__call__

            def spy(p, *args, _original=original, **kwargs):
                out = _original(p, *args, **kwargs)
                self.num_timesteps.append(p.num_timesteps)
                return out

            monkeypatch.setattr(cls, "__call__", spy)

    def _check(self, what, tensor):
        if not torch.isfinite(tensor).all():
            self.bad.append(what)

    def close(self):
        for hook in self.hooks:
            hook.remove()


@pytest.fixture()
def watch(monkeypatch):
    watches = []

    def start(model):
        watches.append(Watch(model, monkeypatch))
        return watches[-1]

    yield start
    for w in watches:
        w.close()


def check_run(watch, result: GenerationResult, events: list[StepEvent], size=(64, 64)):
    """The checks every run must pass; returns the number of model evaluations."""
    assert isinstance(result, GenerationResult) and not result.interrupted
    assert result.image is not None and result.image.size == size
    assert not watch.bad, f"non-finite outputs from: {sorted(set(watch.bad))}"
    assert len(watch.num_timesteps) == 1, watch.num_timesteps
    evaluations = watch.unet_calls
    assert evaluations >= 1
    # one step event per model evaluation, as many as the pipeline itself says it ran
    assert len(events) == evaluations == watch.num_timesteps[0]
    assert [e.index for e in events] == list(range(evaluations))
    for e in events:
        assert all(math.isfinite(v) for v in (e.timestep, e.sigma, e.alpha_bar, e.noise_left)), e
        assert 0.0 <= e.alpha_bar <= 1.0
    return evaluations


def expected_txt2img_evaluations(model, name, steps):
    """What the scheduler's own schedule says a text-to-image run evaluates: one per timestep."""
    scheduler = make_scheduler(name, model.pipe.scheduler)
    scheduler.set_timesteps(steps)
    return len(scheduler.timesteps)


def txt2img(model, watch, name, steps, guidance=5.0):
    w = watch(model)
    request = GenerationRequest(prompt="a red circle on a white background", steps=steps, seed=3, scheduler=name,
                                guidance_scale=guidance)
    result = run(model, type(model.pipe), request)
    evaluations = check_run(w, result, result.steps)
    assert evaluations == expected_txt2img_evaluations(model, name, steps)
    if name == "Heun" and steps > 1:
        assert evaluations == 2 * steps - 1  # second-order: two evaluations per step but the last
    # the picture is a picture, not a constant fill left by NaN latents
    assert np.asarray(result.image).std() > 0
    return result


@pytest.mark.parametrize("name, steps", grid(NAMES, [1, 2, 7, 25, 30, 50]))
def test_txt2img_every_scheduler_and_step_count_tiny(tiny, watch, name, steps):
    # guidance 1: one UNet batch per step (a third faster); guidance 5 runs on the embedded model below
    txt2img(tiny, watch, name, steps, guidance=1.0)


def embedded_grid():
    """Every scheduler at 25 steps with the default guidance 5 (what the user ran) and at 30 with
    guidance 1 (no classifier-free batch); the full 25/30 × 5/1 square for DPM++ 2M Karras."""
    cases = [(n, 25, 5.0) for n in NAMES] + [(n, 30, 1.0) for n in NAMES] + [(KARRAS, 25, 1.0), (KARRAS, 30, 5.0)]
    return [pytest.param(n, s, g, id=f"{n}-{s}-cfg{g:g}") for n, s, g in cases]


@needs_embedded
@pytest.mark.parametrize("name, steps, guidance", embedded_grid())
def test_txt2img_every_scheduler_embedded_defaults(embedded, watch, name, steps, guidance):
    result = txt2img(embedded, watch, name, steps, guidance)
    if guidance == 5.0 and steps == 25:
        assert result.settings["steps"] == 25 and result.settings["guidance_scale"] == 5.0


def test_karras_on_zero_snr_has_repeated_first_timesteps_and_still_starts_at_sigma_max(tiny, watch):
    """The case behind the IndexError: the schedule starts [999, 999, …]; the run must take σ #0 first."""
    scheduler = make_scheduler(KARRAS, tiny.pipe.scheduler)
    scheduler.set_timesteps(25)
    assert int(scheduler.timesteps[0]) == int(scheduler.timesteps[1])  # still true: the schedule is diffusers'
    result = txt2img(tiny, watch, KARRAS, 25)
    sigmas = [e.sigma for e in result.steps]
    assert sigmas == pytest.approx(scheduler.sigmas[:25].tolist(), rel=1e-5)  # every σ once, in order


# --- inpaint ------------------------------------------------------------------------------------------

STRENGTH = 0.6


def inpaint_inputs():
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    return picture, mask


def expected_inpaint_timesteps(model, name, steps, strength):
    """diffusers' own StableDiffusionInpaintPipeline.get_timesteps on this request's scheduler."""
    scheduler = make_scheduler(name, model.pipe.scheduler)
    scheduler.set_timesteps(steps)
    timesteps, _ = StableDiffusionInpaintPipeline.get_timesteps(SimpleNamespace(scheduler=scheduler), steps,
                                                                strength, "cpu")
    return len(timesteps)


def inpaint(model, watch, name, steps=25):
    w = watch(model)
    picture, mask = inpaint_inputs()
    request = GenerationRequest(prompt="a blue star", steps=steps, seed=2, scheduler=name)
    items = list(inpaint_stream(model, request, picture, mask, strength=STRENGTH, mask_blur=2))
    events, result = items[:-1], items[-1]
    evaluations = check_run(w, result, events)
    expected = expected_inpaint_timesteps(model, name, steps, STRENGTH)
    assert evaluations == expected
    full = expected_txt2img_evaluations(model, name, steps)
    if full == steps:  # one evaluation per step: strength 0.6 of 25 steps runs the last 15
        assert expected == int(steps * STRENGTH)
    elif name == "Heun":  # the last 15 steps, two evaluations each but the last
        assert expected == 2 * int(steps * STRENGTH) - 1
    outside = np.ones((64, 64), bool)
    outside[8:56, 8:56] = False  # beyond the feathered edge: the input, pixel for pixel
    assert np.array_equal(np.asarray(result.image)[outside], np.asarray(picture)[outside])
    return events, w.num_timesteps[0]


@pytest.mark.parametrize("name", NAMES)
def test_inpaint_at_strength_below_one_every_scheduler_tiny(tiny, watch, name):
    inpaint(tiny, watch, name)


@needs_embedded
@pytest.mark.parametrize("name", ["model default", KARRAS, "Heun", "Euler a"])
def test_inpaint_at_strength_below_one_embedded(embedded, watch, name):
    inpaint(embedded, watch, name)


@pytest.mark.parametrize("name", ["model default", KARRAS, "Heun"])
def test_inpaint_step_total_is_the_pipelines_num_timesteps(tiny, watch, name):
    events, num_timesteps = inpaint(tiny, watch, name)
    assert {e.total for e in events} == {len(events)} == {num_timesteps}


# --- ControlNet ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def control(embedded):
    picture = Image.new("RGB", (64, 64), "white")
    picture.paste((0, 0, 255), (14, 14, 50, 50))
    prepared, _ = prepare_picture(picture, embedded, what="control picture")  # as the tab does (make_control)
    return preprocess("canny", prepared, *CANNY_DEFAULT)


def controlnet_run(model, watch, control, name, steps, scale, start, end):
    controlnet = load_controlnet(model, EMBEDDED_CONTROLNET)
    w = watch(model)
    request = GenerationRequest(prompt="a blue square on a white background", steps=steps, seed=4, scheduler=name)
    items = list(controlnet_stream(model, request, [control], [controlnet], [scale], start, end,
                                   names=[EMBEDDED_CONTROLNET]))
    events, result = items[:-1], items[-1]
    evaluations = check_run(w, result, events)
    assert evaluations == expected_txt2img_evaluations(model, name, steps)
    return result


@needs_embedded
@needs_controlnet
@pytest.mark.parametrize("name, steps", [*grid([n for n in NAMES if n not in ("model default", KARRAS)], [7]),
                                         *grid(["model default", KARRAS], [25])])
def test_controlnet_at_the_tabs_defaults_with_int_settings(embedded, watch, control, name, steps):
    result = controlnet_run(embedded, watch, control, name, steps, 1, 0, 1)  # Python ints, as a slider may send
    settings = result.settings
    assert settings["conditioning_scale"] == [1.0] and type(settings["conditioning_scale"][0]) is float
    assert (settings["control_guidance_start"], settings["control_guidance_end"]) == (0.0, 1.0)


@needs_embedded
@needs_controlnet
def test_controlnet_int_scale_is_exactly_the_float_scale(embedded, watch, control):
    as_int = controlnet_run(embedded, watch, control, "model default", 7, 1, 0, 1)
    as_float = controlnet_run(embedded, watch, control, "model default", 7, 1.0, 0.0, 1.0)
    assert np.array_equal(np.asarray(as_int.image), np.asarray(as_float.image))
    as_numpy = controlnet_run(embedded, watch, control, "model default", 7, np.float32(1), np.int64(0), np.int64(1))
    assert np.array_equal(np.asarray(as_numpy.image), np.asarray(as_float.image))


def test_inpaint_accepts_int_and_numpy_settings(tiny, watch):
    picture, mask = inpaint_inputs()
    results = []
    for strength, blur in ((1, 2), (1.0, 2.0), (np.float32(1.0), np.int64(2))):
        request = GenerationRequest(prompt="x", steps=3, seed=1)
        items = list(inpaint_stream(tiny, request, picture, mask, strength=strength, mask_blur=blur))
        assert isinstance(items[-1], GenerationResult)
        assert type(items[-1].settings["strength"]) is float and type(items[-1].settings["mask_blur"]) is int
        results.append(np.asarray(items[-1].image))
    assert all(np.array_equal(results[0], r) for r in results[1:])
