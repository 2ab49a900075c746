"""Preview decoders: latents (as the UNet sees them) -> uint8 RGB arrays, N×H×W×3.

- `TinyVaeDecoder`: TAESD (`AutoencoderTiny`). The embedded model ships its own, distilled from its
  VAE (`models/denoise-tiny-taesd`); for other models the operator may give one (`--taesd`). It is
  the default whenever one is loaded: near the full VAE's pictures at a fraction of its cost.
- `LinearDecoder`: a C×3 matrix + bias, fitted by least squares on the loaded model's own VAE
  decodes of what previews show (x̂0 guesses of a few short runs, plus encoded pictures, clean and
  noisy), as InvokeAI does offline; cached on disk per model. Costs well under a millisecond.
- `FullVaeDecoder`: the model's own VAE. Exact, costs one VAE decode per picture.

Only decoders that are loaded are offered (`decoder_names`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

TAESD = "TAESD"
LINEAR = "linear approximation"
FULL_VAE = "full VAE"
AUTO = "auto"  # the model's best loaded decoder


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW float -> N×H×W×3 uint8."""
    images = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return images.permute(0, 2, 3, 1).cpu().numpy()


def unscale(vae, latents: torch.Tensor) -> torch.Tensor:
    """Latents as the UNet sees them -> the VAE's own latent space."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return latents / vae.config.scaling_factor + shift


class FullVaeDecoder:
    name = FULL_VAE

    def __init__(self, vae):
        self.vae = vae

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor) -> np.ndarray:
        latents = unscale(self.vae, latents).to(self.vae.device, self.vae.dtype)
        return to_uint8(self.vae.decode(latents).sample)


class TinyVaeDecoder:
    """TAESD decoder; `AutoencoderTiny` takes latents already scaled as the UNet sees them."""

    name = TAESD

    def __init__(self, taesd):
        self.taesd = taesd

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor) -> np.ndarray:
        return to_uint8(self.taesd.decode(latents.to(self.taesd.device, self.taesd.dtype)).sample)


class LinearDecoder:
    """RGB = W·latent + b per latent pixel, then nearest upsampling to picture size."""

    name = LINEAR

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, upscale: int):
        self.weight = weight.float()  # (C, 3)
        self.bias = bias.float()  # (3,)
        self.upscale = upscale
        self._weight_np, self._bias_np = self.weight.numpy(), self.bias.numpy()

    def __call__(self, latents: torch.Tensor) -> np.ndarray:
        # numpy: a few small operations, so the sampling thread is barely held up
        rgb = np.einsum("nchw,cr->nhwr", latents.detach().float().cpu().numpy(), self._weight_np) + self._bias_np
        rgb = np.clip((rgb + 1) * 127.5, 0, 255).round().astype(np.uint8)
        return rgb.repeat(self.upscale, axis=1).repeat(self.upscale, axis=2)

    def to_json(self) -> str:
        return json.dumps({"weight": self.weight.tolist(), "bias": self.bias.tolist(), "upscale": self.upscale})

    @classmethod
    def from_json(cls, text: str) -> "LinearDecoder":
        data = json.loads(text)
        return cls(torch.tensor(data["weight"]), torch.tensor(data["bias"]), int(data["upscale"]))

    @classmethod
    @torch.no_grad()
    def fit(cls, vae, guesses: torch.Tensor | None = None, samples: int = 12, size: int = 128,
            seed: int = 0) -> "LinearDecoder":
        """Least squares on this VAE's decodes (averaged over each latent pixel's patch).

        Args:
            guesses: latents that previews really show (x̂0 of a few short runs), N×C×h×w as the
                UNet sees them; fitted with equal weight to the encoded pictures.
            samples: random coloured pictures encoded, used clean and with noise added (x_t, ε̂).
        """
        g = torch.Generator("cpu").manual_seed(seed)
        scale = 2 ** (len(vae.config.block_out_channels) - 1)
        size = max(size // scale, 4) * scale
        pictures = _random_pictures(samples, size, g)
        device, dtype = vae.device, vae.dtype
        latents = vae.encode(pictures.to(device, dtype)).latent_dist.mean
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        scaled = ((latents - shift) * vae.config.scaling_factor).float().cpu()
        noisy = scaled + torch.randn(scaled.shape, generator=g) * 0.7
        xs, ys = [], []
        for batch in (scaled, noisy, guesses):
            if batch is None or len(batch) == 0:
                continue
            batch = batch.float().cpu()
            decoded = vae.decode(unscale(vae, batch).to(device, dtype)).sample.float().clamp(-1, 1).cpu()
            target = F.avg_pool2d(decoded, scale)  # (N, 3, h, w)
            x = batch.permute(0, 2, 3, 1).reshape(-1, batch.shape[1])
            y = target.permute(0, 2, 3, 1).reshape(-1, 3)
            weight = (1.0 / len(x)) ** 0.5  # every source counts the same, whatever its size
            xs.append(torch.cat([x, torch.ones(len(x), 1)], dim=1) * weight)
            ys.append(y * weight)
        solution = torch.linalg.lstsq(torch.cat(xs), torch.cat(ys)).solution  # (C+1, 3)
        return cls(solution[:-1], solution[-1], scale)


def _random_pictures(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """Flat colours, gradients and blobs in [-1, 1]: enough colour variety to fit a linear map."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    out = []
    for _ in range(n):
        c0, c1, c2 = (torch.rand(3, 1, 1, generator=g) * 2 - 1 for _ in range(3))
        angle = torch.rand(1, generator=g) * 6.283
        ramp = (torch.cos(angle) * xx + torch.sin(angle) * yy + 1) / 2
        img = c0 * (1 - ramp) + c1 * ramp
        cx, cy, r = (torch.rand(3, generator=g) * torch.tensor([1.2, 1.2, 0.5]) + torch.tensor([-0.6, -0.6, 0.2])).tolist()
        blob = (((xx - cx) ** 2 + (yy - cy) ** 2) < r * r).float()
        out.append(img * (1 - blob) + c2 * blob)
    return torch.stack(out)


def cache_dir() -> Path:
    """Where fitted preview maps are kept between runs (DENOISE_CACHE, default ~/.cache/denoise-studio)."""
    return Path(os.environ.get("DENOISE_CACHE") or Path.home() / ".cache" / "denoise-studio")


def vae_fingerprint(vae) -> str:
    """Identifies a VAE by its config and a sample of its weights; computed once per loaded model."""
    first = next(vae.parameters()).detach().float().flatten()[:256].cpu().numpy().tobytes()
    config = json.dumps(dict(vae.config), sort_keys=True, default=str).encode()
    return hashlib.sha1(config + first).hexdigest()[:16]


def load_linear(fingerprint: str) -> LinearDecoder | None:
    path = cache_dir() / f"linear-preview-{fingerprint}.json"
    try:
        return LinearDecoder.from_json(path.read_text())
    except (OSError, ValueError, KeyError):
        return None


def save_linear(fingerprint: str, decoder: LinearDecoder) -> None:
    try:
        folder = cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"linear-preview-{fingerprint}.json").write_text(decoder.to_json())
    except OSError:  # a read-only home: the map is simply fitted again next start
        pass
