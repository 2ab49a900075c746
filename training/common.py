"""Small shared helpers for the training stages (checkpointing, devices, LR)."""
import math
import os
import time

import torch


def setup(device="cpu", threads=2, seed=0):
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # denormals made CPU steps 3x slower as training progressed
    torch.manual_seed(seed)
    if device == "cuda" and not torch.cuda.is_available():
        device = "cpu"
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return torch.device(device)


def lr_at(step, total, base, warmup=200, final_frac=0.1):
    if step < warmup:
        return base * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * p)))


def save_ckpt(path, **state):
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_ckpt(path):
    if os.path.exists(path):
        return torch.load(path, map_location="cpu", weights_only=True)
    return None


def psnr(a, b):
    """a, b in [-1, 1], [N,3,H,W]; mean PSNR over images (peak = 1 on [0,1] scale)."""
    mse = (((a.clamp(-1, 1) - b) / 2) ** 2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean().item()


class Timer:
    def __init__(self):
        self.t0 = time.time()

    def minutes(self):
        return (time.time() - self.t0) / 60
