"""Last stage: a tiny learned preview decoder (TAESD format), distilled from the model's VAE decoder.

The app shows, at every denoising step, pictures decoded from the latents a step holds (x_t, the
model's guess x̂0 and its noise guess ε̂). The linear 4->3 map lies about colour; the full VAE costs
tens of milliseconds per picture. This stage trains a diffusers `AutoencoderTiny` decoder (17k
weights) to reproduce what the shipped VAE decoder outputs for the latents previews
really show, and exports it as a TAESD folder (`--taesd models/denoise-tiny-taesd` in the app).

Conventions (the app's): `taesd.decode(latents).sample` takes latents as the UNet sees them (VAE
latents x scaling_factor) and returns [-1, 1]; the target is
`vae.decode(latents / vae.config.scaling_factor).sample.clamp(-1, 1)`.

Data, built once and cached in <out>/data_<tag>.pt (the targets are the full VAE decode of every
latent, stored as uint8):
  * clean latents: VAE-encoded pictures of the procedural dataset (20 % outline-styled, the LoRA's look);
  * forward-noised latents x_t = √ᾱ x0 + √(1−ᾱ) ε over the whole schedule;
  * the x̂0 guesses of every step, and x_t and ε̂ of a share of the steps, of real sampling runs of the
    shipped pipeline on training-distribution prompts (DDIM, Euler, DPM++ 2M; guidance 1-7), tapped
    from the run's own scheduler `step` (pipelines.noise_math) - early-step x̂0 guesses are blurry
    and off the clean-picture distribution, and they are what previews show most.
A validation set of 32 other prompts (25 DDIM steps, guidance 5: the app's default) is built the
same way from a separate seed.  Loss: MSE + L1 in pixel space; Adam with warmup + cosine.
Resumable from <out>/ckpt.pt, which stores the architecture it needs.

    python -m training.train_preview_decoder [--out runs/preview_decoder] [--taesd-out models/denoise-tiny-taesd]

The shipped folder: 15000 steps, then 4000 more in plain MSE with late-step guesses drawn more often
(about 47 min on one thread, after 24.5 min building the data on a shared machine):

    python -m training.train_preview_decoder --steps 15000 --no-export
    python -m training.train_preview_decoder --steps 19000 --lr 1e-3 --l1-weight 0 --late-x0 3 \\
        --mix clean=0.35,noised=0.02,x_t=0.015,x0=0.6,eps=0.015
"""
import argparse
import functools
import json
import os
import random
import shutil
import time

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderTiny, StableDiffusionPipeline

from training.common import Timer, load_ckpt, lr_at, save_ckpt, setup
from training.data import caption, make_dataset, sample_spec

# ----------------------------------------------------------------------------- config
OUT = "runs/preview_decoder"
MODEL = "models/denoise-tiny"            # the pipeline whose VAE is distilled (and whose runs give x̂0 / ε̂)
TAESD_OUT = "models/denoise-tiny-taesd"
# architecture (DecoderTiny: conv_in, then per stage `blocks` residual blocks of 3 convs, an upsample
# and one conv; the last stage's conv makes RGB). All stages have CHANNELS channels (DecoderTiny keeps
# the count through each upsample). Most of the cost is the two convolutions at 64x64 and per-op
# overhead, so the blocks sit at 16x16 and one x4 upsample reaches 64x64.
CHANNELS = 16
BLOCKS = (2, 0)
UPSCALE = 4
UPSAMPLE_FN = "nearest"
ENCODER_CHANNELS = 8                     # the encoder is untrained and unused: kept minimal (3 convs)
# training
STEPS = 15000
BATCH = 32
LR = 2e-3
WARMUP = 100
L1_WEIGHT = 0.1                          # loss = MSE + L1_WEIGHT * L1, on [-1, 1] pictures (PSNR is MSE; edges
                                         # hold most of the squared error, L1 pulls towards the flat regions)
CKPT_EVERY = 250
EVAL_EVERY = 1000
SEED = 4
# data
N_CLEAN = 2048                           # encoded pictures
OUTLINE_FRAC = 0.2
N_NOISY = 1024                           # forward-noised x_t at uniform t
N_RUNS = 384                             # sampling runs (prompts) of the shipped pipeline
RUN_BATCH = 32
RUN_STEPS = (15, 25, 30)                 # step counts drawn per batch of runs
SCHEDULERS = ("model default", "Euler", "DPM++ 2M")
GUIDANCE = (1.0, 7.0)                    # uniform range, one value per batch of runs
KEEP_OTHER = 0.2                         # share of (run, step) pairs whose x_t and ε̂ are kept too (x̂0: all)
N_VAL_RUNS = 32
VAL_STEPS = 25
DATA_SEED = 20_000                       # prompts and seeds of the training runs: DATA_SEED + i
VAL_SEED = 30_000                        # validation runs (the evaluation script uses yet another range)
KINDS = ("clean", "noised", "x_t", "x0", "eps")   # where each latent came from
# share of each batch drawn from each kind. Noise-like latents (x_t, ε̂) decode to high-frequency
# pictures that the decoder matches far worse (~15 dB): drawn uniformly they were 30 % of the data and
# most of the loss, while the x̂0 guesses (the bars) are what previews show most
MIX = {"clean": 0.25, "noised": 0.04, "x_t": 0.03, "x0": 0.65, "eps": 0.03}


def make_taesd(channels=CHANNELS, blocks=BLOCKS, upscale=UPSCALE, upsample_fn=UPSAMPLE_FN,
               encoder_channels=ENCODER_CHANNELS):
    """AutoencoderTiny with the given decoder; the encoder is the smallest one that keeps the shapes
    (two stride-2 convs: 64x64 pictures -> 4x16x16), untrained."""
    blocks = tuple(blocks)
    return AutoencoderTiny(
        in_channels=3, out_channels=3, latent_channels=4, act_fn="relu",
        encoder_block_out_channels=(encoder_channels,) * 3, num_encoder_blocks=(0, 0, 0),
        decoder_block_out_channels=(channels,) * len(blocks), num_decoder_blocks=blocks,
        upsampling_scaling_factor=upscale, upsample_fn=upsample_fn,
    )


def arch_of(a):
    return {"channels": a.channels, "blocks": [int(b) for b in a.blocks.split(",")], "upscale": a.upscale,
            "upsample_fn": a.upsample_fn}


# ----------------------------------------------------------------------------- data
def tap_views(scheduler, prediction_type, record):
    """Wrap this scheduler's `step` so every call appends (x_t, x̂0, ε̂) of the whole batch to `record`."""
    from pipelines.noise_math import model_view, noise_level
    original = scheduler.step

    @functools.wraps(original)  # keeps the signature: the pipeline passes `eta`/`generator` by inspection
    def step(model_output, timestep, sample, *args, **kwargs):
        level = noise_level(scheduler, timestep)  # before the step: it moves the step index on
        record.append(tuple(v.detach().cpu() for v in model_view(model_output, sample, level, prediction_type)))
        return original(model_output, timestep, sample, *args, **kwargs)

    scheduler.step = step


@torch.no_grad()
def sample_runs(pipe, prompts, seeds, steps, guidance, scheduler_name="model default"):
    """One batch of real sampling runs; returns (views [S,3,B,4,16,16], final latents [B,4,16,16])."""
    from pipelines.schedulers import make_scheduler
    base = pipe.scheduler
    pipe.scheduler = make_scheduler(scheduler_name, base)
    record = []
    tap_views(pipe.scheduler, pipe.scheduler.config.get("prediction_type", "epsilon"), record)
    try:
        final = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, output_type="latent",
                     generator=[torch.Generator().manual_seed(s) for s in seeds]).images
    finally:
        pipe.scheduler = base
    return torch.stack([torch.stack(r) for r in record]), final.float().cpu()


@torch.no_grad()
def vae_decode(vae, latents, bs=64):
    """The reference: full VAE decode of UNet-scaled latents, clamped, as uint8 NCHW."""
    out = []
    for i in range(0, len(latents), bs):
        y = vae.decode(latents[i:i + bs].float() / vae.config.scaling_factor).sample.clamp(-1, 1)
        out.append(((y + 1) * 127.5).round().to(torch.uint8))
    return torch.cat(out) if out else torch.zeros(0, 3, 64, 64, dtype=torch.uint8)


def run_prompts(n, seed):
    rng = random.Random(seed)
    return [caption(sample_spec(rng)) for _ in range(n)]


def build_data(path, model, n_clean, n_noisy, n_runs, run_batch, run_steps, keep_other, seed, val=False):
    """Latents and their full-VAE targets (cached at `path`). val=True: the app's default run settings
    (default scheduler, guidance 5, run_steps[0] steps)."""
    if os.path.exists(path):
        return torch.load(path, weights_only=True)
    clock = time.time()
    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    vae = pipe.vae.eval()
    vae.to(memory_format=torch.channels_last)  # the same decode, about 2x faster on CPU
    sf = vae.config.scaling_factor
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    lat, kind, frac = [], [], []  # frac: how far through its run a run latent was (0 = first step); -1 otherwise

    def add(z, k, f=-1.0):
        lat.append(z.float()); kind.append(torch.full((len(z),), KINDS.index(k), dtype=torch.int8))
        frac.append(torch.full((len(z),), float(f)) if not torch.is_tensor(f) else f.float())

    if n_clean:
        n_out = int(n_clean * OUTLINE_FRAC)
        a, _, _ = make_dataset(n_clean - n_out, seed, chunk=1024)
        b, _, _ = make_dataset(n_out, seed + 1, outline=True, chunk=1024)
        x = torch.from_numpy(np.concatenate([a, b])).permute(0, 3, 1, 2).float() / 127.5 - 1
        with torch.no_grad():
            z0 = torch.cat([vae.encode(x[i:i + 256]).latent_dist.mean for i in range(0, len(x), 256)]) * sf
        add(z0, "clean")
        if n_noisy:
            acp = pipe.scheduler.alphas_cumprod
            idx = torch.randint(0, len(z0), (n_noisy,), generator=g)
            ab = acp[torch.randint(0, len(acp), (n_noisy,), generator=g)].view(-1, 1, 1, 1)
            add(ab.sqrt() * z0[idx] + (1 - ab).sqrt() * torch.randn(z0[idx].shape, generator=g), "noised")
        print(f"data: {len(z0)} clean + {n_noisy} noised latents ({time.time() - clock:.0f} s)", flush=True)
    prompts = run_prompts(n_runs, seed)
    for b, i in enumerate(range(0, n_runs, run_batch)):
        if val:
            name, steps, guidance = "model default", run_steps[0], 5.0
        else:
            name, steps, guidance = SCHEDULERS[b % len(SCHEDULERS)], rng.choice(run_steps), rng.uniform(*GUIDANCE)
        views, _ = sample_runs(pipe, prompts[i:i + run_batch], [seed + j for j in range(i, i + len(prompts[i:i + run_batch]))],
                               steps, guidance, name)
        s, _, bsz = views.shape[:3]
        f = (torch.arange(s).float() / max(s - 1, 1))[:, None].expand(s, bsz)
        add(views[:, 1].flatten(0, 1), "x0", f.flatten())
        keep = torch.rand(s, bsz, generator=g) < keep_other
        for v, k in ((0, "x_t"), (2, "eps")):
            add(views[:, v][keep], k, f[keep])
        print(f"data: runs {i + len(prompts[i:i + run_batch])}/{n_runs} ({name}, {steps} steps, guidance "
              f"{guidance:.1f}; {time.time() - clock:.0f} s)", flush=True)
    lat, kind, frac = torch.cat(lat), torch.cat(kind), torch.cat(frac)
    target = vae_decode(vae, lat)
    d = {"latents": lat, "targets": target, "kinds": kind, "frac": frac}
    tmp = path + ".tmp"
    torch.save(d, tmp)
    os.replace(tmp, path)
    print(f"data: {len(lat)} latents decoded by the full VAE -> {path} ({(time.time() - clock) / 60:.1f} min)", flush=True)
    return d


def data_tag(a):
    return f"c{a.n_clean}_n{a.n_noisy}_r{a.n_runs}x{a.run_batch}_k{a.keep_other:g}"


# ----------------------------------------------------------------------------- training
@torch.no_grad()
def evaluate(decoder, val, bs=256):
    """Mean PSNR (dB) per kind of latent on the validation set, plus x̂0 of the first third of the steps
    and of the last step."""
    decoder.eval()
    pred = torch.cat([decoder(val["latents"][i:i + bs].float()).clamp(-1, 1) for i in range(0, len(val["latents"]), bs)])
    decoder.train()
    y = val["targets"].float() / 127.5 - 1
    mse = (((pred - y) / 2) ** 2).flatten(1).mean(1)
    p = 10 * torch.log10(1 / mse.clamp_min(1e-10))
    out = {}
    for i, k in enumerate(KINDS):
        m = val["kinds"] == i
        if m.any():
            out[k] = float(p[m].mean())
    x0 = val["kinds"] == KINDS.index("x0")
    if x0.any():
        out["x0_early"] = float(p[x0 & (val["frac"] < 1 / 3)].mean())
        out["x0_last"] = float(p[x0 & (val["frac"] == 1)].mean())
    return out


def export(model, out_dir):
    """Write a standard AutoencoderTiny folder (safetensors only), keeping a README.md already there."""
    tmp = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    if os.path.exists(os.path.join(out_dir, "README.md")):
        shutil.copy(os.path.join(out_dir, "README.md"), os.path.join(tmp, "README.md"))
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--data-dir", default=None, help="where the data cache lives (default: --out)")
    ap.add_argument("--model", default=MODEL, help="pipeline folder whose VAE is distilled")
    ap.add_argument("--taesd-out", default=TAESD_OUT)
    ap.add_argument("--no-export", action="store_true")
    ap.add_argument("--channels", type=int, default=CHANNELS)
    ap.add_argument("--blocks", default=",".join(map(str, BLOCKS)), help="residual blocks per stage, e.g. 2,0")
    ap.add_argument("--upscale", type=int, default=UPSCALE, help="upsampling factor between stages")
    ap.add_argument("--upsample-fn", default=UPSAMPLE_FN, choices=("nearest", "bilinear", "bicubic", "nearest-exact"))
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--batch", type=int, default=BATCH)
    ap.add_argument("--lr", type=float, default=LR)
    ap.add_argument("--l1-weight", type=float, default=L1_WEIGHT)
    ap.add_argument("--n-clean", type=int, default=N_CLEAN)
    ap.add_argument("--n-noisy", type=int, default=N_NOISY)
    ap.add_argument("--n-runs", type=int, default=N_RUNS)
    ap.add_argument("--run-batch", type=int, default=RUN_BATCH)
    ap.add_argument("--run-steps", default=",".join(map(str, RUN_STEPS)))
    ap.add_argument("--keep-other", type=float, default=KEEP_OTHER)
    ap.add_argument("--n-val-runs", type=int, default=N_VAL_RUNS)
    ap.add_argument("--val-steps", type=int, default=VAL_STEPS)
    ap.add_argument("--mix", default=",".join(f"{k}={v:g}" for k, v in MIX.items()),
                    help="batch share per kind of latent, e.g. clean=0.2,x0=0.8 (missing kinds: 0)")
    ap.add_argument("--late-x0", type=float, default=1.0,
                    help="x̂0 guesses of the second half of their run drawn this many times as often as the first "
                         "half's, within the x0 share (the last step's preview is the final picture)")
    ap.add_argument("--eval-every", type=int, default=EVAL_EVERY)
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="stop (checkpoint kept, resumable; the weights so far exported) after this long")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 leaves a core to others)")
    a = ap.parse_args(argv)
    dev = setup(a.device, a.threads, SEED)
    os.makedirs(a.out, exist_ok=True)
    data_dir = a.data_dir or a.out
    os.makedirs(data_dir, exist_ok=True)
    clock = Timer()
    ck = load_ckpt(os.path.join(a.out, "ckpt.pt"))
    arch = ck["arch"] if ck else arch_of(a)
    if ck and arch != arch_of(a):
        print(f"using the checkpoint's architecture {arch} (the command line's is ignored)")
    model = make_taesd(arch["channels"], arch["blocks"], arch["upscale"], arch["upsample_fn"])
    if ck and ck["step"] >= a.steps:  # finished: export only, without loading (or building) the data
        model.load_state_dict(ck["model"])
        print(f"preview decoder already trained ({ck['step']} steps)")
        if not a.no_export and not os.path.exists(os.path.join(a.taesd_out, "config.json")):
            export(model.eval(), a.taesd_out)
            print("exported", a.taesd_out)
        return a.taesd_out
    run_steps = tuple(int(s) for s in a.run_steps.split(","))
    data = build_data(os.path.join(data_dir, f"data_{data_tag(a)}.pt"), a.model, a.n_clean, a.n_noisy, a.n_runs,
                      a.run_batch, run_steps, a.keep_other, DATA_SEED)
    val = build_data(os.path.join(data_dir, f"val_r{a.n_val_runs}_s{a.val_steps}.pt"), a.model, 0, 0, a.n_val_runs,
                     a.run_batch, (a.val_steps,), 1.0, VAL_SEED, val=True)
    counts = {k: int((data["kinds"] == i).sum()) for i, k in enumerate(KINDS)}
    print(f"data ready: {len(data['latents'])} latents {counts}, val {len(val['latents'])} "
          f"({clock.minutes():.1f} min)", flush=True)

    dec = model.decoder.to(dev)
    opt = torch.optim.Adam(dec.parameters(), lr=a.lr)
    step = 0
    if ck:
        model.load_state_dict(ck["model"]); opt.load_state_dict(ck["opt"]); step = ck["step"]
        print("resumed at step", step)
    print(f"decoder {sum(p.numel() for p in dec.parameters())} parameters, {arch}", flush=True)

    lat, tgt = data["latents"].to(dev), data["targets"].to(dev)
    mix = {k: float(v) for k, v in (kv.split("=") for kv in a.mix.split(",") if kv)}
    kinds = data["kinds"].long()
    share = torch.tensor([mix.get(k, 0.0) / max(counts[k], 1) if counts[k] else 0.0 for k in KINDS])
    if share.sum() == 0:  # none of the kinds asked for is in the data: uniform
        share = torch.ones(len(KINDS))
    p_item = share[kinds]  # sampling weight of every latent
    if a.late_x0 != 1.0:
        x0 = kinds == KINDS.index("x0")
        late = x0 & (data["frac"] >= 0.5)
        p_item = torch.where(late, p_item * a.late_x0, p_item)
        p_item[x0] *= mix.get("x0", 0.0) / max(float(p_item[x0].sum()), 1e-12)  # the x0 share stays the same
    p_item = p_item.to(dev)
    val = {k: v.to(dev) for k, v in val.items()}
    g = torch.Generator(dev).manual_seed(SEED + step)
    dec.train()
    t_last, history = time.time(), []
    start = step
    for step in range(start, a.steps):
        if a.max_minutes and clock.minutes() > a.max_minutes:
            save_ckpt(os.path.join(a.out, "ckpt.pt"), model=model.state_dict(), opt=opt.state_dict(), step=step,
                      arch=arch)
            print(f"stopped early at step {step} of {a.steps} (--max-minutes {a.max_minutes})", flush=True)
            break
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step, a.steps, a.lr, warmup=min(WARMUP, a.steps // 10))
        idx = torch.multinomial(p_item, a.batch, replacement=True, generator=g)
        y = tgt[idx].float() / 127.5 - 1
        pred = dec(lat[idx].float())
        loss = F.mse_loss(pred, y) + a.l1_weight * F.l1_loss(pred, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % CKPT_EVERY == 0 or step + 1 == a.steps:
            save_ckpt(os.path.join(a.out, "ckpt.pt"), model=model.state_dict(), opt=opt.state_dict(), step=step + 1,
                      arch=arch)
        if (step + 1) % a.eval_every == 0 or step + 1 == a.steps:
            m = evaluate(dec, val)
            history.append({"step": step + 1, **m})
            print(f"step {step + 1}/{a.steps} loss {loss.item():.4f}  val PSNR " +
                  " ".join(f"{k} {v:.2f}" for k, v in m.items()) +
                  f"  ({(time.time() - t_last) / a.eval_every * 1e3:.0f} ms/step, {clock.minutes():.1f} min)", flush=True)
            t_last = time.time()
    model.eval()
    m = evaluate(dec, val)
    metrics = {"step": step + 1 if step + 1 == a.steps else step, "arch": arch, "val_psnr_db": m, "minutes": clock.minutes(), "history": history}
    with open(os.path.join(a.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    print(f"preview decoder: val PSNR x0 {m.get('x0', float('nan')):.2f} dB, last step "
          f"{m.get('x0_last', float('nan')):.2f} dB ({clock.minutes():.1f} min)", flush=True)
    if not a.no_export:
        export(model.to("cpu"), a.taesd_out)
        print("exported", a.taesd_out)
    return a.taesd_out


if __name__ == "__main__":
    main()
