"""Quick layout probe of a pipeline folder while training (about two minutes on 2 CPU cores).

    python -m training.probe_layout runs/unet-d/pipeline [--threads 2]

48 single-shape prompts that all carry a position word (training distribution), 48
held-out prompts and 64 held-out two-shape prompts (--two 0 skips them), 25 DDIM steps,
guidance 5, fixed seeds; prints the scorer's percentages and writes <folder>_probe.png.
The shipped numbers come from training/evaluate.py, not this.
"""
import argparse
import random

import torch
from diffusers import StableDiffusionPipeline

from training.data import grid, sample_spec
from training.evaluate import score_specs

KEYS = ("background", "shape_color", "shape_kind", "position", "two_shapes_present")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("pipeline")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--two", type=int, default=64, help="held-out two-shape prompts (shape kind binding)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    pipe = StableDiffusionPipeline.from_pretrained(a.pipeline, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    rng = random.Random(11)
    positioned = [sample_spec(rng, p_pos=1.0, p_two=0.0) for _ in range(48)]
    heldout = [sample_spec(rng, holdout=True) for _ in range(48)]
    two = [sample_spec(rng, holdout=True, n_shapes=2) for _ in range(a.two)]
    out = {}
    for name, specs in (("positioned", positioned), ("held-out", heldout), ("two-shape", two)):
        if not specs:
            continue
        ims, _, agg = score_specs(pipe, specs, list(range(len(specs))), bs=16)
        out[name] = {k: round(agg[k], 1) for k in KEYS}
        if name == "positioned":
            grid(ims, 8, 2).save(a.pipeline.rstrip("/") + "_probe.png")
    for name, row in out.items():
        print(f"{a.pipeline} {name:10s} {row}", flush=True)
    return out


if __name__ == "__main__":
    main()
