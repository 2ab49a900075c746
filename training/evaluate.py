"""Evaluate the SHIPPED model folders with diffusers' own loaders.

    python -m training.evaluate [--models models] [--n-eval 768] [--out runs/eval.json]

Scores generated pictures against the grammar (training/scorer.py): background
colour, shape colour and kind, position word, both shapes present; VAE PSNR on
held-out pictures; ControlNet edge IoU (dilated canny maps) + colour check; LoRA
effect at weights 0 / 0.5 / 1; wall time of one 25-step image with guidance.
"""
import argparse
import json
import os
import random
import time

import cv2
import numpy as np
import torch
from diffusers import (AutoencoderKL, ControlNetModel, StableDiffusionControlNetPipeline,
                       StableDiffusionPipeline)

from training.common import psnr
from training.data import COLORS, caption, grid, render, sample_spec, to_tensor
from training.scorer import aggregate, palette_labels, score
from training.train_controlnet import canny

STEPS, GUIDANCE = 25, 5.0
BARS = {"background": 98, "shape_color": 95, "shape_kind": 95, "position": 90, "two_shapes_present": 80}


def generate(pipe, prompts, seeds, bs=8, **kw):
    ims = []
    for i in range(0, len(prompts), bs):
        gens = [torch.Generator().manual_seed(s) for s in seeds[i:i + bs]]
        ims += pipe(prompts[i:i + bs], num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                    generator=gens, **{k: (v[i:i + bs] if isinstance(v, list) else v) for k, v in kw.items()}).images
    return ims


def score_specs(pipe, specs, seeds, bs=8):
    """Generate the captions of `specs` (one seed each) and score them: (pictures, results, aggregate)."""
    ims = generate(pipe, [caption(s) for s in specs], seeds, bs=bs)
    res = [score(im, sp) for im, sp in zip(ims, specs)]
    return ims, res, aggregate(res, specs)


def eval_prompts(pipe, n, seed, holdout, tag, save_dir):
    rng = random.Random(seed)
    specs = [sample_spec(rng, holdout=holdout) for _ in range(n)]
    prompts = [caption(s) for s in specs]
    ims, res, agg = score_specs(pipe, specs, list(range(seed, seed + n)))
    grid(ims[:32], 8, 2).save(os.path.join(save_dir, f"eval_{tag}.png"))
    return agg, [{"prompt": p, **{k: v for k, v in r.items() if k != "shapes"},
                                    "shapes": r["shapes"]} for p, r in zip(prompts, res)]


def edge_iou(a, b, k=3):
    ea = cv2.dilate((np.asarray(a)[:, :, 0] > 127).astype(np.uint8), np.ones((k, k), np.uint8))
    eb = cv2.dilate((np.asarray(b)[:, :, 0] > 127).astype(np.uint8), np.ones((k, k), np.uint8))
    return float((ea & eb).sum() / max((ea | eb).sum(), 1))


def dark_fraction(img):
    lab = palette_labels(img)
    return float((lab == list(COLORS).index("black")).mean())


def eval_inpaint(pipe, n, save_dir):
    from diffusers import StableDiffusionInpaintPipeline
    from PIL import Image

    ipipe = StableDiffusionInpaintPipeline(**pipe.components)
    ipipe.set_progress_bar_config(disable=True)
    rng = random.Random(31)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (20, 20, 44, 44))
    pictures, prompts, colours = [], [], []
    for _ in range(n):
        spec = sample_spec(rng, holdout=False, n_shapes=1)
        spec["shapes"][0].update(pos="left", cx=10.0, cy=10.0, r=6.5, size="small")  # keep the centre free
        colour = rng.choice([c for c in COLORS if c != spec["bg"]])
        pictures.append(render(spec))
        prompts.append(f"a large {colour} square in the center on a{'n' if spec['bg'][0] in 'aeiou' else ''} "
                       f"{spec['bg']} background")
        colours.append(colour)
    ims = generate(ipipe, prompts, list(range(n)), image=pictures, mask_image=mask)
    inside, outside = [], []
    for im, pic, colour in zip(ims, pictures, colours):
        a, b = np.asarray(im).astype(int), np.asarray(pic).astype(int)
        inside.append(float((np.abs(a[24:40, 24:40].reshape(-1, 3) - COLORS[colour]).sum(1) < 90).mean()))
        outside.append(float(np.abs(a[48:] - b[48:]).mean()))
    grid(pictures[:8] + ims[:8], 8, 2).save(os.path.join(save_dir, "eval_inpaint.png"))
    return {"prompt_colour_inside_mask": 100 * float(np.mean(inside)),
            "mask_mostly_prompt_colour": 100 * float(np.mean([x > 0.5 for x in inside])),
            "mean_abs_error_outside_mask": float(np.mean(outside)), "n": n}


@torch.no_grad()
def vae_roundtrip_scores(vae, n=256, seed=12345):
    """The scorer on held-out pictures pushed through the VAE alone: the ceiling any model on
    its latents can reach. Shape kind is split by size word, since small shapes blur first."""
    rng = random.Random(seed)
    specs = [sample_spec(rng, holdout=True) for _ in range(n)]
    x = to_tensor(np.stack([np.asarray(render(s)) for s in specs]))
    y = vae.decode(vae.encode(x).latent_dist.mean).sample
    y = ((y.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    res = [score(im, s) for im, s in zip(y, specs)]
    out = aggregate(res, specs)
    for size in ("small", None, "large"):
        ok = [r["kind"] for rs, sp in zip(res, specs) for r, sh in zip(rs["shapes"], sp["shapes"]) if sh["size"] == size]
        out[f"shape_kind_{size or 'default'}"] = 100.0 * sum(ok) / max(len(ok), 1)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="models")
    # 768 held-out prompts (about 970 shapes): sets of 256 put the same model at 94.8-96.1 % kind, sets of 64
    # further apart still
    ap.add_argument("--n-eval", type=int, default=768)
    # 32 training-distribution prompts read 87.5 % kind and 85.7 % position where 256 read 96.6 % and 98.0 %
    ap.add_argument("--n-train-dist", type=int, default=256)
    ap.add_argument("--n-control", type=int, default=16)
    ap.add_argument("--n-lora", type=int, default=12)
    ap.add_argument("--n-inpaint", type=int, default=16)
    ap.add_argument("--out", default="runs/eval.json")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    save_dir = os.path.dirname(a.out) or "."
    os.makedirs(save_dir, exist_ok=True)
    base = os.path.join(a.models, "denoise-tiny")
    R = {}
    pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)

    # timing of one 25-step 64x64 image with guidance
    p = "a red circle on the left on a white background"
    pipe(p, num_inference_steps=STEPS, guidance_scale=GUIDANCE)
    ts = []
    for _ in range(3):
        t0 = time.perf_counter()
        pipe(p, num_inference_steps=STEPS, guidance_scale=GUIDANCE, generator=torch.Generator().manual_seed(0))
        ts.append(time.perf_counter() - t0)
    R["seconds_per_image_25steps_cfg"] = float(np.median(ts))
    R["torch_threads"] = a.threads

    # prompt following on held-out combos and on the training distribution
    R["heldout"], details = eval_prompts(pipe, a.n_eval, 1000, True, "heldout", save_dir)
    if a.n_train_dist:
        R["train_dist"], _ = eval_prompts(pipe, a.n_train_dist, 5000, False, "traindist", save_dir)

    # VAE reconstruction
    from training.train_vae import eval_images, eval_psnr
    vae = AutoencoderKL.from_pretrained(os.path.join(base, "vae"))
    R["vae_psnr_db"] = eval_psnr(vae, eval_images(256))
    R["vae_roundtrip"] = vae_roundtrip_scores(vae)

    # ControlNet
    cn_dir = os.path.join(a.models, "denoise-tiny-controlnet-canny")
    if os.path.exists(os.path.join(cn_dir, "config.json")):
        cn = ControlNetModel.from_pretrained(cn_dir)
        cpipe = StableDiffusionControlNetPipeline(
            vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
            controlnet=cn, scheduler=pipe.scheduler, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)
        cpipe.set_progress_bar_config(disable=True)
        rng = random.Random(77)
        specs = [sample_spec(rng, holdout=True) for _ in range(a.n_control)]
        ctrls = [canny(render(s)) for s in specs]
        ims = generate(cpipe, [caption(s) for s in specs], list(range(a.n_control)), image=ctrls)
        ious = [edge_iou(canny(im), c) for im, c in zip(ims, ctrls)]
        res = [score(im, s) for im, s in zip(ims, specs)]
        # the same prompts WITHOUT control as a reference for the IoU
        ref = generate(pipe, [caption(s) for s in specs], list(range(a.n_control)))
        agg = aggregate(res, specs)
        R["controlnet"] = {"edge_iou": float(np.mean(ious)), "edge_iou_without_control": float(np.mean(
            [edge_iou(canny(im), c) for im, c in zip(ref, ctrls)])), "background": agg["background"],
            "shape_color": agg["shape_color"], "shape_kind": agg["shape_kind"], "n": a.n_control}
        grid(ctrls[:8] + ims[:8], 8, 2).save(os.path.join(save_dir, "eval_controlnet.png"))

    # LoRA
    lora_dir = os.path.join(a.models, "loras")
    if a.n_lora and os.path.exists(os.path.join(lora_dir, "outline-style.safetensors")):
        pipe.load_lora_weights(lora_dir, weight_name="outline-style.safetensors", adapter_name="outline")
        rng = random.Random(99)
        specs = []
        while len(specs) < a.n_lora:
            s = sample_spec(rng, holdout=False)
            if s["bg"] != "black" and all(x["color"] != "black" for x in s["shapes"]):
                specs.append(s)
        prompts = [caption(s, style="outlined") for s in specs]
        out = {}
        rows = []
        for w in (0.0, 0.5, 1.0):
            pipe.set_adapters(["outline"], adapter_weights=[w])
            ims = generate(pipe, prompts, list(range(a.n_lora)))
            rows.append(ims)
            out[w] = ims
        base_arr = [np.asarray(x, np.float32) for x in out[0.0]]
        R["lora"] = {f"w{w}": {"dark_outline_fraction": float(np.mean([dark_fraction(x) for x in out[w]])),
                               "mean_abs_diff_vs_w0": float(np.mean([np.abs(np.asarray(x, np.float32) - b).mean()
                                                                     for x, b in zip(out[w], base_arr)]))}
                     for w in (0.0, 0.5, 1.0)}
        R["lora"]["score_w1"] = aggregate([score(im, s) for im, s in zip(out[1.0], specs)], specs)
        grid(rows[0][:8] + rows[1][:8] + rows[2][:8], 8, 2).save(os.path.join(save_dir, "eval_lora.png"))
        pipe.unload_lora_weights()

    # inpainting with the 4-channel UNet (diffusers blends the known latents): does the prompt's
    # colour appear inside the mask, and does the rest stay?
    if a.n_inpaint:
        R["inpaint"] = eval_inpaint(pipe, a.n_inpaint, save_dir)

    R["bars"] = BARS
    json.dump({"results": R, "heldout_details": details}, open(a.out, "w"), indent=2)
    print_table(R)
    return R


def print_table(R):
    print(f"\n{'metric':38s} {'value':>9s}  bar")
    h = R["heldout"]
    for k in ("background", "shape_color", "shape_kind", "position", "two_shapes_present"):
        print(f"{'held-out ' + k:38s} {h[k]:8.1f}%  >= {BARS[k]}%")
        if k == "shape_kind" and "shape_kind_one_shape" in h:
            print(f"{'  in one- / two-shape prompts':38s} {h['shape_kind_one_shape']:8.1f}%  / "
                  f"{h['shape_kind_two_shapes']:.1f}%")
    if "train_dist" in R:
        t = R["train_dist"]
        for k in ("background", "shape_color", "shape_kind", "position", "two_shapes_present"):
            print(f"{'train-dist ' + k:38s} {t[k]:8.1f}%")
    print(f"{'VAE PSNR (held-out pictures)':38s} {R['vae_psnr_db']:8.2f} dB >= 30 dB")
    if "vae_roundtrip" in R:
        v = R["vae_roundtrip"]
        print(f"{'VAE round trip: shape kind readable':38s} {v['shape_kind']:8.1f}%  (small "
              f"{v['shape_kind_small']:.0f}%, default {v['shape_kind_default']:.0f}%, large {v['shape_kind_large']:.0f}%)")
    if "controlnet" in R:
        c = R["controlnet"]
        print(f"{'ControlNet edge IoU (dilated 3x3)':38s} {c['edge_iou']:9.3f}  >= 0.6")
        print(f"{'  same prompts without control':38s} {c['edge_iou_without_control']:9.3f}")
        print(f"{'ControlNet background colour':38s} {c['background']:8.1f}%")
        print(f"{'ControlNet shape colour':38s} {c['shape_color']:8.1f}%")
    if "lora" in R:
        for w in ("w0.0", "w0.5", "w1.0"):
            l = R["lora"][w]
            print(f"{'LoRA ' + w + ' dark outline px / diff vs w0':38s} {l['dark_outline_fraction']:9.3f}  {l['mean_abs_diff_vs_w0']:.1f}")
    if "inpaint" in R:
        i = R["inpaint"]
        print(f"{'inpaint: prompt colour inside the mask':38s} {i['prompt_colour_inside_mask']:8.1f}%  "
              f"(mask mostly that colour in {i['mask_mostly_prompt_colour']:.0f}% of pictures)")
        print(f"{'inpaint: mean abs error outside mask':38s} {i['mean_abs_error_outside_mask']:9.2f}")
    print(f"{'seconds per 25-step image (CFG 5)':38s} {R['seconds_per_image_25steps_cfg']:9.3f}  < 1 s")


if __name__ == "__main__":
    main()
