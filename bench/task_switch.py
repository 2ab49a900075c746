"""Switching text-to-image -> inpaint -> ControlNet on the loaded model: memory, time, reloads.

Prints, measured in this run: weight loads during the switches (must be 0 apart from the ControlNet's
own), parameters each task adds, RSS growth, and the time of each task's first run vs a repeat run.
    python bench/task_switch.py [--model denoise-tiny] [--steps 10]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import psutil
import torch
from diffusers import ModelMixin

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diffusers.utils import logging as diffusers_logging  # noqa: E402
from PIL import Image  # noqa: E402

from pipelines.controlnet import controlnet_stream, load_controlnet, preprocess  # noqa: E402
from pipelines.generation import GenerationRequest, run, stream  # noqa: E402
from pipelines.inpaint import inpaint_stream  # noqa: E402
from pipelines.loading import ModelManager  # noqa: E402

loads = []
_original = ModelMixin.from_pretrained.__func__


@classmethod
def counting_from_pretrained(cls, *args, **kwargs):
    loads.append(cls.__name__)
    return _original(cls, *args, **kwargs)


def unique_parameters(model) -> int:
    seen, total = set(), 0
    pipes = [model.pipe, *model.derived.values()]
    for pipe in pipes:
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                for p in component.parameters():
                    if p.data_ptr() not in seen:
                        seen.add(p.data_ptr())
                        total += p.numel()
    return total


def last(items):
    for item in items:
        pass
    return item


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="denoise-tiny", help="name in models/, Hub id or local folder")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    diffusers_logging.set_verbosity_error()
    process = psutil.Process()
    model = ModelManager(args.model, allow_any_path=True).get()
    ModelMixin.from_pretrained = counting_from_pretrained
    size = model.default_size
    picture = Image.new("RGB", (size, size), "white")
    picture.paste((200, 30, 30), (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    request = lambda: GenerationRequest(prompt="a blue star on a white background", steps=args.steps, seed=1)  # noqa
    tasks = {
        "txt2img": lambda: run(model, type(model.pipe), request()),
        "inpaint": lambda: last(inpaint_stream(model, request(), picture, mask)),
        "controlnet": lambda: last(controlnet_stream(model, request(), [preprocess("canny", picture)],
                                                     [load_controlnet(model)], [1.0])),
    }
    print(f"model {model.name} ({model.source}), {args.steps} steps, {size}px")
    print(f"{'task':12s} {'first run ms':>12s} {'repeat ms':>10s} {'ratio':>6s} {'params added':>13s} "
          f"{'RSS +MiB':>9s} {'weight loads':>13s}")
    params = unique_parameters(model)
    for name, task in tasks.items():
        rss, before_loads = process.memory_info().rss, len(loads)
        start = time.perf_counter()
        task()
        first = time.perf_counter() - start
        start = time.perf_counter()
        task()
        repeat = time.perf_counter() - start
        now = unique_parameters(model)
        print(f"{name:12s} {first * 1000:12.1f} {repeat * 1000:10.1f} {first / repeat:6.2f} {now - params:13,d} "
              f"{(process.memory_info().rss - rss) / 2**20:9.1f} {', '.join(loads[before_loads:]) or '0':>13s}")
        params = now


if __name__ == "__main__":
    main()
