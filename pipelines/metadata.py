"""Settings recorded inside result PNGs.

Two text chunks: `parameters` in AUTOMATIC1111's "infotext" format (read by A1111's PNG Info,
civitai and others) and `denoise_studio` with the exact settings as JSON (read back by this app).
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo


def infotext(settings: dict) -> str:
    """A1111 format: prompt, 'Negative prompt: …', then 'Key: value, …'."""
    lines = [settings.get("prompt", "")]
    if settings.get("negative_prompt"):
        lines.append(f"Negative prompt: {settings['negative_prompt']}")
    fields = {
        "Steps": settings.get("steps"),
        "Sampler": settings.get("scheduler"),
        "CFG scale": settings.get("guidance_scale"),
        "Seed": settings.get("seed"),
        "Size": f"{settings.get('width')}x{settings.get('height')}",
        "Model": settings.get("model"),
    }
    if settings.get("steps_run"):
        fields["Stopped at step"] = settings["steps_run"]
    for key in ("strength", "controlnet", "loras"):
        if settings.get(key) not in (None, "", []):
            fields[key.capitalize()] = settings[key]
    lines.append(", ".join(f"{k}: {_plain(v)}" for k, v in fields.items() if v is not None))
    return "\n".join(lines)


def _plain(value) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text.replace("\n", " ")


def attach(image: Image.Image, settings: dict) -> Image.Image:
    """Put the settings into `image.info`, which PIL (and Gradio) write as PNG text chunks."""
    image.info["parameters"] = infotext(settings)
    image.info["denoise_studio"] = json.dumps(settings, default=str)
    return image


def save_png(image: Image.Image, settings: dict, path: str | Path) -> Path:
    """Write `image` as PNG with the settings in its text chunks."""
    info = PngInfo()
    info.add_text("parameters", infotext(settings))
    info.add_text("denoise_studio", json.dumps(settings, default=str))
    image.save(path, format="PNG", pnginfo=info)
    return Path(path)


def read_settings(image: Image.Image) -> dict | None:
    """The settings this app wrote into a PNG, or None when there are none."""
    text = getattr(image, "text", None) or image.info
    try:
        return json.loads(text["denoise_studio"])
    except (KeyError, TypeError, json.JSONDecodeError):
        return None
