"""Inpainting on the loaded model: repaint the masked part of a picture, keep the rest.

The inpainting pipeline is derived from the loaded model with `from_pipe` (no weights copied).
A regular 4-channel UNet works too: diffusers' inpaint pipeline then blends the known latents
back at every step; 9-channel inpainting UNets get the mask and masked picture as input. Either
way the result is pasted back onto the original outside the (feathered) mask, so unmasked pixels
stay exactly as they were.
"""

from __future__ import annotations

import threading
from typing import Callable, Iterator

from diffusers import AutoPipelineForInpainting
from PIL import Image, ImageFilter

from pipelines.generation import GenerationError, GenerationRequest, GenerationResult, StepEvent, stream
from pipelines.inputs import prepare_mask, prepare_picture, to_rgb


def inpaint_stream(model, request: GenerationRequest, image, mask, strength: float = 1.0, mask_blur: int = 2,
                   cancel: threading.Event | None = None,
                   live_view: Callable[[], str] | None = None) -> Iterator[StepEvent | GenerationResult]:
    """Stream an inpainting run (same events and result as text-to-image).

    Args:
        image: the picture to repaint (any mode and size; resized to the model's size class).
        mask: white where to repaint; RGBA strokes count where opaque. Must not be empty.
        strength: 1 repaints the masked part from pure noise; lower keeps more of what is there.
        mask_blur: feathering radius in pixels for the edge between repainted and kept parts.
    """
    # the types diffusers and PIL want, whatever the caller sent (int 1, numpy numbers, 2.0 from a slider)
    try:
        strength_value, blur = float(strength), float(mask_blur)
    except (TypeError, ValueError):
        raise GenerationError(f"Strength and mask blur must be numbers; got {strength!r} and {mask_blur!r}.") from None
    if not 0 < strength_value <= 1:  # also refuses NaN
        raise GenerationError(f"Strength must be above 0 and at most 1; got {strength}.")
    if not 0 <= blur <= 64:  # also refuses NaN
        raise GenerationError(f"Mask blur must be between 0 and 64 pixels; got {mask_blur}.")
    strength, mask_blur = strength_value, int(round(blur))
    original, rgb_notes = to_rgb(image)
    picture, notes = prepare_picture(original, model, target_side=max(request.width, request.height) or None)
    notes = rgb_notes + notes
    mask, mask_notes = prepare_mask(mask, original.size, picture.size)
    feathered = mask.filter(ImageFilter.GaussianBlur(mask_blur)) if mask_blur else mask
    request.width, request.height = picture.size
    settings = dict(task="inpaint", strength=strength, mask_blur=mask_blur)
    for item in stream(model, AutoPipelineForInpainting, request, cancel,
                       extra_call_args=dict(image=picture, mask_image=feathered, strength=strength),
                       extra_settings=settings, live_view=live_view):
        if isinstance(item, GenerationResult):
            item.image = Image.composite(item.image.convert("RGB"), picture, feathered)
            item.notes = notes + mask_notes + item.notes
        yield item
