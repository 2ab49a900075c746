"""RSS across LoRA load/unload cycles on the loaded model (diffusers #8532: RAM grows).

Prints RSS after the first cycle and after N cycles, and their ratio (target within 1.05):
    python bench/lora_memory.py [--model denoise-tiny] [--cycles 50] [--lora outline-style]
Without --lora (or if it is missing) a random LoRA made for the model is used.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
from pathlib import Path

import psutil
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from diffusers.utils import logging as diffusers_logging  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from pipelines.generation import GenerationRequest, run  # noqa: E402
from pipelines.loading import ModelManager  # noqa: E402
from pipelines.lora import list_loras  # noqa: E402


def random_lora(pipe, path: Path, rank: int = 8) -> str:
    g, layers = torch.Generator().manual_seed(0), {}
    for name, module in pipe.unet.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(("to_q", "to_k", "to_v", "to_out.0")):
            out_features, in_features = module.weight.shape
            layers[f"unet.{name}.lora_A.weight"] = torch.randn(rank, in_features, generator=g) * 0.1
            layers[f"unet.{name}.lora_B.weight"] = torch.randn(out_features, rank, generator=g) * 0.1
    save_file(layers, str(path))
    return str(path)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="denoise-tiny", help="name in models/, Hub id or local folder")
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--lora", default="outline-style")
    args = parser.parse_args()
    diffusers_logging.set_verbosity_error()
    model = ModelManager(args.model, allow_any_path=True).get()
    tmp = tempfile.TemporaryDirectory()
    lora = args.lora if args.lora in list_loras() else random_lora(model.pipe, Path(tmp.name) / "random.safetensors")
    process = psutil.Process()

    def cycle():
        name = model.loras.load(lora, allow_path=True).name
        run(model, type(model.pipe), GenerationRequest(prompt="a red circle", steps=2, seed=0, loras=[(name, 1.0)]))
        with model.loras._changed:
            model.loras.unload(name)
        gc.collect()

    cycle()
    first = process.memory_info().rss
    for _ in range(args.cycles - 1):
        cycle()
    last = process.memory_info().rss
    print(f"model {model.name} ({model.source}), LoRA {Path(lora).name}, {args.cycles} load/generate/unload cycles")
    print(f"  RSS after cycle 1: {first / 2**20:.1f} MiB   after cycle {args.cycles}: {last / 2**20:.1f} MiB   "
          f"ratio {last / first:.3f} (target ≤ 1.05)")


if __name__ == "__main__":
    main()
