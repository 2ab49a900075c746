import numpy as np
import torch

from pipelines.previews import FullVaeDecoder, LinearDecoder


def test_linear_decoder_fits_the_loaded_vae(tiny_model):
    vae = tiny_model.pipe.vae
    linear = LinearDecoder.fit(vae)
    g = torch.Generator().manual_seed(3)
    pictures = torch.rand(4, 3, 64, 64, generator=g) * 2 - 1
    latents = vae.encode(pictures).latent_dist.mean * vae.config.scaling_factor
    approx, exact = linear(latents).astype(float), FullVaeDecoder(vae)(latents).astype(float)
    assert approx.shape == exact.shape == (4, 64, 64, 3)
    mean_colour_error = np.abs(approx.mean(axis=(1, 2)) - exact.mean(axis=(1, 2))).mean()
    baseline = np.abs(exact.mean(axis=(1, 2)) - exact.mean()).mean()  # always predicting grey
    assert mean_colour_error < baseline


def test_linear_decoder_round_trips_through_json(tiny_model):
    linear = LinearDecoder.fit(tiny_model.pipe.vae)
    again = LinearDecoder.from_json(linear.to_json())
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    assert np.array_equal(linear(latents), again(latents))


def test_linear_decoder_is_linear_in_the_views(tiny_model):
    """Decoding α·x + β·out equals mixing the decoded projections: previews of every view are exact
    linear mixes, so any view can be decoded later from the two stored tensors."""
    from pipelines.noise_math import NoiseLevel, model_view, view_coefficients

    linear = LinearDecoder.fit(tiny_model.pipe.vae)
    g = torch.Generator().manual_seed(5)
    out, sample = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 4, 16, 16, generator=g) * 3
    for k_style in (False, True):
        level = NoiseLevel(alpha_bar=0.3, sigma=(0.7 / 0.3) ** 0.5, k_style=k_style)
        for prediction_type in ("epsilon", "v_prediction", "sample"):
            coefficients = view_coefficients(level, prediction_type)
            mixed = torch.cat([a * sample + b * out for a, b in coefficients.values()])
            expected = torch.cat(model_view(out, sample, level, prediction_type))
            assert np.abs(linear(mixed).astype(int) - linear(expected).astype(int)).max() <= 1
