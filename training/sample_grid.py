"""Render docs/sample_grid.png: generated pictures with their prompts (from the
SHIPPED pipeline), enlarged with nearest-neighbour so the 64x64 images are visible.

    python -m training.sample_grid [--models models] [--out docs/sample_grid.png]
"""
import argparse
import os
import textwrap

import torch
from diffusers import StableDiffusionPipeline
from PIL import Image, ImageDraw, ImageFont

PROMPTS = [
    "a red circle on a white background",
    "a large blue star on a yellow background",
    "a small green triangle on the left on a black background",
    "a purple square at the top on an orange background",
    "a yellow star in the center on a purple background",
    "an orange triangle at the bottom on a green background",
    "a white circle on the right and a red square on the left on a blue background",
    "a black star at the top and a small blue circle at the bottom on a white background",
    # held-out (shape, colour, background) combinations, never seen in training
    "a red star on a blue background",
    "a green circle on a white background",
    "a yellow square on a purple background",
    "a blue triangle on an orange background",
    "a white star on a black background",
    "a large purple circle on the right on a yellow background",
    "a black triangle at the top on a white background",
    "a blue circle and a small yellow star on a red background",
]
CELL = 192
TEXT_H = 58


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="models")
    ap.add_argument("--out", default="docs/sample_grid.png")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    pipe = StableDiffusionPipeline.from_pretrained(os.path.join(a.models, "denoise-tiny"), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    gens = [torch.Generator().manual_seed(a.seed + i) for i in range(len(PROMPTS))]
    ims = []
    for i in range(0, len(PROMPTS), 8):
        ims += pipe(PROMPTS[i:i + 8], num_inference_steps=25, guidance_scale=5.0, generator=gens[i:i + 8]).images
    cols = 4
    rows = (len(ims) + cols - 1) // cols
    g = Image.new("RGB", (cols * CELL, rows * (CELL + TEXT_H)), "white")
    d = ImageDraw.Draw(g)
    font = ImageFont.load_default()
    for i, (im, p) in enumerate(zip(ims, PROMPTS)):
        x, y = (i % cols) * CELL, (i // cols) * (CELL + TEXT_H)
        g.paste(im.resize((CELL, CELL), Image.NEAREST), (x, y))
        tag = " [held-out]" if 8 <= i < 13 else ""
        for j, line in enumerate(textwrap.wrap(p + tag, 30)[:4]):
            d.text((x + 4, y + CELL + 2 + 13 * j), line, fill="black", font=font)
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    g.save(a.out)
    print("wrote", a.out)


if __name__ == "__main__":
    main()
