"""Loading models from folders and Hub ids, offline, with clear messages for bad sources."""

import numpy as np
import pytest
import torch
from diffusers import AutoencoderTiny, StableDiffusionInpaintPipeline, StableDiffusionPipeline

from pipelines.generation import GenerationRequest, GenerationError, run
from pipelines.loading import ModelLoadError, ModelManager, load_model, load_taesd, resolve_source
from pipelines.tiny import tiny_pipeline


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-sd")
    tiny_pipeline(seed=3, prediction_type="epsilon").save_pretrained(folder, safe_serialization=True)
    return folder


def test_local_diffusers_folder_loads_through_autopipeline_and_generates(model_folder):
    model = load_model(str(model_folder), device="cpu", allow_any_path=True)
    assert isinstance(model.pipe, StableDiffusionPipeline) and model.prediction_type == "epsilon"
    result = run(model, type(model.pipe), GenerationRequest(prompt="a red circle", steps=3, seed=1))
    assert result.image.size == (64, 64)
    assert np.asarray(result.image).std() > 0  # a NaN sample decodes to a flat black picture


def test_derived_pipelines_share_every_weight(model_folder):
    model = load_model(str(model_folder), device="cpu", allow_any_path=True)
    inpaint = model.derive(StableDiffusionInpaintPipeline)
    assert inpaint.unet is model.pipe.unet and inpaint.vae is model.pipe.vae
    assert inpaint.text_encoder is model.pipe.text_encoder
    assert model.derive(StableDiffusionInpaintPipeline) is inpaint  # derived once


def test_manager_loads_each_model_once(model_folder):
    manager = ModelManager(default=str(model_folder), device="cpu", allow_any_path=True)
    assert manager.get() is manager.get()


def test_folder_that_is_not_a_diffusers_model_is_refused(tmp_path):
    (tmp_path / "weights.txt").write_text("nothing")
    with pytest.raises(ModelLoadError, match="not a diffusers model folder"):
        load_model(str(tmp_path), device="cpu", allow_any_path=True)


def test_pickle_only_weights_are_refused(tmp_path, model_folder):
    pipe = tiny_pipeline(seed=4)
    pipe.save_pretrained(tmp_path, safe_serialization=False)  # .bin pickles only
    with pytest.raises(ModelLoadError):
        load_model(str(tmp_path), device="cpu", allow_any_path=True)


def test_browser_strings_never_become_paths_outside_models(model_folder):
    for name in (str(model_folder), "../../etc", "/etc", "models/../../x", "a/b/c"):
        with pytest.raises(ModelLoadError):
            resolve_source(name, allow_any_path=False)
    assert resolve_source("owner/some-model") == "owner/some-model"  # a Hub id stays an id


def test_unreachable_hub_gives_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="Hugging Face Hub"):
        load_model("nobody-here/no-such-model", device="cpu")


def test_taesd_from_a_folder_decodes_previews(tmp_path, tiny_model):
    AutoencoderTiny(latent_channels=4, encoder_block_out_channels=(8, 8, 8, 8),
                    decoder_block_out_channels=(8, 8, 8, 8)).save_pretrained(tmp_path, safe_serialization=True)
    tiny_model.taesd = load_taesd(str(tmp_path), "cpu", torch.float32, allow_any_path=True)
    try:
        items = run(tiny_model, StableDiffusionPipeline, GenerationRequest(prompt="x", steps=2, seed=0,
                                                                           preview_decoder="TAESD")).steps
        assert items[0].pictures["x0"].dtype == np.uint8 and items[0].pictures["x0"].ndim == 3
    finally:
        tiny_model.taesd = None
    with pytest.raises(GenerationError, match="TAESD"):
        run(tiny_model, StableDiffusionPipeline, GenerationRequest(prompt="x", steps=2, preview_decoder="TAESD"))


def test_a_taesd_for_another_latent_space_is_refused(tmp_path):
    AutoencoderTiny(latent_channels=16, encoder_block_out_channels=(8, 8, 8, 8),
                    decoder_block_out_channels=(8, 8, 8, 8)).save_pretrained(tmp_path, safe_serialization=True)
    with pytest.raises(ModelLoadError, match="16-channel latents but the model makes 4-channel"):
        load_taesd(str(tmp_path), "cpu", torch.float32, allow_any_path=True, latent_channels=4)
