"""Stage 2: train the text-conditioned UNet jointly with a tiny CLIP text encoder.

Latent diffusion on the VAE's 4x16x16 latents: v-prediction, zero-terminal-SNR
(rescaled scaled_linear betas), 10% caption dropout for classifier-free guidance.
The dataset is rendered once, encoded once (posterior mean * scaling_factor) and
cached under <out>/data.pt.  Resumable from <out>/ckpt.pt.

    python -m training.train_unet --vae runs/vae/final --out runs/unet
    python -m training.train_unet --export-only --pipeline-out models/denoise-tiny
"""
import argparse
import json
import os
import shutil

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline,
                       UNet2DConditionModel)
from tqdm import tqdm
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from training.common import Timer, load_ckpt, lr_at, save_ckpt, setup
from training.data import grid, make_dataset
from training.tokenizer import MODEL_MAX_LENGTH, build_tokenizer

# ----------------------------------------------------------------------------- config
OUT = "runs/unet"
VAE_DIR = "runs/vae/final"
PIPELINE_OUT = "models/denoise-tiny"
STEPS = 3500
BATCH = 64
LR = 1e-3
WARMUP = 200
N_TRAIN = 40000
CAPTION_DROPOUT = 0.1
# layout words (position, size) decide the picture at high noise, where x_t says nothing: a share
# of every batch can be drawn from the noisier half of the schedule, and the text encoder can
# learn faster than the UNet, so a word the UNet ignores does not stay indistinct
T_HIGH_FRAC = 0.0       # fraction of the batch with t in [T_HIGH_FROM, 1000)
T_HIGH_FROM = 500
TE_LR_MULT = 1.0
P_POS, P_SIZE = 0.5, 0.5  # chance that a shape in the training captions has a position / size word
# chance that a picture has two shapes. On held-out prompts the kind of a lone shape was right
# 96-98 % of the time but only 76-79 % in two-shape prompts (binding each kind to its shape)
P_TWO = 0.35
# small shapes cover 3-4 latent cells: in a plain mean over 16x16 cells the background outweighs
# their corners and points, and small squares/stars came out as blobs. Latent cells that differ
# from the picture's background latent (median cell) by more than FG_THRESH, dilated by one cell,
# weigh FG_WEIGHT times more (1 = plain MSE, as phases 2-8 trained)
FG_WEIGHT = 1.0
# Min-SNR-gamma (Hang et al. 2023: ~3x faster convergence) in v-prediction form: each row of the batch
# weighs min(snr, gamma) / (snr + 1), floored at MIN_SNR_FLOOR so the highest-noise rows, where layout
# and background are decided (snr -> 0 at zero terminal SNR), keep a share of the gradient. 0: off
SNR_GAMMA = 0.0
MIN_SNR_FLOOR = 0.2
FG_THRESH = 0.8         # on 128 pictures: every shape cell is covered; 27 % of cells marked, 15 % are shape
UNET_CHANNELS = (32, 64, 128)
# levels (0 = 16x16) with cross-attention. The shipped model has it at every level; (1, 2) with
# channels 48,96,192 costs the same CPU time with twice the parameters (16x16 self-attention is a
# quarter of the inference time), tried on a GPU but not trained long enough to ship
ATTENTION_LEVELS = (0, 1, 2)
# attention heads per block (diffusers' `attention_head_dim` argument holds the head count). The
# shipped model has 4 (head dims 8/16/32); fewer heads are cheaper per step on CPU
HEADS = 4
LAYERS_PER_BLOCK = 1
TEXT_HIDDEN = 128
TEXT_LAYERS = 3
BF16 = False            # bf16 autocast was not faster for this UNet on CPU; on CUDA it is used
CKPT_EVERY = 250
SAMPLE_EVERY = 1000
SEED = 1
SAMPLE_PROMPTS = [
    "a red circle on a white background",
    "a large blue star on a yellow background",
    "a small green triangle on the left on a black background",
    "a purple square at the top on an orange background",
    "a yellow star in the center on a purple background",
    "a white circle on the right and a red square on the left on a blue background",
    "an orange triangle at the bottom on a green background",
    "a black star at the top and a small blue circle at the bottom on a white background",
]

SCHEDULER_KW = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                    beta_end=0.012, rescale_betas_zero_snr=True, prediction_type="v_prediction",
                    timestep_spacing="trailing", clip_sample=False, steps_offset=1)


def make_text_encoder(tok, hidden=TEXT_HIDDEN, layers=TEXT_LAYERS):
    cfg = CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 4,
                         num_hidden_layers=layers, num_attention_heads=4,
                         max_position_embeddings=MODEL_MAX_LENGTH, projection_dim=hidden,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    return CLIPTextModel(cfg)


def make_unet(channels=UNET_CHANNELS, layers=LAYERS_PER_BLOCK, cross_dim=TEXT_HIDDEN, attention=ATTENTION_LEVELS,
              heads=HEADS):
    n = len(channels)
    attention = [i for i in attention if i < n] or [n - 1]
    down = tuple("CrossAttnDownBlock2D" if i in attention else "DownBlock2D" for i in range(n))
    up = tuple("CrossAttnUpBlock2D" if n - 1 - i in attention else "UpBlock2D" for i in range(n))
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=tuple(channels),
        layers_per_block=layers, cross_attention_dim=cross_dim, attention_head_dim=heads,
        down_block_types=down, up_block_types=up, norm_num_groups=16,
    )


def tokenize(tok, captions):
    return tok(captions, padding="max_length", max_length=MODEL_MAX_LENGTH, truncation=True,
               return_tensors="pt").input_ids


@torch.no_grad()
def encode_images(vae, imgs_uint8, bs=256, bf16=False):
    out = []
    sf = vae.config.scaling_factor
    for i in tqdm(range(0, len(imgs_uint8), bs), desc="encode", mininterval=10):
        x = torch.from_numpy(imgs_uint8[i:i + bs]).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(vae.device)
        with torch.autocast(vae.device.type, dtype=torch.bfloat16, enabled=bf16):
            z = vae.encode(x).latent_dist.mean.float()
        out.append((z * sf).half().cpu())
    return torch.cat(out)


def build_pipeline(unet, text_encoder, tok, vae):
    sched = DDIMScheduler(**SCHEDULER_KW)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet,
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


@torch.no_grad()
def sample_grid(pipe, prompts, path, seed=0, steps=25, guidance=5.0):
    g = torch.Generator().manual_seed(seed)
    ims = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=g).images
    grid(ims, 4, 3).save(path)


def export_pipeline(unet, text_encoder, vae_dir, out_dir, dtype=torch.float32):
    """Write a standard diffusers StableDiffusionPipeline folder (safetensors, fp32 so CPU loading works unchanged)."""
    tmp = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tok = build_tokenizer(os.path.join(tmp, "tokenizer"))
    vae = AutoencoderKL.from_pretrained(vae_dir)
    import copy
    pipe = build_pipeline(copy.deepcopy(unet).to("cpu", dtype), copy.deepcopy(text_encoder).to("cpu", dtype),
                          tok, vae.to(dtype))
    pipe.save_pretrained(tmp, safe_serialization=True)
    build_tokenizer(os.path.join(tmp, "tokenizer"))  # re-write vocab.json/merges.txt after save
    for keep in ("README.md",):
        if os.path.exists(os.path.join(out_dir, keep)):
            shutil.copy(os.path.join(out_dir, keep), os.path.join(tmp, keep))
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


def foreground_weights(x0, weight, thresh=FG_THRESH):
    """Per-cell loss weights (B,1,H,W): `weight` where the latent differs from its background, else 1."""
    bg = x0.flatten(2).median(-1).values[..., None, None]
    fg = ((x0 - bg).norm(dim=1, keepdim=True) > thresh).float()
    fg = F.max_pool2d(fg, 3, stride=1, padding=1)
    return 1.0 + (weight - 1.0) * fg


def min_snr_weights(alphas_cumprod, gamma, floor=MIN_SNR_FLOOR):
    """Per-timestep v-prediction loss weights min(snr, gamma) / (snr + 1), floored at `floor`."""
    snr = alphas_cumprod / (1 - alphas_cumprod).clamp_min(1e-8)
    return (snr.clamp(max=gamma) / (snr + 1)).clamp(min=floor)


def load_data(out, vae_dir, n, dev, bf16, chunk=0, workers=1, p_pos=P_POS, p_size=P_SIZE, p_two=P_TWO):
    tag = "" if (p_pos, p_size) == (P_POS, P_SIZE) else f"_pos{p_pos:g}_size{p_size:g}"
    tag += "" if p_two == P_TWO else f"_two{p_two:g}"
    path = os.path.join(out, f"data_{n}{tag}.pt")
    if os.path.exists(path):
        return torch.load(path, weights_only=True)
    imgs, caps, _ = make_dataset(n, SEED, progress=True, chunk=chunk, workers=workers, p_pos=p_pos, p_size=p_size,
                                  p_two=p_two)
    vae = AutoencoderKL.from_pretrained(vae_dir).to(dev).eval()
    lat = encode_images(vae, imgs, bf16=bf16)
    tok = build_tokenizer()
    d = {"latents": lat, "ids": tokenize(tok, caps).to(torch.int16), "captions": caps}
    torch.save(d, path)
    return d


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--vae", default=VAE_DIR)
    ap.add_argument("--pipeline-out", default=PIPELINE_OUT)
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--batch", type=int, default=BATCH)
    ap.add_argument("--lr", type=float, default=LR)
    ap.add_argument("--n-train", type=int, default=N_TRAIN)
    ap.add_argument("--channels", default=",".join(map(str, UNET_CHANNELS)))
    ap.add_argument("--attention", default=",".join(map(str, ATTENTION_LEVELS)),
                    help="levels (0 = 16x16) with cross-attention blocks")
    ap.add_argument("--heads", type=int, default=HEADS,
                    help="attention heads per transformer block (from scratch only: a checkpoint or --init "
                         "folder keeps its own)")
    ap.add_argument("--text-layers", type=int, default=TEXT_LAYERS)
    ap.add_argument("--sample-every", type=int, default=SAMPLE_EVERY)
    ap.add_argument("--export-only", action="store_true", help="export latest checkpoint as pipeline")
    ap.add_argument("--no-export", action="store_true")
    ap.add_argument("--no-bf16", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--init", default=None,
                    help="start from the unet/ and text_encoder/ of an exported pipeline folder "
                         "(continue training a shipped model instead of starting from scratch)")
    ap.add_argument("--warmup", type=int, default=WARMUP)
    ap.add_argument("--t-high-frac", type=float, default=T_HIGH_FRAC,
                    help=f"share of each batch drawn from t >= {T_HIGH_FROM} (layout is decided there)")
    ap.add_argument("--te-lr-mult", type=float, default=TE_LR_MULT, help="text encoder LR / UNet LR")
    ap.add_argument("--p-pos", type=float, default=P_POS, help="chance of a position word per shape in the data")
    ap.add_argument("--p-size", type=float, default=P_SIZE, help="chance of a size word per shape in the data")
    ap.add_argument("--p-two", type=float, default=P_TWO, help="chance of a two-shape picture in the data")
    ap.add_argument("--fg-weight", type=float, default=FG_WEIGHT,
                    help="loss weight of latent cells covered by shapes (1: plain MSE)")
    ap.add_argument("--snr-gamma", type=float, default=SNR_GAMMA,
                    help="min-SNR-gamma loss weighting of the timesteps (0: plain v-prediction MSE)")
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="stop early (checkpoint kept, resumable) after this long; the step reached is printed")
    ap.add_argument("--stop-at", type=int, default=None,
                    help="finish at this step although the LR schedule runs to --steps (how phase 8 was cut short)")
    ap.add_argument("--render-chunk", type=int, default=0,
                    help="render the dataset in independently seeded chunks of this many pictures "
                         "(0: one random stream, as the first phases did)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="processes rendering the chunks (the data does not depend on it)")
    a = ap.parse_args(argv)
    dev = setup(a.device, a.threads, SEED)
    os.makedirs(a.out, exist_ok=True)
    use_bf16 = (BF16 or dev.type == "cuda") and not a.no_bf16
    done_flag = os.path.join(a.out, "DONE")

    tok = build_tokenizer()
    ck = load_ckpt(os.path.join(a.out, "ckpt.pt"))
    # the head count changes no weight shape, so weights of another head count would load silently into
    # a different model: a checkpoint or --init folder keeps its own
    heads = a.heads
    if ck:
        heads = ck.get("heads", HEADS)  # checkpoints from before --heads all had the default
    elif a.init:
        heads = UNet2DConditionModel.load_config(a.init, subfolder="unet")["attention_head_dim"]
    if heads != a.heads:
        print(f"using the {heads} attention heads of the checkpoint / --init model (--heads {a.heads} ignored)")
    unet = make_unet(tuple(int(c) for c in a.channels.split(",")),
                     attention=tuple(int(c) for c in a.attention.split(",")), heads=heads).to(dev)
    te = make_text_encoder(tok, layers=a.text_layers).to(dev)
    unet_params, te_params = list(unet.parameters()), list(te.parameters())
    params = unet_params + te_params
    opt = torch.optim.AdamW([{"params": unet_params, "mult": 1.0}, {"params": te_params, "mult": a.te_lr_mult}],
                            lr=a.lr, weight_decay=0.01, fused=dev.type == "cuda")
    step = 0
    if a.init and not ck:
        unet.load_state_dict(UNet2DConditionModel.from_pretrained(a.init, subfolder="unet").state_dict())
        te.load_state_dict(CLIPTextModel.from_pretrained(a.init, subfolder="text_encoder").state_dict())
        print("initialised from", a.init)
    if ck:
        unet.load_state_dict(ck["unet"]); te.load_state_dict(ck["te"])
        if len(ck["opt"]["param_groups"]) == len(opt.param_groups):  # older checkpoints: one group
            opt.load_state_dict(ck["opt"])
        step = ck["step"]
        print("resumed at step", step)
    print(f"unet {sum(p.numel() for p in unet.parameters())/1e6:.2f}M  text encoder {sum(p.numel() for p in te.parameters())/1e6:.2f}M")
    if a.export_only or os.path.exists(done_flag):
        if not a.no_export:
            export_pipeline(unet, te, a.vae, a.pipeline_out)
            print("exported", a.pipeline_out, "from step", step)
        return a.pipeline_out

    data = load_data(a.out, a.vae, a.n_train, dev, use_bf16, a.render_chunk, a.workers, a.p_pos, a.p_size, a.p_two)
    # the whole (small) dataset lives on the training device: no copies per step
    lat, ids = data["latents"].to(dev), data["ids"].long().to(dev)
    empty_ids = tokenize(tok, [""])[0].to(dev)
    sched = DDPMScheduler(**SCHEDULER_KW)
    acp = sched.alphas_cumprod.to(dev)
    t_weight = min_snr_weights(acp, a.snr_gamma) if a.snr_gamma else None
    g = torch.Generator(dev).manual_seed(SEED + step)
    pbar = tqdm(range(step, a.steps), initial=step, total=a.steps, desc="unet", mininterval=10)
    unet.train(); te.train()
    clock = Timer()
    ckpt_every = CKPT_EVERY if dev.type == "cpu" else 8 * CKPT_EVERY  # GPU steps are ~100x faster
    finished_at = a.steps  # None when interrupted by --max-minutes
    n_high = int(round(a.t_high_frac * a.batch))  # batch rows drawn from t >= T_HIGH_FROM
    for step in pbar:
        if a.stop_at is not None and step >= a.stop_at:
            save_ckpt(os.path.join(a.out, "ckpt.pt"), unet=unet.state_dict(), te=te.state_dict(),
                      opt=opt.state_dict(), step=step, heads=heads)
            finished_at = step
            break
        if a.max_minutes and clock.minutes() > a.max_minutes:
            save_ckpt(os.path.join(a.out, "ckpt.pt"), unet=unet.state_dict(), te=te.state_dict(),
                      opt=opt.state_dict(), step=step, heads=heads)
            print(f"stopped early at step {step} of {a.steps} (--max-minutes {a.max_minutes})", flush=True)
            finished_at = None
            break
        for pg in opt.param_groups:
            pg["lr"] = pg["mult"] * lr_at(step, a.steps, a.lr, warmup=min(a.warmup, a.steps // 10))
        idx = torch.randint(0, len(lat), (a.batch,), generator=g, device=dev)
        x0 = lat[idx].float()
        drop = torch.rand(a.batch, generator=g, device=dev) < CAPTION_DROPOUT
        cond = torch.where(drop[:, None], empty_ids[None], ids[idx])
        noise = torch.randn(x0.shape, generator=g, device=dev)
        t = torch.randint(0, 1000, (a.batch,), generator=g, device=dev)
        if n_high:
            t[:n_high] = torch.randint(T_HIGH_FROM, 1000, (n_high,), generator=g, device=dev)
        ab = acp[t].view(-1, 1, 1, 1)
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        v = ab.sqrt() * noise - (1 - ab).sqrt() * x0
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
            h = te(cond)[0]
            pred = unet(xt, t, encoder_hidden_states=h).sample.float()
        err = (pred - v) ** 2
        if t_weight is not None:
            err = err * t_weight[t].view(-1, 1, 1, 1)
        if a.fg_weight == 1.0:
            loss = err.mean()
        else:  # the same reductions, in the same order, as the shipped lineage trained with
            w = foreground_weights(x0, a.fg_weight)
            loss = (w * err).mean() / w.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 100 == 0:  # .item() waits for the GPU: not every step
            pbar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % ckpt_every == 0 or step + 1 == a.steps:
            save_ckpt(os.path.join(a.out, "ckpt.pt"), unet=unet.state_dict(), te=te.state_dict(),
                      opt=opt.state_dict(), step=step + 1, heads=heads)
        if a.sample_every and ((step + 1) % a.sample_every == 0 or step + 1 == a.steps):
            unet.eval(); te.eval()
            vae = AutoencoderKL.from_pretrained(a.vae)
            pipe = build_pipeline(unet, te, tok, vae.to(dev))
            pipe.set_progress_bar_config(disable=True)
            sample_grid(pipe, SAMPLE_PROMPTS, os.path.join(a.out, f"samples_{step+1:06d}.png"))
            unet.train(); te.train()
    if finished_at is not None:
        open(done_flag, "w").write(str(finished_at))
    print(f"unet training: {clock.minutes():.1f} min", flush=True)
    unet.eval(); te.eval()
    if not a.no_export:
        export_pipeline(unet, te, a.vae, a.pipeline_out)
        print("exported", a.pipeline_out)
    return a.pipeline_out


if __name__ == "__main__":
    main()
