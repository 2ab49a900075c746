"""What watching the steps costs: app generation with previews vs a bare `pipe()` call.

Prints ratios measured in this one run (runs interleaved, medians), so a noisy machine affects
both sides alike. It also times bare `pipe()` before the app's path has ever run in this process:
work the app leaves behind (a second OpenMP team, say) would make every later run slower, and the
interleaved ratios alone would hide that.
    python bench/preview_overhead.py [--model denoise-tiny] [--steps 25] [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diffusers.utils import logging as diffusers_logging  # noqa: E402

from pipelines.generation import GenerationRequest, decode_views, decoder_names, preview_decoder, run  # noqa: E402
from pipelines.loading import ModelManager  # noqa: E402
from pipelines.schedulers import make_scheduler  # noqa: E402
from pipelines.worker import WORKERS, on_worker, set_threads  # noqa: E402

PROMPT = "a large red circle on the left and a blue star on a white background"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="denoise-tiny", help="name in models/, Hub id or local folder")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    set_threads(args.threads)
    diffusers_logging.set_verbosity_error()
    model = ModelManager(args.model, allow_any_path=True).get()
    pipe_class = type(model.pipe)
    request = dict(prompt=PROMPT, steps=args.steps, guidance_scale=args.guidance, seed=0)

    def bare():
        """The same pipeline call with no callback, on the same kind of worker thread as the app's."""
        pipe = pipe_class.from_pipe(model.pipe, scheduler=make_scheduler("model default", model.pipe.scheduler))
        pipe.set_progress_bar_config(disable=True)
        WORKERS.submit(pipe, PROMPT, num_inference_steps=args.steps, guidance_scale=args.guidance,
                       generator=torch.Generator("cpu").manual_seed(0)).result()

    def app_with(decoder):
        return lambda: run(model, pipe_class, GenerationRequest(**request, preview_every=1, preview_decoder=decoder))

    cases = {"bare pipe()": bare,
             "app, no previews": lambda: run(model, pipe_class, GenerationRequest(**request, preview_every=0))}
    for name in decoder_names(model):
        cases[f"app, {name} previews every step"] = app_with(name)

    def as_the_browser_runs_it():
        """≤ 20 live decodes a second (what a screen is sent), then the filmstrip's other frames."""
        result = run(model, pipe_class, GenerationRequest(**request, preview_every=1, preview_fps=20))
        decode_views(result.steps, "x0")

    cases[f"app, {decoder_names(model)[0]}, as the browser runs it"] = as_the_browser_runs_it
    bare()  # warm-up
    fresh = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        bare()
        fresh.append(time.perf_counter() - start)
    for fn in cases.values():  # warm-up (also fits the linear decoder once)
        fn()
    times = {name: [] for name in cases}
    with torch.inference_mode():
        for _ in range(args.repeats):
            for name, fn in cases.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times["bare pipe()"])
    print(f"model {model.name} ({model.source}), {args.steps} steps, guidance {args.guidance}, "
          f"{model.default_size}px, {torch.get_num_threads()} threads, median of {args.repeats}")
    for name, values in times.items():
        print(f"  {name:46s} {statistics.median(values) * 1000:8.1f} ms   ratio {statistics.median(values) / base:.3f}")
    before = statistics.median(fresh)
    print(f"  bare pipe() before the app ever ran  {before * 1000:8.1f} ms   "
          f"after / before {base / before:.3f} (1.0: the app leaves nothing behind that slows later runs)")

    side = model.default_size // model.vae_scale_factor
    latents = torch.randn(1, model.pipe.unet.config.in_channels, side, side)
    for name in decoder_names(model):
        decoder = on_worker(preview_decoder, model, name)

        def timed(n=200):
            with torch.inference_mode():
                for _ in range(5):
                    decoder(latents)
                start = time.perf_counter()
                for _ in range(n):
                    decoder(latents)
                return (time.perf_counter() - start) / n

        print(f"  {name} decode, one {model.default_size}px picture: {on_worker(timed) * 1000:.3f} ms")


if __name__ == "__main__":
    main()
