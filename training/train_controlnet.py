"""Stage 3: train a canny-edge ControlNet for the shipped denoise-tiny pipeline.

Edge maps come from controlnet-aux's CannyDetector at 64x64 with fixed
thresholds (CANNY_LOW, CANNY_HIGH) -- use the SAME at inference (see canny()).
UNet, VAE and text encoder are frozen; only the ControlNet trains (v-prediction,
zero-SNR schedule, 10% caption dropout).  Resumable from <out>/ckpt.pt.

    python -m training.train_controlnet --base models/denoise-tiny \
        --controlnet-out models/denoise-tiny-controlnet-canny
"""
import argparse
import os

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ControlNetModel, DDPMScheduler, StableDiffusionPipeline
from tqdm import tqdm

from training.common import load_ckpt, lr_at, save_ckpt, setup
from training.data import make_dataset
from training.train_unet import CAPTION_DROPOUT, SCHEDULER_KW, encode_images, tokenize

# ----------------------------------------------------------------------------- config
BASE = "models/denoise-tiny"
OUT = "runs/controlnet"
CONTROLNET_OUT = "models/denoise-tiny-controlnet-canny"
CANNY_LOW, CANNY_HIGH = 50, 100
STEPS = 400
BATCH = 32
LR = 1e-3
N_TRAIN = 6000
# chance of a two-shape picture (data.sample_spec's default is 0.35): under control, two-shape
# two-colour prompts swapped colours between the shapes, so a continuation can see more of them
P_TWO = 0.35
COND_CHANNELS = (16, 32, 64)   # one level per VAE downsampling level (4x -> 3 levels)
BF16 = True
CKPT_EVERY = 200
SEED = 2

_detector = None


def canny(img, low=CANNY_LOW, high=CANNY_HIGH):
    """PIL/np RGB 64x64 -> PIL RGB edge map (white edges on black), same size."""
    global _detector
    if _detector is None:
        from controlnet_aux import CannyDetector
        _detector = CannyDetector()
    from PIL import Image
    arr = np.asarray(img.convert("RGB") if hasattr(img, "convert") else img, dtype=np.uint8)
    h = arr.shape[0]
    out = _detector(Image.fromarray(arr), low_threshold=low, high_threshold=high,
                    detect_resolution=h, image_resolution=h)
    return out


def load_data(out, pipe, n, dev, bf16, p_two=P_TWO):
    tag = "" if p_two == P_TWO else f"_two{p_two:g}"
    path = os.path.join(out, f"data_{n}{tag}.pt")
    if os.path.exists(path):
        return torch.load(path, weights_only=True)
    imgs, caps, _ = make_dataset(n, SEED, progress=True, p_two=p_two)
    edges = np.stack([np.asarray(canny(x))[:, :, 0] for x in tqdm(imgs, desc="canny", mininterval=10)])
    lat = encode_images(pipe.vae, imgs, bf16=bf16)
    d = {"latents": lat, "ids": tokenize(pipe.tokenizer, caps).to(torch.int16),
         "edges": torch.from_numpy(edges > 127), "captions": caps}
    torch.save(d, path)
    return d


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default=BASE)
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--controlnet-out", default=CONTROLNET_OUT)
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--batch", type=int, default=BATCH)
    ap.add_argument("--lr", type=float, default=LR)
    ap.add_argument("--n-train", type=int, default=N_TRAIN)
    ap.add_argument("--p-two", type=float, default=P_TWO, help="chance of a two-shape picture in the data")
    ap.add_argument("--no-bf16", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--init", default=None,
                    help="start from an exported ControlNet folder (e.g. one trained for an earlier base)")
    a = ap.parse_args(argv)
    dev = setup(a.device, a.threads, SEED)
    os.makedirs(a.out, exist_ok=True)
    use_bf16 = BF16 and not a.no_bf16
    ck = load_ckpt(os.path.join(a.out, "ckpt.pt"))
    if ck and ck["step"] >= a.steps and os.path.exists(os.path.join(a.out, "DONE")):
        print("already trained:", a.controlnet_out)
        return a.controlnet_out
    pipe = StableDiffusionPipeline.from_pretrained(a.base, safety_checker=None).to(dev)
    unet, te = pipe.unet.eval().requires_grad_(False), pipe.text_encoder.eval().requires_grad_(False)
    pipe.vae.requires_grad_(False)
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=COND_CHANNELS).to(dev)
    if a.init and not ck:
        cn.load_state_dict(ControlNetModel.from_pretrained(a.init).state_dict())
        print("initialised from", a.init)
    opt = torch.optim.AdamW(cn.parameters(), lr=a.lr, weight_decay=0.0)
    step = 0
    if ck:
        cn.load_state_dict(ck["model"]); opt.load_state_dict(ck["opt"]); step = ck["step"]
        print("resumed at step", step)
    print(f"controlnet params {sum(p.numel() for p in cn.parameters())/1e6:.2f}M")
    data = load_data(a.out, pipe, a.n_train, dev, use_bf16, a.p_two)
    lat, ids, edges = data["latents"], data["ids"].long(), data["edges"]
    empty_ids = tokenize(pipe.tokenizer, [""])[0]
    acp = DDPMScheduler(**SCHEDULER_KW).alphas_cumprod.to(dev)
    g = torch.Generator().manual_seed(SEED + step)
    cn.train()
    pbar = tqdm(range(step, a.steps), initial=step, total=a.steps, desc="controlnet", mininterval=10)
    for step in pbar:
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step, a.steps, a.lr, warmup=min(100, a.steps // 10))
        idx = torch.randint(0, len(lat), (a.batch,), generator=g)
        x0 = lat[idx].float().to(dev)
        cond = ids[idx].clone()
        cond[torch.rand(a.batch, generator=g) < CAPTION_DROPOUT] = empty_ids
        ctrl = edges[idx].float().unsqueeze(1).expand(-1, 3, -1, -1).to(dev)  # [0,1] like the pipeline
        noise = torch.randn(x0.shape, generator=g).to(dev)
        t = torch.randint(0, 1000, (a.batch,), generator=g).to(dev)
        ab = acp[t].view(-1, 1, 1, 1)
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        v = ab.sqrt() * noise - (1 - ab).sqrt() * x0
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
            with torch.no_grad():
                h = te(cond.to(dev))[0]
            down, mid = cn(xt, t, encoder_hidden_states=h, controlnet_cond=ctrl, return_dict=False)
            pred = unet(xt, t, encoder_hidden_states=h, down_block_additional_residuals=down,
                        mid_block_additional_residual=mid).sample.float()
        loss = F.mse_loss(pred, v)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(cn.parameters(), 1.0)
        opt.step()
        if step % 10 == 0:
            pbar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % CKPT_EVERY == 0 or step + 1 == a.steps:
            save_ckpt(os.path.join(a.out, "ckpt.pt"), model=cn.state_dict(), opt=opt.state_dict(), step=step + 1)
    cn.eval()
    readme = os.path.join(a.controlnet_out, "README.md")
    keep = open(readme).read() if os.path.exists(readme) else None
    cn.save_pretrained(a.controlnet_out, safe_serialization=True)
    if keep:
        open(readme, "w").write(keep)
    open(os.path.join(a.out, "DONE"), "w").write(str(a.steps))
    print("saved", a.controlnet_out)
    return a.controlnet_out


if __name__ == "__main__":
    main()
