"""x̂0 and ε̂ from one model output must be exact for every offered scheduler and prediction type."""

import pytest
import torch

from pipelines.noise_math import model_view, noise_level
from pipelines.schedulers import SCHEDULERS, make_scheduler
from pipelines.tiny import tiny_components

PREDICTION_TYPES = ["epsilon", "v_prediction", "sample"]


def base_config(prediction_type, zero_snr=True):
    """The tiny model's scheduler with another prediction type / schedule."""
    base = tiny_components()["scheduler"]
    return type(base).from_config(base.config, prediction_type=prediction_type, rescale_betas_zero_snr=zero_snr)


def oracle_alpha_bar(scheduler, t):
    """ᾱ the test derives on its own: from the scheduler's σ table when it has one."""
    if getattr(scheduler, "sigmas", None) is not None and hasattr(scheduler, "index_for_timestep"):
        sigma = float(scheduler.sigmas[scheduler.index_for_timestep(t)])
        return 1 / (1 + sigma**2)
    return float(scheduler.alphas_cumprod[int(t)])


@pytest.mark.parametrize("zero_snr", [True, False])
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_x0_and_eps_exact_on_known_x0_and_noise(name, prediction_type, zero_snr):
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    for index in (1, 4):
        scheduler = make_scheduler(name, base_config(prediction_type, zero_snr))
        scheduler.set_timesteps(10)
        t = scheduler.timesteps[index]
        sample = scheduler.add_noise(x0, noise, t.reshape(1))  # the scheduler's own convention
        a = torch.tensor(oracle_alpha_bar(scheduler, t))
        output = {"epsilon": noise, "sample": x0, "v_prediction": a.sqrt() * noise - (1 - a).sqrt() * x0}[prediction_type]
        level = noise_level(scheduler, t)
        x_t, x0_hat, eps_hat = model_view(output, sample, level, prediction_type)
        assert torch.allclose(x0_hat, x0, atol=2e-3), (name, index, (x0_hat - x0).abs().max())
        assert torch.allclose(x_t, a.sqrt() * x0 + (1 - a).sqrt() * noise, atol=2e-3)
        if level.alpha_bar < 0.999:  # ε is unobservable in an almost clean sample
            assert torch.allclose(eps_hat, noise, atol=2e-2), (name, index, (eps_hat - noise).abs().max())


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("name", ["DDIM", "DDPM", "Euler", "Euler a", "LMS", "Heun"])
def test_x0_matches_the_schedulers_own_pred_original_sample(name, prediction_type):
    """Schedulers that return pred_original_sample must agree with ours, step after step."""
    if (name, prediction_type) == ("Euler a", "sample"):
        pytest.skip("diffusers' Euler a does not implement sample prediction")
    g = torch.Generator().manual_seed(1)
    scheduler = make_scheduler(name, base_config(prediction_type))
    scheduler.set_timesteps(8)
    sample = torch.randn(1, 4, 8, 8, generator=g) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(sample, t)
        output = torch.randn(model_in.shape, generator=g)
        level = noise_level(scheduler, t)
        _, x0_hat, _ = model_view(output, sample, level, prediction_type)
        extra = {"generator": torch.Generator().manual_seed(2)} if name == "Euler a" else {}
        step = scheduler.step(output, t, sample, **extra)
        if step.pred_original_sample is not None and level.alpha_bar > 1e-6:
            assert torch.allclose(x0_hat, step.pred_original_sample, rtol=1e-3, atol=1e-3), (name, float(t))
        sample = step.prev_sample


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("steps", [25, 30])
def test_karras_on_zero_snr_with_repeated_timesteps_is_exact_step_after_step(prediction_type, steps):
    """DPM++ 2M Karras on a zero-terminal-SNR schedule starts [999, 999, 998, 998, …]: each step's σ
    must still be the schedule's own σ #i and x̂0 the solver's own data prediction."""
    g = torch.Generator().manual_seed(3)
    scheduler = make_scheduler("DPM++ 2M Karras", base_config(prediction_type))
    scheduler.set_timesteps(steps)
    assert int(scheduler.timesteps[0]) == int(scheduler.timesteps[1])  # the case this test is about
    sample = torch.randn(1, 4, 8, 8, generator=g) * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        output = torch.randn(sample.shape, generator=g)
        level = noise_level(scheduler, t)
        assert level.sigma == pytest.approx(float(scheduler.sigmas[i]), rel=1e-6), (i, float(t))
        _, x0_hat, _ = model_view(output, sample, level, prediction_type)
        own = scheduler.convert_model_output(output, sample=sample)  # DPM-Solver++'s x0 at this step
        scale = 1.0 if prediction_type != "epsilon" else max(1.0, level.sigma)  # ε: x̂0 = (x − σ·ε)/α
        assert torch.allclose(x0_hat, own, rtol=1e-3, atol=1e-4 * scale), (i, (x0_hat - own).abs().max())
        sample = scheduler.step(output, t, sample).prev_sample
    assert scheduler.step_index == steps and torch.isfinite(sample).all()
