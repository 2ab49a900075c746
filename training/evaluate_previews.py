"""Measure the preview decoders of the SHIPPED model: the learned TAESD decoder vs the linear map.

    python -m training.evaluate_previews [--model models/denoise-tiny] [--taesd models/denoise-tiny-taesd]
                                         [--n-eval 64] [--out runs/preview_eval.json]

Runs the shipped pipeline (default scheduler, 25 steps, guidance 5) on held-out prompts and seeds
(the caption generator's training distribution, from a seed range no training stage uses), taps
every step's x_t, x̂0 and ε̂ from the run's own scheduler (pipelines.noise_math), and compares each
preview decoder, through the app's own decoder classes (uint8 pictures), with the full VAE decode of
the same latents:

  1. last step: the x̂0 preview of the last step vs the final picture (full VAE decode of the
     pipeline's final latents)                                               bar >= 30 dB
  2. every step: x̂0 (bar >= 25 dB, mean over steps; worst step shown), x_t and ε̂ previews
  3. speed: `taesd.decode(latents).sample` at batch 1 (and 3, the app's three views per step) with
     --speed-threads torch threads under inference_mode, median of many calls   target <= 1 ms,
     limit 2 ms per 64 px picture; the machine's load average is recorded beside it

The same numbers on --n-holdout prompts whose first shape is one of data.HOLDOUT's (shape, colour,
background) combinations, which no training data holds, are reported apart (harder).
More than one --taesd folder may be given (candidates are scored side by side; the first is the
one the bars apply to).  Writes the numbers to --out and a picture grid beside it.
"""
import argparse
import json
import os
import random
import time

import numpy as np
import torch
from diffusers import AutoencoderTiny, StableDiffusionPipeline
from PIL import Image

from pipelines.previews import FullVaeDecoder, LinearDecoder, TinyVaeDecoder
from training.data import caption, sample_spec
from training.train_preview_decoder import sample_runs

STEPS, GUIDANCE = 25, 5.0
EVAL_SEED = 50_000        # training runs use 20_000+, its validation runs 30_000+
HOLDOUT_SEED = 60_000     # the held-out-combination prompts
BARS = {"last_x0_db": 30.0, "mid_x0_db": 25.0, "ms_per_picture_target": 1.0, "ms_per_picture_limit": 2.0}
VIEWS = ("x_t", "x0", "eps")


def eval_prompts(n, seed=EVAL_SEED, holdout=False):
    rng = random.Random(seed)
    return [caption(sample_spec(rng, holdout=holdout)) for _ in range(n)]


def psnr_u8(a, b):
    """Per-picture PSNR (dB) of two uint8 N×H×W×3 arrays (peak 255)."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    return 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10))


def time_call(fn, n=2000, warmup=100):
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return float(np.median(ts) * 1e3)


def speed(decoders, vae, threads, n):
    """Median ms per call; the models are timed in turn, twice, and the lower median kept."""
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    z1, z3 = torch.randn(1, 4, 16, 16, generator=g), torch.randn(3, 4, 16, 16, generator=g)
    load_before = os.getloadavg()
    out = {}
    for _ in range(2):
        for name, taesd in decoders.items():
            r = out.setdefault(name, {})
            for key, fn in (("decode_b1_ms", lambda t=taesd: t.decode(z1).sample),
                            ("decode_b3_ms", lambda t=taesd: t.decode(z3).sample),
                            ("app_views_b3_ms", lambda t=taesd: TinyVaeDecoder(t)(z3))):
                r[key] = min(r.get(key, 1e9), time_call(fn, n))
    out["full VAE"] = {"decode_b1_ms": time_call(lambda: vae.decode(z1 / vae.config.scaling_factor).sample, n // 10, 10)}
    return out, {"load_avg_before": load_before, "load_avg_after": os.getloadavg(), "threads": threads}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/denoise-tiny")
    ap.add_argument("--taesd", action="append", default=None,
                    help="AutoencoderTiny folder(s); default models/denoise-tiny-taesd")
    ap.add_argument("--n-eval", type=int, default=64)
    ap.add_argument("--n-holdout", type=int, default=32,
                    help="extra prompts with held-out (shape, colour, background) combos, reported apart (0: none)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--out", default="runs/preview_eval.json")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the sampling runs and decodes")
    ap.add_argument("--speed-threads", type=int, default=2, help="torch threads for the timing")
    ap.add_argument("--speed-calls", type=int, default=2000)
    ap.add_argument("--no-speed", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)
    folders = a.taesd or ["models/denoise-tiny-taesd"]
    pipe = StableDiffusionPipeline.from_pretrained(a.model, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    vae = pipe.vae.eval()
    vae.to(memory_format=torch.channels_last)  # the same decode (to float rounding), about 2x faster on CPU
    taesds = {f: AutoencoderTiny.from_pretrained(f, use_safetensors=True).eval() for f in folders}
    linear = LinearDecoder.fit(vae)
    full = FullVaeDecoder(vae)
    decoders = {"linear": linear, **{f: TinyVaeDecoder(t) for f, t in taesds.items()}}

    clock = time.time()

    def run_set(prompts, seed0, tag):
        """Sample every prompt (seed seed0 + i) and score each decoder; returns (name -> metrics, grid rows)."""
        per_step = {name: {} for name in decoders}  # name -> view -> [S, N] PSNR
        last = {name: [] for name in decoders}
        grid_rows = []
        for i in range(0, len(prompts), a.batch):
            batch = prompts[i:i + a.batch]
            views, final = sample_runs(pipe, batch, [seed0 + j for j in range(i, i + len(batch))], STEPS, GUIDANCE)
            s = len(views)
            with torch.no_grad():
                ref_final = full(final)
                refs = [[full(views[t, v]) for v in range(3)] for t in range(s)]
            for name, dec in decoders.items():
                with torch.no_grad():
                    pics = [[dec(views[t, v]) for v in range(3)] for t in range(s)]
                for v, view in enumerate(VIEWS):
                    scores = np.stack([psnr_u8(pics[t][v], refs[t][v]) for t in range(s)])  # [S, B]
                    old = per_step[name].get(view)
                    per_step[name][view] = scores if old is None else np.concatenate([old, scores], 1)
                last[name].append(psnr_u8(pics[-1][1], ref_final))
                if i == 0:
                    grid_rows.append((name, [pics[t][1][:4] for t in (0, 6, 12, 18, s - 1)]))
            if i == 0:
                grid_rows.insert(0, ("full VAE", [refs[t][1][:4] for t in (0, 6, 12, 18, s - 1)]))
            print(f"{tag}: evaluated {i + len(batch)}/{len(prompts)} prompts ({time.time() - clock:.0f} s)", flush=True)
        out = {}
        for name in decoders:
            lasts = np.concatenate(last[name])
            r = {"last_x0_vs_final_db": float(lasts.mean()), "last_x0_vs_final_worst_prompt_db": float(lasts.min())}
            for view in VIEWS:
                by_step = per_step[name][view].mean(1)
                r[f"{view}_mean_db"] = float(by_step.mean())
                r[f"{view}_worst_step"] = int(by_step.argmin())
                r[f"{view}_worst_step_db"] = float(by_step.min())
                r[f"{view}_by_step_db"] = [round(float(x), 2) for x in by_step]
            out[name] = r
        return out, grid_rows

    # the bars: prompts of the training distribution (the caption generator) with a seed range of their own
    main_scores, grid_rows = run_set(eval_prompts(a.n_eval), EVAL_SEED, "held-out prompts")
    results = {"model": a.model, "n_prompts": a.n_eval, "steps": STEPS, "guidance": GUIDANCE,
               "scheduler": type(pipe.scheduler).__name__, "eval_seed": EVAL_SEED, "bars": BARS,
               "decoders": main_scores}
    if a.n_holdout:  # harder: prompts whose first shape is a (shape, colour, background) combo never trained on
        combo_scores, _ = run_set(eval_prompts(a.n_holdout, HOLDOUT_SEED, holdout=True), HOLDOUT_SEED,
                                  "held-out combos")
        results["holdout_combos"] = {"n_prompts": a.n_holdout, "eval_seed": HOLDOUT_SEED, "decoders": combo_scores}

    if not a.no_speed:
        timing, machine = speed(taesds, vae, a.speed_threads, a.speed_calls)
        torch.set_num_threads(a.speed_threads)
        z1, z3 = torch.randn(1, 4, 16, 16), torch.randn(3, 4, 16, 16)
        timing["linear"] = {"app_b1_ms": time_call(lambda: linear(z1), a.speed_calls),
                            "app_views_b3_ms": time_call(lambda: linear(z3), a.speed_calls)}
        torch.set_num_threads(a.threads)
        results["speed"] = {"machine": machine, **timing}
        for name, t in timing.items():
            if name in results["decoders"]:
                results["decoders"][name].update(t)

    first = folders[0]
    r = results["decoders"][first]
    results["pass"] = {"last_x0": r["last_x0_vs_final_db"] >= BARS["last_x0_db"],
                       "mid_x0": r["x0_mean_db"] >= BARS["mid_x0_db"]}
    if "decode_b1_ms" in r:
        results["pass"]["speed_target"] = r["decode_b1_ms"] <= BARS["ms_per_picture_target"]
        results["pass"]["speed_limit"] = r["decode_b1_ms"] <= BARS["ms_per_picture_limit"]
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(results, f, indent=2)

    # picture grid: per decoder, x̂0 previews of 4 prompts at steps 0, 6, 12, 18 and the last step
    rows = [np.concatenate([np.concatenate(list(p), 1) for p in pics], 1) for _, pics in grid_rows]
    Image.fromarray(np.concatenate(rows, 0)).resize((rows[0].shape[1] * 2, len(rows) * 128), Image.NEAREST).save(
        os.path.splitext(a.out)[0] + ".png")

    print(f"\n{a.n_eval} held-out prompts, {STEPS} steps, guidance {GUIDANCE}, {results['scheduler']}; "
          f"PSNR (dB) vs the full VAE decode of the same latents")
    head = f"{'decoder':44s} {'last x0 vs final':>16s} {'x0 mean':>8s} {'x0 worst (step)':>16s} {'x_t mean':>9s} {'eps mean':>9s} {'ms b1':>7s} {'ms b3':>7s}"
    print(head)
    for name, r in results["decoders"].items():
        print(f"{name:44s} {r['last_x0_vs_final_db']:16.2f} {r['x0_mean_db']:8.2f} "
              f"{r['x0_worst_step_db']:10.2f} ({r['x0_worst_step']:2d}) {r['x_t_mean_db']:9.2f} {r['eps_mean_db']:9.2f} "
              f"{r.get('decode_b1_ms', r.get('app_b1_ms', float('nan'))):7.3f} {r.get('decode_b3_ms', r.get('app_views_b3_ms', float('nan'))):7.3f}")
    if "holdout_combos" in results:
        print(f"{a.n_holdout} prompts with held-out (shape, colour, background) combos (not in any training data):")
        for name, r in results["holdout_combos"]["decoders"].items():
            print(f"{name:44s} {r['last_x0_vs_final_db']:16.2f} {r['x0_mean_db']:8.2f} "
                  f"{r['x0_worst_step_db']:10.2f} ({r['x0_worst_step']:2d}) {r['x_t_mean_db']:9.2f} {r['eps_mean_db']:9.2f}")
    if "speed" in results:
        print(f"speed: {a.speed_threads} threads, load average before {results['speed']['machine']['load_avg_before']}, "
              f"full VAE batch 1: {results['speed']['full VAE']['decode_b1_ms']:.2f} ms")
    print("bars:", results["pass"], "->", a.out)
    return results


if __name__ == "__main__":
    main()
