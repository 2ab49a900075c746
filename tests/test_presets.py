import pytest

from pipelines.presets import PresetError, load_preset, preset_names


def test_shipped_presets_load_and_default_comes_first():
    names = preset_names()
    assert names[0] == "default" and {"fast", "teaching"} <= set(names)
    teaching = load_preset("teaching")
    assert teaching["preview_every"] == 1 and teaching["step_delay_ms"] > 0 and teaching["preview_decoder"] == "full VAE"


def test_a_user_file_becomes_a_preset_and_bad_ones_are_explained(tmp_path):
    (tmp_path / "mine.toml").write_text('steps = 9\nguidance_scale = 3\nunknown = "ignored"\n')
    (tmp_path / "broken.toml").write_text("steps = = 3")
    (tmp_path / "wrong.toml").write_text('steps = "many"')
    assert load_preset("mine", tmp_path) == {"steps": 9, "guidance_scale": 3.0}
    with pytest.raises(PresetError, match="not valid TOML"):
        load_preset("broken", tmp_path)
    with pytest.raises(PresetError, match="steps should be int"):
        load_preset("wrong", tmp_path)
    with pytest.raises(PresetError, match="No preset named"):
        load_preset("../../etc/passwd", tmp_path)
