"""Tiny random-weight Stable Diffusion pipelines built from configs.

They exercise exactly the code paths of a real SD1.x model (tokenizer, CLIP text encoder, UNet
with cross-attention, AutoencoderKL, scheduler) in milliseconds. The tests use them for the
online path (Hub ids, local folders, other prediction types), and the app falls back to one,
clearly labelled, when the embedded model folder is missing.
"""

from __future__ import annotations

import string

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

STAND_IN_NAME = "random-weight stand-in (no embedded model found)"


def tiny_tokenizer(max_length: int = 32) -> CLIPTokenizer:
    """A real CLIP BPE tokenizer over single characters (every word spells out)."""
    specials = ["<|startoftext|>", "<|endoftext|>"]
    chars = [c for c in string.printable if not c.isspace()]
    vocab = {tok: i for i, tok in enumerate(specials + chars + [c + "</w>" for c in chars])}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def tiny_components(seed: int = 0, prediction_type: str = "v_prediction", in_channels: int = 4) -> dict:
    """Random-weight components of a 64×64-pixel, 16×16-latent SD-style model."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type=prediction_type,
        # zero terminal SNR only with v-prediction: an epsilon model cannot say anything at
        # alpha_bar = 0 (x0 = (x - eps) / 0), which is why SD1.x epsilon models never used it
        rescale_betas_zero_snr=prediction_type == "v_prediction",
        timestep_spacing="trailing",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return dict(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )


def tiny_pipeline(seed: int = 0, prediction_type: str = "v_prediction") -> StableDiffusionPipeline:
    """A ready `StableDiffusionPipeline` with random weights."""
    pipe = StableDiffusionPipeline(**tiny_components(seed, prediction_type))
    pipe.set_progress_bar_config(disable=True)
    return pipe
