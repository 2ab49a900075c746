"""What the model believes at a step: x̂0 and ε̂ from one model output, for any scheduler.

Every sampler in diffusers calls `scheduler.step(model_output, timestep, sample)` once per model
evaluation. From those three values and the scheduler's own noise schedule we recover, with no
extra UNet call:

    x_t  = √ᾱ · x0 + √(1−ᾱ) · ε        (the noisy latent the model saw)
    eps:     x̂0 = (x_t − √(1−ᾱ) ε̂) / √ᾱ
    v:       x̂0 = √ᾱ x_t − √(1−ᾱ) v̂,   ε̂ = √(1−ᾱ) x_t + √ᾱ v̂
    sample:  x̂0 = output,              ε̂ = (x_t − √ᾱ x̂0) / √(1−ᾱ)

Two conventions exist for `sample`: DDPM-style schedulers (DDIM, DDPM, PNDM, DPM-Solver, UniPC,
DEIS) hold x_t itself; k-diffusion-style ones (Euler, Heun, LMS, KDPM2) hold x = x0 + σε, which
they scale by 1/√(σ²+1) before the model sees it. Both carry the noise level as σ, with
ᾱ = 1/(σ²+1), when they keep a `sigmas` table; otherwise ᾱ is `alphas_cumprod[t]`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class NoiseLevel:
    alpha_bar: float  # ᾱ of the sample the model saw (1 = clean, 0 = pure noise)
    sigma: float  # σ = √((1−ᾱ)/ᾱ), the k-diffusion noise scale
    k_style: bool  # True when the scheduler's sample is x0 + σε rather than x_t

    @property
    def noise_left(self) -> float:
        """Fraction of the sample's variance that is still noise, 0…1."""
        return 1.0 - self.alpha_bar


def noise_level(scheduler, timestep) -> NoiseLevel:
    """Noise level of the sample passed to the scheduler's next `step` call.

    Must be called before `step` runs (the step index moves on inside it).
    """
    k_style = float(scheduler.init_noise_sigma) != 1.0
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and hasattr(scheduler, "_init_step_index"):
        if scheduler.step_index is None:
            scheduler._init_step_index(timestep)  # what `step` itself does first
        sigma = float(sigmas[scheduler.step_index])
        alpha_bar = 1.0 / (sigma * sigma + 1.0)
    else:
        t = int(round(float(timestep)))
        alpha_bar = float(scheduler.alphas_cumprod[t])
        sigma = ((1.0 - alpha_bar) / max(alpha_bar, 1e-12)) ** 0.5
    return NoiseLevel(alpha_bar=alpha_bar, sigma=sigma, k_style=k_style)


def view_coefficients(level: NoiseLevel, prediction_type: str) -> dict[str, tuple[float, float]]:
    """x_t, x̂0 and ε̂ are each a linear mix α·sample + β·model_output; returns view -> (α, β).

    Args:
        level: `noise_level(scheduler, timestep)` taken just before the step.
        prediction_type: the scheduler config's "epsilon", "v_prediction" or "sample".
    """
    a = level.alpha_bar
    sqrt_a, sqrt_1ma = a**0.5, (1 - a) ** 0.5
    c = sqrt_a if level.k_style else 1.0  # k-style samples are scaled by c_in = 1/√(σ²+1) = √ᾱ
    if prediction_type == "epsilon":
        x0, eps = (c / max(sqrt_a, 1e-6), -sqrt_1ma / max(sqrt_a, 1e-6)), (0.0, 1.0)
    elif prediction_type == "v_prediction":
        x0, eps = (sqrt_a * c, -sqrt_1ma), (sqrt_1ma * c, sqrt_a)
    elif prediction_type == "sample":
        x0, eps = (0.0, 1.0), (c / max(sqrt_1ma, 1e-6), -sqrt_a / max(sqrt_1ma, 1e-6))
    else:
        raise ValueError(f"Unsupported prediction_type {prediction_type!r}")
    return {"x_t": (c, 0.0), "x0": x0, "eps": eps}


def model_view(model_output: torch.Tensor, sample: torch.Tensor, level: NoiseLevel, prediction_type: str):
    """Return (x_t, x̂0, ε̂) in the model's latent space from one scheduler step's inputs.

    Args:
        model_output: what the (guided) UNet returned for this step.
        sample: the scheduler's `sample` argument (x_t, or x0 + σε for k-style schedulers).
        level: `noise_level(scheduler, timestep)` taken just before the step.
        prediction_type: the scheduler config's "epsilon", "v_prediction" or "sample".
    """
    out, x = model_output.float(), sample.float()
    coefficients = view_coefficients(level, prediction_type)
    return tuple(alpha * x + beta * out for alpha, beta in (coefficients[v] for v in ("x_t", "x0", "eps")))
