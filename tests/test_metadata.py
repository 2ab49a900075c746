from PIL import Image

from pipelines.metadata import infotext, read_settings, save_png

SETTINGS = {"prompt": "a red circle", "negative_prompt": "blurry", "steps": 25, "scheduler": "DDIM",
            "guidance_scale": 5.0, "seed": 42, "width": 64, "height": 64, "model": "denoise-tiny",
            "loras": [{"name": "outline-style", "weight": 1.0}]}


def test_infotext_is_in_automatic1111_format():
    lines = infotext(SETTINGS).split("\n")
    assert lines[0] == "a red circle" and lines[1] == "Negative prompt: blurry"
    assert lines[2].startswith("Steps: 25, Sampler: DDIM, CFG scale: 5.0, Seed: 42, Size: 64x64, Model: denoise-tiny")
    assert 'Loras: [{"name": "outline-style"' in lines[2]


def test_settings_round_trip_through_a_png(tmp_path):
    path = save_png(Image.new("RGB", (8, 8)), SETTINGS, tmp_path / "out.png")
    image = Image.open(path)
    assert read_settings(image) == SETTINGS and image.text["parameters"] == infotext(SETTINGS)
    assert read_settings(Image.new("RGB", (8, 8))) is None
