"""Stage 1b: sharpen the VAE decoder on shape edges, encoder frozen.

The full VAE blurs the points of small stars into discs: pushed through the VAE
alone, small stars score as stars only about half the time, which caps every
model trained on its latents.  This stage keeps the encoder (so latents, their
scaling_factor and every UNet / ControlNet / LoRA trained on them stay valid,
as with Stability's sd-vae-ft-mse) and fine-tunes only the decoder with the
pixels on and beside shape edges weighted EDGE_WEIGHT times, on pictures that
carry many small shapes.  Resumable from <out>/ckpt.pt.

    python -m training.finetune_decoder --vae runs/vae/final --out runs/vae-dec [--steps N]
"""
import argparse
import json
import os

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from tqdm import tqdm

from training.common import load_ckpt, lr_at, save_ckpt, setup
from training.data import make_dataset
from training.train_vae import eval_images, eval_psnr

# ----------------------------------------------------------------------------- config
OUT = "runs/vae-dec"
STEPS = 1500
BATCH = 32
LR = 3e-4
EDGE_WEIGHT = 8.0        # loss weight of pixels within 1 px of a colour edge (1 elsewhere)
N_TRAIN = 16000
P_SIZE = 0.9             # most shapes carry a size word, so ~45 % of them are small
OUTLINE_FRAC = 0.2       # keep the LoRA's outlined pictures in the decoder's range
CKPT_EVERY = 250
SEED = 7
BF16 = True              # bf16 autocast, as in train_vae.py


def edge_band(x):
    """1 where a pixel's 3x3 neighbourhood holds more than one colour. x: [N,3,H,W] in [-1,1]."""
    hi = F.max_pool2d(x, 3, 1, 1)
    lo = -F.max_pool2d(-x, 3, 1, 1)
    return ((hi - lo).amax(1, keepdim=True) > 0.1).float()


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--vae", required=True, help="folder of the trained AutoencoderKL")
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--batch", type=int, default=BATCH)
    ap.add_argument("--lr", type=float, default=LR)
    ap.add_argument("--n-train", type=int, default=N_TRAIN)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    dev = setup(a.device, a.threads, SEED)
    final = os.path.join(a.out, "final")
    if os.path.exists(os.path.join(final, "config.json")):
        print("decoder already fine-tuned:", final)
        return final
    os.makedirs(a.out, exist_ok=True)

    n_out = int(a.n_train * OUTLINE_FRAC)
    x1, _, _ = make_dataset(a.n_train - n_out, SEED, p_size=P_SIZE, progress=True)
    x2, _, _ = make_dataset(n_out, SEED + 1, outline=True, p_size=P_SIZE)
    data = torch.from_numpy(np.concatenate([x1, x2])).permute(0, 3, 1, 2).contiguous().to(dev)
    xe = eval_images()

    vae = AutoencoderKL.from_pretrained(a.vae).to(dev).eval()
    vae.requires_grad_(False)
    with torch.no_grad():  # the encoder is frozen: encode every picture once
        lat = torch.cat([vae.encode(data[i:i + 256].float() / 127.5 - 1).latent_dist.mean
                         for i in tqdm(range(0, len(data), 256), desc="encode", mininterval=10)])
    vae.decoder.requires_grad_(True)
    vae.post_quant_conv.requires_grad_(True)
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
    step = 0
    ck = load_ckpt(os.path.join(a.out, "ckpt.pt"))
    if ck:
        vae.load_state_dict(ck["model"]); opt.load_state_dict(ck["opt"]); step = ck["step"]
        print("resumed at step", step)
    else:
        print(f"start: held-out PSNR {eval_psnr(vae, xe):.2f} dB")
    g = torch.Generator(dev).manual_seed(SEED + step)
    vae.train()
    pbar = tqdm(range(step, a.steps), initial=step, total=a.steps, desc="decoder", mininterval=10)
    for step in pbar:
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step, a.steps, a.lr, warmup=min(50, a.steps // 10))
        idx = torch.randint(0, len(data), (a.batch,), generator=g, device=dev)
        x = data[idx].float() / 127.5 - 1
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=BF16):
            rec = vae.decoder(vae.post_quant_conv(lat[idx])).float()
        w = 1 + (EDGE_WEIGHT - 1) * edge_band(x)
        err = (rec - x).abs() + (rec - x) ** 2
        loss = (w * err).sum() / (w.sum() * 3)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 50 == 0:
            pbar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % CKPT_EVERY == 0 or step + 1 == a.steps:
            save_ckpt(os.path.join(a.out, "ckpt.pt"), model=vae.state_dict(), opt=opt.state_dict(), step=step + 1)
    vae.eval()
    p = eval_psnr(vae, xe)
    vae.save_pretrained(final, safe_serialization=True)  # same config, same scaling_factor
    json.dump({"psnr_db": p, "steps": a.steps, "edge_weight": EDGE_WEIGHT},
              open(os.path.join(a.out, "metrics.json"), "w"), indent=2)
    print(f"decoder done: held-out PSNR {p:.2f} dB")
    return final


if __name__ == "__main__":
    main()
