"""Preview decoders: latents (as the UNet sees them) -> uint8 RGB arrays, H×W×3.

- `FullVaeDecoder`: the model's own VAE. Exact, costs about one VAE decode per picture.
- `LinearDecoder`: a 4×3 matrix + bias fitted by least squares on a few real VAE decodes of the
  loaded model (as InvokeAI does offline; here it is done on first use and cached per model), so
  it is right for whatever VAE is loaded. Costs well under a millisecond at 64×64.
- `TinyVaeDecoder`: TAESD (`AutoencoderTiny`) from a local folder or Hub id.
"""

from __future__ import annotations

import hashlib
import json
import threading

import numpy as np
import torch
import torch.nn.functional as F

PREVIEW_DECODERS = ("linear approximation", "full VAE", "TAESD")


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW float -> N×H×W×3 uint8."""
    images = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return images.permute(0, 2, 3, 1).cpu().numpy()


def _unscale(vae, latents: torch.Tensor) -> torch.Tensor:
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return latents / vae.config.scaling_factor + shift


class Decoder:
    """Turns latents into pictures; `views` decodes the step views given as linear mixes."""

    def __call__(self, latents: torch.Tensor) -> np.ndarray:
        raise NotImplementedError

    def views(self, model_output: torch.Tensor, sample: torch.Tensor,
              coefficients: dict[str, tuple[float, float]]) -> dict[str, np.ndarray]:
        """view name -> picture, for views = α·sample + β·model_output (see noise_math)."""
        x, out = sample.float(), model_output.float()
        latents = torch.cat([alpha * x + beta * out for alpha, beta in coefficients.values()])
        return dict(zip(coefficients, self(latents)))


class FullVaeDecoder(Decoder):
    name = "full VAE"

    def __init__(self, vae):
        self.vae = vae

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor) -> np.ndarray:
        latents = _unscale(self.vae, latents).to(self.vae.device, self.vae.dtype)
        return to_uint8(self.vae.decode(latents).sample)


class TinyVaeDecoder(Decoder):
    """TAESD decoder; `AutoencoderTiny` takes latents already scaled as the UNet sees them."""

    name = "TAESD"

    def __init__(self, taesd):
        self.taesd = taesd

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor) -> np.ndarray:
        return to_uint8(self.taesd.decode(latents.to(self.taesd.device, self.taesd.dtype)).sample)


class LinearDecoder(Decoder):
    """RGB = W·latent + b per latent pixel, then nearest upsampling to picture size."""

    name = "linear approximation"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, upscale: int):
        self.weight = weight.float()  # (C, 3)
        self.bias = bias.float()  # (3,)
        self.upscale = upscale
        self._weight_np, self._bias_np = self.weight.numpy(), self.bias.numpy()

    def views(self, model_output, sample, coefficients):
        """Fast path for every step: project sample and output once (the map is linear), mix the
        projections per view. A handful of small numpy operations, so the sampling thread is
        barely held up."""
        s = np.einsum("chw,cr->hwr", sample[0].float().cpu().numpy(), self._weight_np)
        o = np.einsum("chw,cr->hwr", model_output[0].float().cpu().numpy(), self._weight_np)
        pictures = {}
        for view, (alpha, beta) in coefficients.items():
            rgb = np.clip((alpha * s + beta * o + self._bias_np + 1) * 127.5, 0, 255).astype(np.uint8)
            pictures[view] = rgb.repeat(self.upscale, axis=0).repeat(self.upscale, axis=1)
        return pictures

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor) -> np.ndarray:
        rgb = torch.einsum("nchw,cr->nrhw", latents.float().cpu(), self.weight) + self.bias[None, :, None, None]
        rgb = F.interpolate(rgb, scale_factor=self.upscale, mode="nearest")
        return to_uint8(rgb)

    @classmethod
    @torch.no_grad()
    def fit(cls, vae, samples: int = 12, size: int = 128, seed: int = 0) -> "LinearDecoder":
        """Fit on real decodes of this VAE: encode random coloured pictures, decode them, and
        regress the decoded colours (averaged over each latent pixel's patch) on the latents."""
        g = torch.Generator("cpu").manual_seed(seed)
        scale = 2 ** (len(vae.config.block_out_channels) - 1)
        size = max(size // scale, 4) * scale
        pictures = _random_pictures(samples, size, g)
        device, dtype = vae.device, vae.dtype
        latents = vae.encode(pictures.to(device, dtype)).latent_dist.mean
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        scaled = (latents - shift) * vae.config.scaling_factor
        # Half the fit on noisy latents too: previews show x_t and ε as well as clean x0.
        noisy = scaled + torch.randn(scaled.shape, generator=g).to(device, dtype) * 0.7
        both = torch.cat([scaled, noisy])
        decoded = vae.decode(_unscale(vae, both)).sample.float().clamp(-1, 1).cpu()
        target = F.avg_pool2d(decoded, scale)  # (N, 3, h, w)
        x = both.float().cpu().permute(0, 2, 3, 1).reshape(-1, both.shape[1])
        y = target.permute(0, 2, 3, 1).reshape(-1, 3)
        x1 = torch.cat([x, torch.ones(len(x), 1)], dim=1)
        solution = torch.linalg.lstsq(x1, y).solution  # (C+1, 3)
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


class LinearDecoderCache:
    """One fitted `LinearDecoder` per VAE (keyed by its config and a weight fingerprint)."""

    def __init__(self):
        self._fitted: dict[str, LinearDecoder] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(vae) -> str:
        first = next(vae.parameters()).detach().float().flatten()[:64].cpu().numpy().tobytes()
        config = json.dumps(dict(vae.config), sort_keys=True, default=str).encode()
        return hashlib.sha1(config + first).hexdigest()

    def get(self, vae) -> LinearDecoder:
        key = self.key(vae)
        with self._lock:
            if key not in self._fitted:
                self._fitted[key] = LinearDecoder.fit(vae)
            return self._fitted[key]


LINEAR_DECODERS = LinearDecoderCache()
