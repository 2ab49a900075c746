"""Reproduce every shipped artefact from scratch, in order, resumably.

    python -m training.run_all [--device cuda] [--threads 2]

Each stage skips itself when finished and resumes from its latest checkpoint
under runs/ otherwise.  Stages: VAE -> UNet + text encoder (exports
models/denoise-tiny) -> canny ControlNet -> outline LoRA -> evaluation ->
docs/sample_grid.png.
"""
import argparse

from training import evaluate, sample_grid, train_controlnet, train_lora, train_unet, train_vae


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads; use 1 on a shared machine (2 threads thrash when the cores are busy)")
    ap.add_argument("--skip-eval", action="store_true")
    a = ap.parse_args(argv)
    common = ["--device", a.device, "--threads", str(a.threads)]
    vae = train_vae.main(["--out", "runs/vae"] + common)
    train_unet.main(["--out", "runs/unet", "--vae", vae, "--pipeline-out", "models/denoise-tiny"] + common)
    train_controlnet.main(["--base", "models/denoise-tiny", "--out", "runs/controlnet",
                           "--controlnet-out", "models/denoise-tiny-controlnet-canny"] + common)
    train_lora.main(["--base", "models/denoise-tiny", "--out", "runs/lora", "--lora-out", "models/loras"] + common)
    if not a.skip_eval:
        evaluate.main(["--models", "models", "--out", "runs/eval.json", "--threads", str(a.threads)])
        sample_grid.main(["--models", "models", "--out", "docs/sample_grid.png", "--threads", str(a.threads)])


if __name__ == "__main__":
    main()
