"""LoRAs on a real tiny pipeline: formats, stacking, refusals, isolation."""

import threading

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file, save_file

from pipelines.generation import GenerationRequest, run
from pipelines.loading import LoadedModel
from pipelines.lora import LoraError
from pipelines.tiny import tiny_components, tiny_pipeline

SD = StableDiffusionPipeline


def make_lora(path, seed, text_encoder=False, rank=4, pipe=None,
              te_layers=("q_proj", "k_proj", "v_proj", "out_proj")):
    """A diffusers/PEFT-layout LoRA file with random weights for a model's attention layers."""
    pipe = pipe or tiny_pipeline()
    g = torch.Generator().manual_seed(seed)
    layers = {}
    targets = [("unet", pipe.unet, ("to_q", "to_k", "to_v", "to_out.0"))]
    if text_encoder:
        targets.append(("text_encoder", pipe.text_encoder, tuple(te_layers)))
    for prefix, module_tree, names in targets:
        for module_name, module in module_tree.named_modules():
            if isinstance(module, torch.nn.Linear) and module_name.endswith(names):
                out_features, in_features = module.weight.shape
                layers[f"{prefix}.{module_name}.lora_A.weight"] = torch.randn(rank, in_features, generator=g) * 0.5
                layers[f"{prefix}.{module_name}.lora_B.weight"] = torch.randn(out_features, rank, generator=g) * 0.5
    save_file(layers, str(path))
    return str(path)


def to_kohya(diffusers_file, kohya_file):
    """Rename diffusers/PEFT LoRA keys to the kohya/A1111 layout (lora_unet_…, lora_down/up, alpha)."""
    kohya = {}
    for key, tensor in load_file(diffusers_file).items():
        part, rest = key.split(".", 1)
        module, kind = rest.rsplit(".lora_", 1)
        prefix = {"unet": "lora_unet_", "text_encoder": "lora_te_"}[part]
        if part == "text_encoder" and not module.startswith("text_model."):
            module = "text_model." + module
        name = prefix + module.replace(".", "_")
        kohya[f"{name}.lora_{'down' if kind.startswith('A') else 'up'}.weight"] = tensor
        if kind.startswith("A"):
            kohya[f"{name}.alpha"] = torch.tensor(float(tensor.shape[0]))
    save_file(kohya, kohya_file)
    return kohya_file


@pytest.fixture()
def model():
    pipe = tiny_pipeline(seed=0)
    return LoadedModel(name="tiny", source="test", pipe=pipe, device="cpu", dtype=torch.float32)


def picture(model, loras=(), seed=4):
    result = run(model, SD, GenerationRequest(prompt="a red circle", steps=4, seed=seed, loras=list(loras)))
    return np.asarray(result.image).astype(int), result


def test_lora_changes_the_picture_at_weight_1_and_not_at_0(model, tmp_path):
    path = make_lora(tmp_path / "style.safetensors", seed=1)
    info = model.loras.load(path, allow_path=True)
    base, _ = picture(model)
    at_zero, _ = picture(model, [(info.name, 0.0)])
    at_one, result = picture(model, [(info.name, 1.0)])
    assert np.array_equal(base, at_zero)
    assert np.abs(at_one - base).mean() > 1
    assert result.settings["loras"] == [{"name": info.name, "weight": 1.0, "layout": "diffusers/PEFT"}]
    after, _ = picture(model)  # and the next request without LoRA is the base picture again
    assert np.array_equal(base, after)


def test_two_loras_stack(model, tmp_path):
    a = model.loras.load(make_lora(tmp_path / "a.safetensors", seed=1), allow_path=True).name
    b = model.loras.load(make_lora(tmp_path / "b.safetensors", seed=2, text_encoder=True), allow_path=True).name
    only_a, _ = picture(model, [(a, 1.0)])
    only_b, _ = picture(model, [(b, 1.0)])
    both, _ = picture(model, [(a, 1.0), (b, 1.0)])
    assert not np.array_equal(both, only_a) and not np.array_equal(both, only_b)


def test_kohya_layout_gives_the_same_picture_as_diffusers_layout(model, tmp_path):
    # UNet and text-encoder parts (lora_unet_… and lora_te_… keys), converted by diffusers
    diffusers_file = make_lora(tmp_path / "d.safetensors", seed=3, text_encoder=True)
    kohya_file = to_kohya(diffusers_file, str(tmp_path / "k.safetensors"))
    d = model.loras.load(diffusers_file, allow_path=True)
    k = model.loras.load(kohya_file, allow_path=True)
    assert k.layout == "kohya/A1111" and d.layout == "diffusers/PEFT" and k.layers == d.layers
    via_d, _ = picture(model, [(d.name, 0.8)])
    via_k, _ = picture(model, [(k.name, 0.8)])
    assert np.abs(via_d - via_k).max() <= 1


def test_a_lora_diffusers_fails_to_load_leaves_no_trace(model, tmp_path):
    base, _ = picture(model)
    # diffusers 0.42 recognises a kohya text-encoder part only when it has out_proj layers, and
    # raises half-way through loading otherwise: the model must come out of that unchanged
    partial_te = make_lora(tmp_path / "t.safetensors", seed=6, text_encoder=True, te_layers=("q_proj", "v_proj"))
    kohya_with_te = to_kohya(partial_te,
                             str(tmp_path / "kt.safetensors"))
    try:
        model.loras.load(kohya_with_te, allow_path=True)
    except LoraError as error:
        assert "model is unchanged" in str(error)
        assert not model.loras.loaded
    assert np.array_equal(base, picture(model)[0])


def test_refusals_leave_the_model_exactly_as_it_was(model, tmp_path):
    base, _ = picture(model)
    before = {k: v.clone() for k, v in model.pipe.unet.state_dict().items()}
    (tmp_path / "pickle.safetensors").write_bytes(b"\x80\x04K\x01." + b"0" * 100)  # a pickle in disguise
    save_file({"weight": torch.zeros(2, 2)}, str(tmp_path / "nolora.safetensors"))
    other = tiny_components(seed=0)
    big_unet_lora = tmp_path / "other.safetensors"
    make_lora(big_unet_lora, seed=1)
    renamed = {k.replace("attn1", "attn9"): v for k, v in load_file(str(big_unet_lora)).items()}
    save_file(renamed, str(tmp_path / "partial.safetensors"))
    sdxl = {"lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(4, 32),
            "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.zeros(32, 4)}
    save_file(sdxl, str(tmp_path / "sdxl.safetensors"))
    cases = {"pickle.safetensors": "not a .safetensors file", "nolora.safetensors": "no LoRA layers",
             "partial.safetensors": "Only", "sdxl.safetensors": "SDXL"}
    for name, message in cases.items():
        with pytest.raises(LoraError, match=message):
            model.loras.load(str(tmp_path / name), allow_path=True)
    with pytest.raises(LoraError, match="neither a LoRA"):
        model.loras.load("../../etc/passwd")  # a user string never becomes a path
    after = model.pipe.unet.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert np.array_equal(base, picture(model)[0]) and other  # same picture as before the refusals


def test_alternating_requests_from_two_threads_match_solo_runs(model, tmp_path):
    name = model.loras.load(make_lora(tmp_path / "s.safetensors", seed=5), allow_path=True).name
    plans = [[(name, 1.0)], []]
    solo = [picture(model, plan)[0] for plan in plans]
    results = {0: [], 1: []}

    def client(i):
        for _ in range(4):
            results[i].append(picture(model, plans[i])[0])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for i in range(2):
        assert all(np.array_equal(r, solo[i]) for r in results[i])


def test_hub_ids_offline_and_trigger_words(model, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LoraError, match="Hugging Face Hub"):
        model.loras.load("someone/some-lora")
    path = make_lora(tmp_path / "words.safetensors", seed=1)
    (tmp_path / "words.json").write_text('{"trigger_words": ["outlined", "thick lines"]}')
    info = model.loras.load(path, allow_path=True)
    assert info.trigger_words == ("outlined", "thick lines")
