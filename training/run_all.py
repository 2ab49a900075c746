"""Reproduce every shipped artefact from scratch, in order, resumably.

    python -m training.run_all [--device cuda] [--threads 2]

Each stage skips itself when finished and resumes from its latest checkpoint
under runs/ otherwise.  Stages, in the order the shipped files were made:

  1. VAE, then its decoder fine-tuned on shape edges with the encoder frozen (made last, after
     phase 9; the latents are bit-identical either way, so every later stage is unchanged)
  2. UNet + text encoder from scratch (3500 steps, lr 1e-3)      -> runs/unet/pipeline
  3. canny ControlNet on that base (400 steps)                    -> runs/controlnet/model
  4. UNet + text encoder continued (2500 steps, lr 5e-4)          -> runs/unet-b/pipeline
  5. ControlNet continued on that base (600 steps)                -> models/denoise-tiny-controlnet-canny
  6. UNet + text encoder continued again on 60k pictures
     (4000 steps, lr 4e-4)                                        -> runs/unet-c/pipeline
  7. layout words: 400 steps on captions that mostly carry position and size words,
     the text encoder at 3x the UNet's LR, half of each batch at t >= 500   -> runs/unet-d/pipeline
  8. the same recipe on 40k pictures, 30 % high-noise, 5500 steps
     (made in two sittings: 4250 steps, then the last 1250)      -> runs/unet-e/pipeline
  9. small shapes: 3000 steps at 2e-4 with shape cells weighted 4x in the loss
     (--fg-weight 4), same data and layout knobs                 -> runs/unet-f/pipeline
     (3000 more steps of the same scored worse on held-out kinds, 79 % vs 89 %: not shipped)
 10. size words: 2000 steps at 2e-4 on 20k pictures, 90 % of the shapes with a size word
                                                                  -> runs/unet-i/pipeline
     and the ControlNet continued on that base (400 steps, 3e-4) -> runs/controlnet-i/model
 11. two shapes: 2500 steps at 2e-4 on 20k pictures, 70 % of them with two shapes
     (kind was right for 96-98 % of lone shapes but 76-79 % in two-shape prompts)
                                                                  -> runs/unet-j/pipeline
     and the ControlNet continued on it with 70 % two-shape pictures: 600 steps at 3e-4, then
     1500 at 5e-4                                                -> models/denoise-tiny-controlnet-canny
 12. outline LoRA on that base (1200 steps)                      -> models/loras
 13. 1500 more steps of phase 11's recipe on 40k pictures          -> models/denoise-tiny
     (the ControlNet and the LoRA of phase 11 keep working on it: edge IoU 0.71, outline at w 1)
 14. the preview decoder: a tiny AutoencoderTiny (TAESD format) decoder distilled from the shipped
     VAE on what the shipped pipeline's step previews show (15000 + 4000 steps) -> models/denoise-tiny-taesd
 15. evaluation of the shipped folders, docs/sample_grid.png, model cards, preview decoders

The phases follow the working sessions that made the shipped files (each continues the
last rather than starting over). On 2 CPU cores the whole replay takes about 9.1 hours
(decoder fine-tune 17 min; phase 6 alone: 66 min, 1.0 s/step; phase 8: about 90 min,
phase 9: about 47 min, phase 10: 31 min, phase 11: 42 min, its ControlNet 30 min, the last UNet phase 25 min);
every stage resumes from its checkpoints.
"""
import argparse

from training import (evaluate, evaluate_previews, finetune_decoder, model_cards, sample_grid, train_controlnet,
                      train_lora, train_preview_decoder, train_unet, train_vae)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads; use 1 on a shared machine (2 threads thrash when the cores are busy)")
    ap.add_argument("--skip-eval", action="store_true")
    a = ap.parse_args(argv)
    common = ["--device", a.device, "--threads", str(a.threads)]
    vae = train_vae.main(["--out", "runs/vae"] + common)
    vae = finetune_decoder.main(["--vae", vae, "--out", "runs/vae-dec"] + common)
    first = train_unet.main(["--out", "runs/unet", "--vae", vae, "--steps", "3500", "--lr", "1e-3",
                             "--pipeline-out", "runs/unet/pipeline"] + common)
    first_cn = train_controlnet.main(["--base", first, "--out", "runs/controlnet", "--steps", "400",
                                      "--controlnet-out", "runs/controlnet/model"] + common)
    second = train_unet.main(["--init", first, "--out", "runs/unet-b", "--vae", vae, "--steps", "2500",
                              "--lr", "5e-4", "--warmup", "100", "--pipeline-out", "runs/unet-b/pipeline"] + common)
    second_cn = train_controlnet.main(["--init", first_cn, "--base", second, "--out", "runs/controlnet-b",
                                       "--steps", "600", "--controlnet-out", "runs/controlnet-b/model"] + common)
    third = train_unet.main(["--init", second, "--out", "runs/unet-c", "--vae", vae, "--steps", "4000", "--lr", "4e-4",
                             "--warmup", "100", "--n-train", "60000", "--render-chunk", "4096",
                             "--pipeline-out", "runs/unet-c/pipeline"] + common)
    # position words were ignored until here (text encoder and UNet each waited for the other)
    layout = ["--p-pos", "0.8", "--p-size", "0.7", "--te-lr-mult", "3", "--render-chunk", "4096", "--lr", "4e-4"]
    fourth = train_unet.main(["--init", third, "--out", "runs/unet-d", "--vae", vae, "--steps", "400", "--warmup", "50",
                              "--n-train", "20000", "--t-high-frac", "0.5", "--pipeline-out", "runs/unet-d/pipeline"]
                             + layout + common)
    fifth = train_unet.main(["--init", fourth, "--out", "runs/unet-e", "--vae", vae, "--steps", "5500", "--warmup", "100",
                             "--n-train", "40000", "--t-high-frac", "0.3", "--pipeline-out", "runs/unet-e/pipeline"]
                            + layout + common)
    # small squares and stars still came out as blobs: weigh the cells the shapes cover
    small = layout + ["--lr", "2e-4", "--fg-weight", "4", "--t-high-frac", "0.3", "--warmup", "50"]
    sixth = train_unet.main(["--init", fifth, "--out", "runs/unet-f", "--vae", vae, "--steps", "3000",
                             "--n-train", "40000", "--pipeline-out", "runs/unet-f/pipeline"] + small + common)
    # size words on 90 % of the shapes; the ControlNet, trained on the phase-4 base, follows the new base
    seventh = train_unet.main(["--init", sixth, "--out", "runs/unet-i", "--vae", vae, "--steps", "2000",
                               "--n-train", "20000", "--pipeline-out", "runs/unet-i/pipeline"]
                              + small + ["--p-size", "0.9"] + common)
    third_cn = train_controlnet.main(["--init", second_cn, "--base", seventh, "--out", "runs/controlnet-i",
                                      "--steps", "400", "--lr", "3e-4", "--controlnet-out", "runs/controlnet-i/model"]
                                     + common)
    # lone shapes were drawn right, but two-shape prompts bound the wrong kind to a shape
    eighth = train_unet.main(["--init", seventh, "--out", "runs/unet-j", "--vae", vae, "--steps", "2500",
                              "--n-train", "20000", "--pipeline-out", "runs/unet-j/pipeline"]
                             + small + ["--p-two", "0.7"] + common)
    fourth_cn = train_controlnet.main(["--init", third_cn, "--base", eighth, "--out", "runs/controlnet-j", "--steps", "600",
                                       "--lr", "3e-4", "--p-two", "0.7", "--controlnet-out", "runs/controlnet-j/model"]
                                      + common)
    train_controlnet.main(["--init", fourth_cn, "--base", eighth, "--out", "runs/controlnet-k", "--steps", "1500",
                           "--lr", "5e-4", "--p-two", "0.7", "--controlnet-out", "models/denoise-tiny-controlnet-canny"]
                          + common)
    train_lora.main(["--base", eighth, "--out", "runs/lora-j", "--lora-out", "models/loras"] + common)
    # more of the same, on twice the pictures: held-out kind 93.5 -> 95.6 % (evaluate.py, 768 prompts)
    train_unet.main(["--init", eighth, "--out", "runs/unet-k", "--vae", vae, "--steps", "1500",
                     "--n-train", "40000", "--pipeline-out", "models/denoise-tiny"]
                    + small + ["--p-two", "0.7"] + common)
    # the step previews' decoder, distilled from the shipped VAE on the shipped pipeline's own step guesses
    # (15000 steps, then 4000 more in plain MSE with the last steps' guesses and clean latents drawn more often)
    preview = ["--model", "models/denoise-tiny", "--out", "runs/preview_decoder", "--taesd-out", "models/denoise-tiny-taesd"]
    train_preview_decoder.main(preview + ["--steps", "15000", "--no-export"] + common)
    train_preview_decoder.main(preview + ["--steps", "19000", "--lr", "1e-3", "--l1-weight", "0", "--late-x0", "3",
                                          "--mix", "clean=0.35,noised=0.02,x_t=0.015,x0=0.6,eps=0.015"] + common)
    if not a.skip_eval:
        evaluate.main(["--models", "models", "--out", "runs/eval.json", "--threads", str(a.threads)])
        sample_grid.main(["--models", "models", "--out", "docs/sample_grid.png", "--threads", str(a.threads)])
        model_cards.main(["--eval", "runs/eval.json", "--models", "models"])
        evaluate_previews.main(["--model", "models/denoise-tiny", "--taesd", "models/denoise-tiny-taesd",
                                "--out", "runs/preview_eval.json", "--threads", str(a.threads)])


if __name__ == "__main__":
    main()
