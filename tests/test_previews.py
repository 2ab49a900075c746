import numpy as np
import torch

from pipelines.previews import FullVaeDecoder, LinearDecoder, LinearDecoderCache


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


def test_cache_fits_once_per_vae(tiny_model):
    cache = LinearDecoderCache()
    assert cache.get(tiny_model.pipe.vae) is cache.get(tiny_model.pipe.vae)
