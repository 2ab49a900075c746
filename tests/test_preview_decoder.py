"""The shipped preview decoder (models/denoise-tiny-taesd, TAESD format, distilled from the embedded
model's VAE decoder) and its training stage (training/train_preview_decoder.py)."""
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "denoise-tiny"
TAESD = ROOT / "models" / "denoise-tiny-taesd"
torch.set_num_threads(1)

pytestmark = pytest.mark.skipif(not (MODEL / "model_index.json").is_file() or not (TAESD / "config.json").is_file(),
                                reason="shipped models not present")


def psnr(a, b):
    from training.common import psnr as mean_psnr
    return mean_psnr(a, b)


@pytest.fixture(scope="module")
def pipe():
    from diffusers import StableDiffusionPipeline
    p = StableDiffusionPipeline.from_pretrained(str(MODEL), safety_checker=None, requires_safety_checker=False)
    p.set_progress_bar_config(disable=True)
    return p


def test_shipped_folder_is_safetensors_only_and_loads():
    from diffusers import AutoencoderTiny
    names = {p.name for p in TAESD.iterdir()}
    assert {"config.json", "diffusion_pytorch_model.safetensors", "README.md"} <= names
    assert not any(n.endswith((".bin", ".pt", ".ckpt")) for n in names)
    taesd = AutoencoderTiny.from_pretrained(str(TAESD), use_safetensors=True).eval()
    with torch.no_grad():
        out = taesd.decode(torch.randn(2, 4, 16, 16)).sample
    assert out.shape == (2, 3, 64, 64) and torch.isfinite(out).all()


def test_shipped_decoder_is_close_to_the_full_vae_on_a_real_run(pipe):
    """x̂0 guesses of a short real run, and its final latents, as the app decodes them."""
    from diffusers import AutoencoderTiny

    from training.train_preview_decoder import make_taesd, sample_runs
    prompts = ["a small red star on the left on a white background",
               "a blue circle and a yellow square on a green background"]
    views, final = sample_runs(pipe, prompts, [7, 8], steps=8, guidance=5.0)
    assert views.shape == (8, 3, 2, 4, 16, 16)
    latents = torch.cat([views[2, 1], views[5, 1], views[7, 1], final])  # x̂0 early, mid, last; final latents
    vae = pipe.vae
    taesd = AutoencoderTiny.from_pretrained(str(TAESD), use_safetensors=True).eval()
    with torch.no_grad():
        ref = vae.decode(latents / vae.config.scaling_factor).sample.clamp(-1, 1)
        ours = taesd.decode(latents).sample.clamp(-1, 1)
        untrained = make_taesd(**_arch(taesd)).eval().decode(latents).sample.clamp(-1, 1)
    assert psnr(ours, ref) >= 25
    assert psnr(ours[-2:], ref[-2:]) >= 25  # the final picture itself
    assert psnr(untrained, ref) < 20  # the bar means something: random weights of the same shape miss it


def _arch(taesd):
    c = taesd.config
    return {"channels": c.decoder_block_out_channels[0], "blocks": tuple(c.num_decoder_blocks),
            "upscale": c.upsampling_scaling_factor, "upsample_fn": c.upsample_fn}


def test_tiny_training_run_exports_a_loadable_folder(tmp_path):
    from diffusers import AutoencoderTiny

    from training import train_preview_decoder
    args = ["--out", str(tmp_path / "run"), "--taesd-out", str(tmp_path / "taesd"), "--model", str(MODEL),
            "--n-clean", "6", "--n-noisy", "2", "--n-runs", "2", "--run-batch", "2", "--run-steps", "3",
            "--keep-other", "1", "--n-val-runs", "1", "--val-steps", "3", "--steps", "3", "--batch", "4",
            "--channels", "8", "--blocks", "1,0", "--eval-every", "2"]
    out = train_preview_decoder.main(args)
    taesd = AutoencoderTiny.from_pretrained(out, use_safetensors=True)
    assert taesd.config.decoder_block_out_channels == [8, 8] and list(taesd.config.num_decoder_blocks) == [1, 0]
    assert not any(p.suffix == ".bin" for p in Path(out).iterdir())
    data = torch.load(next((tmp_path / "run").glob("data_*.pt")), weights_only=True)
    assert len(data["latents"]) == len(data["targets"]) == 6 + 2 + 2 * 3 * 3  # clean, noised, 3 views x 3 steps x 2
    assert data["targets"].dtype == torch.uint8 and data["targets"].shape[1:] == (3, 64, 64)
    ck = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)
    assert ck["step"] == 3 and ck["arch"]["channels"] == 8
    # finished: a rerun skips training and the data, and keeps the exported folder
    (tmp_path / "run" / next((tmp_path / "run").glob("data_*.pt")).name).unlink()
    assert train_preview_decoder.main(args) == out
    assert not list((tmp_path / "run").glob("data_*.pt"))
