"""Generation requests against a real (tiny, random-weight) Stable Diffusion pipeline."""

import threading

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from pipelines.generation import (GenerationError, GenerationRequest, GenerationResult, StepEvent, decode_views, run,
                                  stream)
from pipelines.schedulers import make_scheduler

SD = StableDiffusionPipeline


def pixels(image):
    return np.asarray(image.convert("RGB")).astype(int)


def test_stream_yields_a_step_event_per_step_then_the_result(tiny_model):
    items = list(stream(tiny_model, SD, GenerationRequest(prompt="a red circle", steps=7, seed=5)))
    events, result = items[:-1], items[-1]
    assert isinstance(result, GenerationResult) and all(isinstance(e, StepEvent) for e in events)
    assert [e.index for e in events] == list(range(7))
    assert events[0].noise_left == pytest.approx(1.0)  # zero-SNR schedule starts from pure noise
    assert all(a.noise_left > b.noise_left for a, b in zip(events, events[1:]))
    for e in events:  # the watched view is decoded while running; the others when asked for
        assert set(e.pictures) == {"x0"} and e.pictures["x0"].shape == (64, 64, 3) and e.total == 7
        assert e.picture("eps").shape == (64, 64, 3) and set(e.pictures) == {"x0", "eps"}
    assert result.image.size == (64, 64) and result.seed == 5


def test_views_decoded_later_equal_views_decoded_live(tiny_model):
    """A view decoded on demand after the run is the same picture as one decoded during it."""
    request = dict(prompt="a red circle", steps=4, seed=5, preview_decoder="linear approximation")
    live = {view: run(tiny_model, SD, GenerationRequest(**request, view=view)).steps for view in ("x_t", "eps")}
    later = run(tiny_model, SD, GenerationRequest(**request, view="x0")).steps
    decode_views(later, "x_t")
    for a, b in zip(live["x_t"], later):
        assert np.array_equal(a.pictures["x_t"], b.pictures["x_t"])
        assert np.array_equal(live["eps"][a.index].pictures["eps"], b.picture("eps"))


def test_the_live_view_follows_the_user_while_running(tiny_model):
    """The view can be switched mid-run; later steps are decoded in the new view."""
    watched = ["x0"]

    def switch_after_two(event):
        if event.index == 1:
            watched[0] = "eps"

    events = []
    for item in stream(tiny_model, SD, GenerationRequest(prompt="x", steps=6, seed=1), live_view=lambda: watched[0]):
        if isinstance(item, StepEvent):
            events.append(item)
            switch_after_two(item)
    assert {"x0"} <= set(events[0].pictures) and "eps" in events[-1].pictures


def test_same_seed_same_picture_and_it_equals_a_direct_pipeline_call(tiny_model):
    request = GenerationRequest(prompt="a blue star", steps=6, guidance_scale=4.0, seed=1234, scheduler="Euler a")
    first, second = run(tiny_model, SD, request), run(tiny_model, SD, request)
    assert np.array_equal(pixels(first.image), pixels(second.image))
    direct = SD.from_pipe(tiny_model.pipe, scheduler=make_scheduler("Euler a", tiny_model.pipe.scheduler))
    expected = direct("a blue star", num_inference_steps=6, guidance_scale=4.0, width=64, height=64,
                      generator=torch.Generator("cpu").manual_seed(1234)).images[0]
    assert np.array_equal(pixels(first.image), pixels(expected))
    other = run(tiny_model, SD, GenerationRequest(prompt="a blue star", steps=6, guidance_scale=4.0, seed=1235))
    assert not np.array_equal(pixels(first.image), pixels(other.image))


def test_random_seed_is_reported_and_reproduces(tiny_model):
    result = run(tiny_model, SD, GenerationRequest(prompt="x", steps=3, seed=-1))
    assert 0 <= result.seed < 2**32 and result.settings["seed"] == result.seed
    again = run(tiny_model, SD, GenerationRequest(prompt="x", steps=3, seed=result.seed))
    assert np.array_equal(pixels(result.image), pixels(again.image))


@pytest.mark.parametrize("field, value", [("seed", 2**32), ("steps", 0), ("steps", 1000), ("guidance_scale", -1.0)])
def test_bad_values_give_a_clear_message(tiny_model, field, value):
    request = GenerationRequest(prompt="x", steps=3)
    setattr(request, field, value)
    with pytest.raises(GenerationError, match="must be between"):
        run(tiny_model, SD, request)


def test_sizes_are_rounded_and_the_user_told(tiny_model):
    m = tiny_model.size_multiple
    result = run(tiny_model, SD, GenerationRequest(prompt="x", steps=2, width=8 * m + 1, height=6 * m - 2, seed=1))
    assert result.image.size == (8 * m, 6 * m)
    assert any(f"width {8 * m + 1} → {8 * m}" in n for n in result.notes)
    assert any(f"height {6 * m - 2} → {6 * m}" in n for n in result.notes)


def test_per_request_schedulers_under_two_threads(tiny_model):
    """Two requests with different schedulers at once give exactly their solo pictures."""
    requests = [GenerationRequest(prompt="a red square", steps=8, seed=7, scheduler="DPM++ 2M"),
                GenerationRequest(prompt="a green circle", steps=5, seed=8, scheduler="Euler a")]
    solo = [pixels(run(tiny_model, SD, r).image) for r in requests]
    shared_scheduler_before = dict(tiny_model.pipe.scheduler.config)
    together = [None, None]

    def work(i):
        for _ in range(2):
            together[i] = pixels(run(tiny_model, SD, requests[i]).image)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert np.array_equal(together[0], solo[0]) and np.array_equal(together[1], solo[1])
    assert dict(tiny_model.pipe.scheduler.config) == shared_scheduler_before


def test_cancel_stops_only_its_own_request(tiny_model):
    stop_me, keep_going = threading.Event(), threading.Event()
    results = {}

    def work(name, flag, steps):
        results[name] = run(tiny_model, SD, GenerationRequest(prompt="x", steps=steps, seed=3, step_delay_ms=20),
                            cancel=flag)

    threads = [threading.Thread(target=work, args=("stopped", stop_me, 40)),
               threading.Thread(target=work, args=("other", keep_going, 15))]
    [t.start() for t in threads]
    threading.Timer(0.15, stop_me.set).start()
    [t.join() for t in threads]
    assert results["stopped"].interrupted and len(results["stopped"].steps) < 40
    assert not results["other"].interrupted and len(results["other"].steps) == 15
    assert results["stopped"].image.size == (64, 64)  # the last x̂0, decoded: no work lost
    stopped = results["stopped"]
    assert stopped.settings["steps_run"] == len(stopped.steps) and stopped.settings["steps"] == 40
    assert "steps_run" not in results["other"].settings


def test_previews_every_n_steps_and_full_vae_decoder(tiny_model):
    events = [e for e in stream(tiny_model, SD, GenerationRequest(prompt="x", steps=7, seed=2, preview_every=3,
                                                                   preview_decoder="full VAE"))][:-1]
    assert [e.index for e in events if e.pictures] == [0, 3, 6]  # and always the last step


def test_x0_preview_of_the_last_step_is_the_final_picture(tiny_model):
    """With the full VAE, the last step's x̂0 decodes to (almost) the returned picture."""
    items = list(stream(tiny_model, SD, GenerationRequest(prompt="x", steps=5, seed=9, preview_decoder="full VAE")))
    last, result = items[-2], items[-1]
    assert np.abs(last.pictures["x0"].astype(int) - pixels(result.image)).mean() < 3


def test_all_torch_work_of_a_request_runs_on_the_torch_thread(tiny_model, monkeypatch):
    """Fitting the linear preview decoder runs the VAE; done on the caller's thread it started a
    second OpenMP team that made every later generation in the process ~2x slower."""
    from pipelines.previews import LinearDecoder
    from pipelines.worker import WORKERS

    torch_thread = WORKERS.submit(threading.current_thread).result()
    fit_threads, fit = [], LinearDecoder.fit.__func__

    def recording_fit(cls, vae, **kwargs):
        fit_threads.append(threading.current_thread())
        return fit(cls, vae, **kwargs)

    monkeypatch.setattr(LinearDecoder, "fit", classmethod(recording_fit))
    monkeypatch.setattr(tiny_model, "cache", {})
    monkeypatch.setenv("DENOISE_CACHE", str(__import__("tempfile").mkdtemp()))  # not fitted before: fit now
    result = run(tiny_model, SD, GenerationRequest(prompt="a red circle", steps=3, seed=2,
                                                   preview_decoder="linear approximation"))
    assert fit_threads == [torch_thread] and result.steps[-1].pictures["x0"].shape == (64, 64, 3)


@pytest.mark.parametrize("field, value, message", [("steps", "ten", "Steps must be a number"),
                                                    ("steps", float("nan"), "finite"),
                                                    ("seed", "x", "Seed must be a number"),
                                                    ("view", "noise", "Unknown view"),
                                                    ("preview_decoder", "TAESD", "not available")])
def test_bad_values_name_the_setting(tiny_model, field, value, message):
    request = GenerationRequest(prompt="x", steps=3)
    setattr(request, field, value)
    with pytest.raises(GenerationError, match=message):
        run(tiny_model, SD, request)


def test_fractional_steps_and_seed_are_noted_not_silently_changed(tiny_model):
    result = run(tiny_model, SD, GenerationRequest(prompt="x", steps=2.5, seed=1.5))
    assert len(result.steps) == 2 and result.seed == 1
    assert any("steps 2.5 → 2" in n for n in result.notes) and any("seed 1.5 → 1" in n for n in result.notes)


def test_linear_map_is_fitted_once_and_kept_on_disk(tiny_model, monkeypatch, tmp_path):
    from pipelines.generation import linear_decoder
    from pipelines.worker import on_worker

    monkeypatch.setenv("DENOISE_CACHE", str(tmp_path))
    monkeypatch.setattr(tiny_model, "cache", {})
    first = on_worker(linear_decoder, tiny_model)
    assert on_worker(linear_decoder, tiny_model) is first  # the model keeps it: no refit, no hashing
    assert len(list(tmp_path.glob("linear-preview-*.json"))) == 1
    monkeypatch.setattr(tiny_model, "cache", {})  # a restart: read back from disk, same map
    again = on_worker(linear_decoder, tiny_model)
    assert again is not first and torch.equal(again.weight, first.weight)


def test_a_request_pipeline_never_touches_the_shared_one(tiny_model):
    shared = tiny_model.derive(SD)
    scheduler, config = shared.scheduler, dict(shared.config)
    run(tiny_model, SD, GenerationRequest(prompt="x", steps=2, seed=1, scheduler="Euler a"))
    assert shared.scheduler is scheduler and dict(shared.config) == config
    assert not getattr(shared, "_interrupt", False)


def test_decoding_a_view_waits_one_step_of_another_run_not_the_whole_run(tiny_model):
    """Scrubbing a finished run while someone else generates: the decode runs between two of their
    steps (on the torch thread), not after their run."""
    import time

    finished = run(tiny_model, SD, GenerationRequest(prompt="x", steps=3, seed=1)).steps
    started = threading.Event()
    timings = {}

    def long_run():
        begin = time.perf_counter()
        for item in stream(tiny_model, SD, GenerationRequest(prompt="y", steps=30, seed=2, step_delay_ms=50)):
            started.set()
        timings["long"] = time.perf_counter() - begin

    thread = threading.Thread(target=long_run)
    thread.start()
    started.wait(10)
    begin = time.perf_counter()
    decode_views(finished, "x_t")
    timings["decode"] = time.perf_counter() - begin
    thread.join()
    assert all("x_t" in s.pictures for s in finished)
    assert timings["long"] > 1.5 and timings["decode"] < timings["long"] / 3, timings


def test_a_preview_rate_decodes_only_what_a_screen_shows_and_the_rest_later(tiny_model):
    request = dict(prompt="x", steps=10, seed=3, preview_decoder="linear approximation")
    limited = run(tiny_model, SD, GenerationRequest(**request, preview_fps=0.001)).steps  # one per 1000 s
    every = run(tiny_model, SD, GenerationRequest(**request)).steps
    assert [s.index for s in limited if s.pictures] == [0, 9]  # the first, then only the last
    decode_views(limited, "x0")
    assert all(np.array_equal(a.pictures["x0"], b.pictures["x0"]) for a, b in zip(limited, every))


def test_a_request_is_one_job_on_the_torch_thread(tiny_model, monkeypatch):
    """Set-up, the run, previews and a stopped run's last guess: one trip, so a request never waits
    in the torch thread's queue twice behind other people's runs."""
    from pipelines import generation

    jobs = []
    submit = generation.WORKERS.submit
    monkeypatch.setattr(generation.WORKERS, "submit", lambda fn, *a, **k: jobs.append(fn) or submit(fn, *a, **k))
    run(tiny_model, SD, GenerationRequest(prompt="x", steps=3, seed=1, loras=[]))
    assert len(jobs) == 1
