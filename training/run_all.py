"""Reproduce every shipped artefact from scratch, in order, resumably.

    python -m training.run_all [--device cuda] [--threads 2]

Each stage skips itself when finished and resumes from its latest checkpoint
under runs/ otherwise.  Stages, in the order the shipped files were made:

  1. VAE
  2. UNet + text encoder from scratch (3500 steps, lr 1e-3)      -> runs/unet/pipeline
  3. canny ControlNet on that base (400 steps)                    -> runs/controlnet/model
  4. UNet + text encoder continued (2500 steps, lr 5e-4)          -> runs/unet-b/pipeline
  5. ControlNet continued on that base (600 steps)                -> models/denoise-tiny-controlnet-canny
  6. UNet + text encoder continued again on 60k pictures
     (4000 steps, lr 4e-4)                                        -> models/denoise-tiny
  7. outline LoRA on the final base (1200 steps)                  -> models/loras
  8. evaluation of the shipped folders, docs/sample_grid.png, model cards

The phases follow the working sessions that made the shipped files (each continues the
last rather than starting over). The ControlNet was trained on the phase-4 base and is
used unchanged with the final one (evaluate.py measures it on the shipped base). On 2
CPU cores the whole replay takes about 4 hours (phase 6 alone: 66 min, 1.0 s/step);
every stage resumes from its checkpoints.
"""
import argparse

from training import evaluate, model_cards, sample_grid, train_controlnet, train_lora, train_unet, train_vae


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads; use 1 on a shared machine (2 threads thrash when the cores are busy)")
    ap.add_argument("--skip-eval", action="store_true")
    a = ap.parse_args(argv)
    common = ["--device", a.device, "--threads", str(a.threads)]
    vae = train_vae.main(["--out", "runs/vae"] + common)
    first = train_unet.main(["--out", "runs/unet", "--vae", vae, "--steps", "3500", "--lr", "1e-3",
                             "--pipeline-out", "runs/unet/pipeline"] + common)
    first_cn = train_controlnet.main(["--base", first, "--out", "runs/controlnet", "--steps", "400",
                                      "--controlnet-out", "runs/controlnet/model"] + common)
    second = train_unet.main(["--init", first, "--out", "runs/unet-b", "--vae", vae, "--steps", "2500",
                              "--lr", "5e-4", "--warmup", "100", "--pipeline-out", "runs/unet-b/pipeline"] + common)
    train_controlnet.main(["--init", first_cn, "--base", second, "--out", "runs/controlnet-b", "--steps", "600",
                           "--controlnet-out", "models/denoise-tiny-controlnet-canny"] + common)
    base = train_unet.main(["--init", second, "--out", "runs/unet-c", "--vae", vae, "--steps", "4000", "--lr", "4e-4",
                            "--warmup", "100", "--n-train", "60000", "--render-chunk", "4096",
                            "--pipeline-out", "models/denoise-tiny"] + common)
    train_lora.main(["--base", base, "--out", "runs/lora-c", "--lora-out", "models/loras"] + common)
    if not a.skip_eval:
        evaluate.main(["--models", "models", "--out", "runs/eval.json", "--threads", str(a.threads)])
        sample_grid.main(["--models", "models", "--out", "docs/sample_grid.png", "--threads", str(a.threads)])
        model_cards.main(["--eval", "runs/eval.json", "--models", "models"])


if __name__ == "__main__":
    main()
