"""Inpainting and ControlNet requests on a real tiny pipeline, and the inputs they accept."""

import numpy as np
import torch
from diffusers import ControlNetModel
import pytest
from PIL import Image

from pipelines.controlnet import EMBEDDED_CONTROLNET, controlnet_stream, load_controlnet, preprocess
from pipelines.generation import GenerationError, GenerationRequest, GenerationResult
from pipelines.inpaint import inpaint_stream
from pipelines.loading import MODELS_DIR, ModelLoadError
from pipelines.inputs import prepare_mask, prepare_picture, to_rgb


def last(items):
    items = list(items)
    assert isinstance(items[-1], GenerationResult)
    return items[-1]


def square_mask(size=(64, 64), box=(16, 16, 48, 48)):
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def test_inpaint_keeps_the_unmasked_region_and_changes_the_masked_one(tiny_model):
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    result = last(inpaint_stream(tiny_model, GenerationRequest(prompt="a blue star", steps=6, seed=2), picture,
                                 square_mask(), strength=1.0, mask_blur=0))
    before, after = np.asarray(picture).astype(int), np.asarray(result.image).astype(int)
    outside = np.ones((64, 64), bool)
    outside[16:48, 16:48] = False
    assert np.abs(after[outside] - before[outside]).max() == 0
    assert np.abs(after[20:44, 20:44] - before[20:44, 20:44]).mean() > 20
    assert result.settings["task"] == "inpaint" and result.settings["strength"] == 1.0


def test_inpaint_streams_steps_where_the_rest_stays(tiny_model):
    picture = Image.new("RGB", (64, 64), "red")
    items = list(inpaint_stream(tiny_model, GenerationRequest(prompt="x", steps=4, seed=1, preview_decoder="full VAE"),
                                picture, square_mask(), strength=0.8))
    assert [i.index for i in items[:-1]] == list(range(len(items) - 1)) and len(items) > 2


def test_inpaint_with_a_nine_channel_inpainting_unet():
    from diffusers import StableDiffusionPipeline

    from pipelines.loading import LoadedModel
    from pipelines.tiny import tiny_components

    pipe = StableDiffusionPipeline(**tiny_components(seed=1, in_channels=9))
    model = LoadedModel(name="tiny-inpaint", source="test", pipe=pipe, device="cpu", dtype=pipe.unet.dtype)
    picture = Image.new("RGB", (64, 64), "green")
    result = last(inpaint_stream(model, GenerationRequest(prompt="x", steps=3, seed=1), picture, square_mask(),
                                 mask_blur=0))
    assert np.asarray(result.image)[0, 0].tolist() == [0, 128, 0]  # unmasked pixels pasted back exactly


def test_inputs_of_any_mode_and_size_are_converted_and_the_user_told(tiny_model):
    rgba = Image.new("RGBA", (300, 150), (255, 0, 0, 0))
    picture, notes = prepare_picture(rgba, tiny_model)
    assert picture.mode == "RGB" and picture.size == (64, 32)
    assert any("transparent" in n for n in notes) and any("300×150 to 64×32" in n for n in notes)
    for mode in ("L", "P", "I;16", "CMYK"):
        converted, _ = to_rgb(Image.new(mode, (10, 10)))
        assert converted.mode == "RGB"


def test_bad_masks_and_missing_pictures_give_clear_messages(tiny_model):
    picture = Image.new("RGB", (64, 64), "red")
    with pytest.raises(GenerationError, match="mask is empty"):
        last(inpaint_stream(tiny_model, GenerationRequest(prompt="x", steps=2), picture, Image.new("L", (64, 64))))
    with pytest.raises(GenerationError, match="shapes differ"):
        last(inpaint_stream(tiny_model, GenerationRequest(prompt="x", steps=2), picture, square_mask((64, 32))))
    with pytest.raises(GenerationError, match="No picture"):
        last(inpaint_stream(tiny_model, GenerationRequest(prompt="x", steps=2), None, square_mask()))
    mask, notes = prepare_mask(square_mask((128, 128), (32, 32, 96, 96)), (64, 64), (64, 64))
    assert mask.size == (64, 64) and notes  # same shape, other resolution: scaled and said
    controlnet = ControlNetModel.from_unet(tiny_model.pipe.unet, conditioning_embedding_out_channels=(16, 32, 64))
    with pytest.raises(GenerationError, match="No control picture"):
        last(controlnet_stream(tiny_model, GenerationRequest(prompt="x", steps=2), [None], [controlnet], [1.0]))


def test_offline_preprocessors_and_a_clear_message_for_the_ones_that_need_weights(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    picture = Image.new("RGB", (64, 64), "white")
    picture.paste((0, 0, 0), (16, 16, 48, 48))
    edges = np.asarray(preprocess("canny", picture, 100, 200))
    assert edges.shape == (64, 64, 3) and edges.max() == 255 and (edges > 0).mean() < 0.2
    assert preprocess("shuffle", picture).size == (64, 64)
    assert preprocess("lineart (standard)", picture).size == (64, 64)
    with pytest.raises(GenerationError, match="annotator weights"):
        preprocess("depth (MiDaS)", picture)


def test_controlnet_changes_the_picture_and_adds_only_its_own_weights(tiny_model, tmp_path):
    picture = Image.new("RGB", (64, 64), "white")
    picture.paste((0, 0, 0), (16, 16, 48, 48))
    control = preprocess("canny", picture)
    # a fresh ControlNet's zero convolutions ignore the control; give them weights to see its effect
    controlnet = ControlNetModel.from_unet(tiny_model.pipe.unet, conditioning_embedding_out_channels=(16, 32, 64))
    torch.manual_seed(0)
    for block in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
        torch.nn.init.normal_(block.weight, std=0.5)
    controlnet.save_pretrained(tmp_path / "cn")  # a local folder (command-line use) is loaded once
    loaded = load_controlnet(tiny_model, str(tmp_path / "cn"), allow_any_path=True)
    assert loaded is load_controlnet(tiny_model, str(tmp_path / "cn"), allow_any_path=True)
    with pytest.raises(ModelLoadError, match="neither a ControlNet folder"):
        load_controlnet(tiny_model, str(tmp_path / "cn"))  # from the browser a path is never a path
    if (MODELS_DIR / EMBEDDED_CONTROLNET / "config.json").is_file():
        with pytest.raises(ModelLoadError, match="made for another base model"):
            load_controlnet(tiny_model)  # the embedded one is for denoise-tiny, not this model
    request = dict(prompt="x", steps=4, seed=3)
    with_control = last(controlnet_stream(tiny_model, GenerationRequest(**request), [control], [controlnet], [2.0]))
    without = last(controlnet_stream(tiny_model, GenerationRequest(**request), [control], [controlnet], [0.0]))
    assert not np.array_equal(np.asarray(with_control.image), np.asarray(without.image))
    derived = [p for p in tiny_model.derived.values() if hasattr(p, "controlnet")]
    assert derived and all(p.unet is tiny_model.pipe.unet for p in derived)
    two = last(controlnet_stream(tiny_model, GenerationRequest(**request), [control, control],
                                 [controlnet, controlnet], [1.0, 0.5]))
    assert two.image.size == (64, 64)
