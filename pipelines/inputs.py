"""Pictures from users made fit for a model: any mode to RGB, any size to one the model accepts.

Every change is reported as a note for the user; impossible inputs raise `GenerationError`.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from pipelines.generation import MAX_SIDE, GenerationError

MAX_INPUT_PIXELS = 4096 * 4096


def to_rgb(image, what: str = "picture") -> tuple[Image.Image, list[str]]:
    """RGBA (composited on white), greyscale, palette, CMYK, 16-bit… -> RGB; numpy arrays too."""
    if image is None:
        raise GenerationError(f"No {what} was given: upload one or send the last result here.")
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image.astype(np.uint8) if image.dtype != np.uint8 else image)
    if not isinstance(image, Image.Image):
        raise GenerationError(f"The {what} is not a picture.")
    if image.width * image.height > MAX_INPUT_PIXELS:
        raise GenerationError(f"The {what} is {image.width}×{image.height}; at most {MAX_INPUT_PIXELS:,} pixels.")
    image = ImageOps.exif_transpose(image)
    notes = []
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        if image.getchannel("A").getextrema()[0] < 255:
            notes.append(f"the {what}'s transparent parts were put on white")
        white = Image.new("RGBA", image.size, "white")
        image = Image.alpha_composite(white, image.convert("RGBA"))
    if image.mode != "RGB":
        if image.mode in ("L", "I", "I;16", "F", "1"):
            notes.append(f"the {what} is greyscale; it was converted to RGB")
        image = image.convert("RGB")
    return image, notes


def fit_size(width: int, height: int, multiple: int, target_side: int) -> tuple[int, int]:
    """Keep the aspect ratio, scale so the longer side is `target_side`, round to `multiple`."""
    scale = target_side / max(width, height)
    w = max(multiple, round(width * scale / multiple) * multiple)
    h = max(multiple, round(height * scale / multiple) * multiple)
    return min(w, MAX_SIDE), min(h, MAX_SIDE)


def prepare_picture(image, model, target_side: int | None = None, what: str = "picture"):
    """RGB picture resized (aspect kept) to the model's native size class, with notes."""
    image, notes = to_rgb(image, what)
    size = fit_size(image.width, image.height, model.size_multiple, target_side or model.default_size)
    if size != image.size:
        notes.append(f"the {what} was resized from {image.width}×{image.height} to {size[0]}×{size[1]} "
                     f"(aspect kept, multiples of {model.size_multiple})")
        image = image.resize(size, Image.LANCZOS)
    return image, notes


def prepare_mask(mask, picture_size: tuple[int, int], size: tuple[int, int]) -> tuple[Image.Image, list[str]]:
    """A white-means-repaint mask ("L") of exactly `size` (the picture as prepared for the model).

    `picture_size` is the picture's size as the user gave it: a mask of another shape is refused,
    one of the same shape but another resolution is rescaled (and the user told). An empty mask
    is refused.
    """
    if mask is None:
        raise GenerationError("No mask was given: paint over the part of the picture to repaint.")
    if isinstance(mask, np.ndarray):
        mask = Image.fromarray(mask.astype(np.uint8))
    notes = []
    if mask.mode in ("RGBA", "LA"):
        mask = mask.getchannel("A")  # painted strokes: opaque where painted
    mask = mask.convert("L")
    if mask.size != picture_size:
        ratio_mask, ratio_picture = mask.width / mask.height, picture_size[0] / picture_size[1]
        if abs(ratio_mask - ratio_picture) > 0.02 * ratio_picture:
            raise GenerationError(f"The mask is {mask.width}×{mask.height} but the picture is "
                                  f"{picture_size[0]}×{picture_size[1]}: their shapes differ, so the mask "
                                  "cannot be matched to the picture.")
        notes.append(f"the mask ({mask.width}×{mask.height}) was scaled to the picture")
    if mask.size != size:
        mask = mask.resize(size, Image.BILINEAR)
    mask = mask.point(lambda v: 255 if v >= 128 else 0)
    if mask.getextrema()[1] == 0:
        raise GenerationError("The mask is empty: paint over the part of the picture to repaint.")
    return mask, notes
