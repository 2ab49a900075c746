"""Named settings stored as plain TOML files in `presets/` (users may add their own)."""

from __future__ import annotations

import tomllib
from pathlib import Path

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"

# key -> type every preset value is converted to; anything else in a file is ignored
FIELDS = {
    "description": str,
    "steps": int,
    "guidance_scale": float,
    "scheduler": str,
    "width": int,
    "height": int,
    "negative_prompt": str,
    "preview_every": int,
    "preview_decoder": str,
    "step_delay_ms": int,
}


class PresetError(ValueError):
    """A preset that cannot be read; the message is meant for the user."""


def preset_names(folder: Path = PRESETS_DIR) -> list[str]:
    """Preset names (file stems), "default" first."""
    names = sorted(p.stem for p in folder.glob("*.toml"))
    return sorted(names, key=lambda n: n != "default")


def load_preset(name: str, folder: Path = PRESETS_DIR) -> dict:
    """Read one preset by name; only names of files in the presets folder are accepted."""
    if name not in preset_names(folder):  # never turns a user string into an arbitrary path
        raise PresetError(f"No preset named {name!r}. Available: {', '.join(preset_names(folder))}.")
    path = folder / f"{name}.toml"
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise PresetError(f"Preset {path.name} is not valid TOML: {error}") from error
    preset = {}
    for key, kind in FIELDS.items():
        if key in raw:
            try:
                preset[key] = kind(raw[key])
            except (TypeError, ValueError):
                raise PresetError(f"Preset {path.name}: {key} should be {kind.__name__}, got {raw[key]!r}.") from None
    return preset
