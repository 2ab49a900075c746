"""What watching the steps costs: app generation with previews vs a bare `pipe()` call.

Prints ratios measured in this one run (runs interleaved, medians), so a noisy machine affects
both sides alike. It also times bare `pipe()` before the app's path has ever run in this process:
work the app leaves behind (a second OpenMP team, say) would make every later run slower, and the
interleaved ratios alone would hide that.
    python bench/preview_overhead.py [--model denoise-tiny] [--steps 25] [--repeats 7]
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

from pipelines.generation import GenerationRequest, run  # noqa: E402
from pipelines.worker import WORKERS  # noqa: E402
from pipelines.loading import ModelManager  # noqa: E402
from pipelines.previews import LINEAR_DECODERS  # noqa: E402
from pipelines.schedulers import make_scheduler  # noqa: E402

PROMPT = "a large red circle on the left and a blue star on a white background"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="denoise-tiny", help="name in models/, Hub id or local folder")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
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

    def app_linear():
        run(model, pipe_class, GenerationRequest(**request, preview_every=1, preview_decoder="linear approximation"))

    def app_full():
        run(model, pipe_class, GenerationRequest(**request, preview_every=1, preview_decoder="full VAE"))

    cases = {"bare pipe()": bare, "app, linear previews every step": app_linear,
             "app, full-VAE previews every step": app_full}
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
        print(f"  {name:36s} {statistics.median(values) * 1000:8.1f} ms   ratio {statistics.median(values) / base:.3f}")
    before = statistics.median(fresh)
    print(f"  bare pipe() before the app ever ran  {before * 1000:8.1f} ms   "
          f"after / before {base / before:.3f} (1.0: the app leaves nothing behind that slows later runs)")

    decoder = LINEAR_DECODERS.get(model.pipe.vae)
    latents = torch.randn(3, 4, model.default_size // model.vae_scale_factor, model.default_size // model.vae_scale_factor)
    start, n = time.perf_counter(), 200
    for _ in range(n):
        decoder(latents)
    print(f"  linear approximate decode: {(time.perf_counter() - start) / n / 3 * 1000:.3f} ms per picture")


if __name__ == "__main__":
    main()
