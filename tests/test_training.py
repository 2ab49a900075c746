"""Tests for the training package: tokenizer, dataset ground truth, scorer,
every training stage on tiny sizes, and the SHIPPED model folders."""
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from training.data import (COLOR_NAMES, HOLDOUT_SET, SHAPES, caption, is_holdout, make_dataset, render,
                           sample_spec)
from training.scorer import aggregate, score
from training.tokenizer import MODEL_MAX_LENGTH, WORDS, build_tokenizer, check_tokenizer

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
torch.set_num_threads(1)


# ----------------------------------------------------------------------------- tokenizer
def test_tokenizer_words_single_ids_and_roundtrip(tmp_path):
    from transformers import AutoTokenizer, CLIPTokenizer
    build_tokenizer(str(tmp_path / "tok"))
    assert (tmp_path / "tok" / "vocab.json").exists() and (tmp_path / "tok" / "merges.txt").exists()
    ids_seen = set()
    for cls in (CLIPTokenizer, AutoTokenizer):
        tok = cls.from_pretrained(str(tmp_path / "tok"))
        assert tok.model_max_length == MODEL_MAX_LENGTH
        for w in WORDS:
            ids = tok(w, add_special_tokens=False).input_ids
            assert len(ids) == 1, (cls, w, ids)
            ids_seen.add(ids[0])
        # unknown words decompose into sub-word / character tokens instead of failing
        ids = tok("zebra", add_special_tokens=False).input_ids
        assert len(ids) > 1 and tok.unk_token_id not in ids
        assert len(tok("a red circle", padding="max_length").input_ids) == MODEL_MAX_LENGTH
    assert len(ids_seen) == len(WORDS)  # distinct words -> distinct ids
    # slow-format files alone (vocab.json + merges.txt) give the same ids
    slow = tmp_path / "slow"
    slow.mkdir()
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(tmp_path / "tok" / f, slow / f)
    tok2 = CLIPTokenizer(vocab=str(slow / "vocab.json"), merges=str(slow / "merges.txt"))
    t1 = CLIPTokenizer.from_pretrained(str(tmp_path / "tok"))
    s = "an outlined small red circle on the left on a white background"
    assert tok2(s).input_ids == t1(s).input_ids


def test_tokenizer_ids_are_the_same_in_every_process_and_in_the_shipped_model():
    """The BPE trainer breaks ties in per-process hash order; training must not depend on it."""
    import subprocess
    import sys
    code = "from training.tokenizer import build_tokenizer as b; print([b().convert_tokens_to_ids(w + '</w>') for w in %r])" % WORDS
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           cwd=str(ROOT)).stdout.strip().splitlines()[-1] for _ in range(3)}
    assert len(runs) == 1
    shipped = MODELS / "denoise-tiny" / "tokenizer" / "vocab.json"
    if shipped.exists():
        assert json.load(open(shipped, encoding="utf-8")) == build_tokenizer().get_vocab()


# ----------------------------------------------------------------------------- dataset
def test_dataset_deterministic_and_holdout_excluded():
    a, ca, sa = make_dataset(8, seed=3)
    b, cb, _ = make_dataset(8, seed=3)
    assert np.array_equal(a, b) and ca == cb and a.shape == (8, 64, 64, 3)
    rng = random.Random(0)
    for _ in range(3000):
        s = sample_spec(rng)
        assert not is_holdout(s)
        assert all(x["color"] != s["bg"] for x in s["shapes"])
    rng = random.Random(1)
    for _ in range(200):
        s = sample_spec(rng, holdout=True)
        assert (s["shapes"][0]["kind"], s["shapes"][0]["color"], s["bg"]) in HOLDOUT_SET
    c = caption({"bg": "white", "shapes": [{"kind": "circle", "color": "red", "size": "small", "pos": "left"},
                                           {"kind": "star", "color": "blue", "size": None, "pos": None}]})
    assert c == "a small red circle on the left and a blue star on a white background"


def test_chunked_dataset_does_not_depend_on_the_number_of_workers():
    one = make_dataset(300, seed=7, chunk=128)
    two = make_dataset(300, seed=7, chunk=128, workers=2)
    assert np.array_equal(one[0], two[0]) and one[1] == two[1] and len(one[1]) == 300
    stream = make_dataset(300, seed=7)  # one random stream: its start is the first chunk
    assert np.array_equal(stream[0][:128], one[0][:128]) and not np.array_equal(stream[0][128:], one[0][128:])


def test_render_ground_truth_matches_pixels():
    rng = random.Random(4)
    for _ in range(20):
        s = sample_spec(rng)
        im = np.asarray(render(s)).astype(int)
        assert np.abs(im[0, 0] - np.array(__import__("training.data", fromlist=["COLORS"]).COLORS[s["bg"]])).max() < 3
        for sh in s["shapes"]:
            x0, y0, x1, y1 = sh["bbox"]
            assert 0 <= x0 and x1 <= 64 and 0 <= y0 and y1 <= 64


def test_scorer_correct_on_renders_and_detects_errors():
    rng = random.Random(11)
    specs = [sample_spec(rng, holdout=i % 2 == 0) for i in range(300)]
    res = [score(render(s), s) for s in specs]
    agg = aggregate(res, specs)
    assert agg["background"] == 100 and agg["shape_color"] == 100
    assert agg["shape_kind"] >= 98.5 and agg["position"] >= 98.5 and agg["two_shapes_present"] == 100
    assert agg["shape_kind_one_shape"] >= 98.5 and agg["shape_kind_two_shapes"] >= 97
    # the split counts each prompt's shapes once: a wrong kind in every two-shape spec shows there only
    flip = [dict(sp, shapes=[dict(sp["shapes"][0], kind=next(k for k in SHAPES if k != sp["shapes"][0]["kind"])),
                             sp["shapes"][1]]) if len(sp["shapes"]) == 2 else sp for sp in specs]
    agg2 = aggregate([score(render(s), f) for s, f in zip(specs, flip)], flip)
    assert agg2["shape_kind_one_shape"] == agg["shape_kind_one_shape"]
    assert agg2["shape_kind_two_shapes"] <= 55
    # wrong specs must be caught
    s = specs[1]
    wrong_bg = dict(s, bg=next(c for c in COLOR_NAMES if c != s["bg"] and all(x["color"] != c for x in s["shapes"])))
    assert not score(render(s), wrong_bg)["bg"]
    sh = dict(s["shapes"][0], kind=next(k for k in SHAPES if k != s["shapes"][0]["kind"]))
    assert not score(render(s), dict(s, shapes=[sh]))["shapes"][0]["kind"]
    blank = {"bg": s["bg"], "shapes": []}
    assert not score(render(blank), s)["shapes"][0]["color"]


# ----------------------------------------------------------------------------- tiny training runs
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from training import train_controlnet, train_lora, train_unet, train_vae
    d = tmp_path_factory.mktemp("tiny")
    vae = train_vae.main(["--out", str(d / "vae"), "--steps", "2", "--n-train", "16", "--n-eval", "8",
                          "--channels", "8,16,16", "--threads", "1"])
    pipe = train_unet.main(["--out", str(d / "unet"), "--vae", vae, "--steps", "2", "--batch", "4",
                            "--n-train", "16", "--channels", "16,16,32", "--text-layers", "1",
                            "--sample-every", "0", "--threads", "1", "--pipeline-out", str(d / "models" / "denoise-tiny")])
    cn = train_controlnet.main(["--base", pipe, "--out", str(d / "cn"), "--steps", "2", "--batch", "4",
                                "--n-train", "8", "--threads", "1", "--controlnet-out", str(d / "models" / "denoise-tiny-controlnet-canny")])
    lora = train_lora.main(["--base", pipe, "--out", str(d / "lora"), "--steps", "2", "--batch", "4",
                            "--n-train", "8", "--threads", "1", "--lora-out", str(d / "models" / "loras")])
    return d / "models"


def test_tiny_stages_produce_loadable_folders(tiny):
    from diffusers import AutoencoderKL
    vae = AutoencoderKL.from_pretrained(str(tiny.parent / "vae" / "final"))
    assert vae.config.latent_channels == 4 and vae.config.scaling_factor != 1.0
    assert json.load(open(tiny.parent / "vae" / "metrics.json"))["psnr_db"] > 0
    _check_models(tiny, steps=2)


def test_unet_continuation_with_layout_knobs(tiny):
    """The phases that taught position words: --init from a shipped folder, captions that
    always carry position and size words, a faster-learning text encoder, high-noise batches."""
    from training import train_unet
    from training.data import POSITION_PHRASES
    out = tiny.parent / "unet-layout"
    train_unet.main(["--init", str(tiny / "denoise-tiny"), "--out", str(out), "--vae", str(tiny.parent / "vae" / "final"),
                     "--steps", "6", "--stop-at", "2", "--batch", "4", "--n-train", "12", "--channels", "16,16,32",
                     "--text-layers", "1", "--sample-every", "0", "--threads", "1", "--no-export", "--p-pos", "1", "--p-size", "1",
                     "--te-lr-mult", "3", "--t-high-frac", "0.5", "--fg-weight", "4", "--snr-gamma", "5"])
    data = torch.load(out / "data_12_pos1_size1.pt", weights_only=True)
    assert all(any(p in c for p in POSITION_PHRASES.values()) and ("small" in c or "large" in c)
               for c in data["captions"])
    ck = torch.load(out / "ckpt.pt", weights_only=True)
    unet_lr, te_lr = (g["lr"] for g in ck["opt"]["param_groups"])
    assert te_lr == pytest.approx(3 * unet_lr) and unet_lr > 0
    assert ck["step"] == 2 and (out / "DONE").read_text() == "2"  # --stop-at finishes the stage early


def test_unet_head_count_follows_the_checkpoint_and_the_init_folder(tiny):
    """--heads changes no weight shape, so resuming, exporting or continuing must keep the head count
    the weights were trained with, whatever --heads says then."""
    from diffusers import UNet2DConditionModel
    from training import train_unet
    out, cont = tiny.parent / "unet-heads", tiny.parent / "unet-heads-cont"
    common = ["--vae", str(tiny.parent / "vae" / "final"), "--steps", "4", "--batch", "4", "--n-train", "12",
              "--channels", "16,16,32", "--text-layers", "1", "--sample-every", "0", "--threads", "1"]
    train_unet.main(["--out", str(out), "--heads", "2", "--stop-at", "1", "--no-export"] + common)
    assert torch.load(out / "ckpt.pt", weights_only=True)["heads"] == 2
    train_unet.main(["--out", str(out), "--export-only", "--pipeline-out", str(out / "pipe")] + common)
    assert UNet2DConditionModel.load_config(str(out / "pipe"), subfolder="unet")["attention_head_dim"] == 2
    train_unet.main(["--out", str(cont), "--init", str(out / "pipe"), "--stop-at", "1", "--no-export"] + common)
    assert torch.load(cont / "ckpt.pt", weights_only=True)["heads"] == 2


def test_foreground_weights_mark_the_shape_cells_and_their_neighbours():
    from training.train_unet import foreground_weights
    x0 = torch.randn(2, 4, 1, 1).expand(2, 4, 16, 16).clone()  # flat backgrounds
    x0[0, :, 5:7, 9:11] += 2.0                                   # one 2x2 "shape" in picture 0
    w = foreground_weights(x0, 4.0)
    assert w.shape == (2, 1, 16, 16)
    assert (w[0, 0, 4:8, 8:12] == 4).all() and w[0].sum() == 16 * 16 + 3 * 16  # shape + one-cell ring
    assert (w[1] == 1).all()                                                  # no shape: plain MSE


def test_min_snr_weights_favour_the_middle_of_the_schedule():
    """--snr-gamma: mid-noise timesteps weigh most; the noisiest (snr 0 at zero terminal SNR, where the
    background is decided) and the cleanest keep the floor instead of vanishing."""
    from diffusers import DDPMScheduler
    from training.train_unet import SCHEDULER_KW, min_snr_weights
    acp = DDPMScheduler(**SCHEDULER_KW).alphas_cumprod
    w = min_snr_weights(acp, 5.0, floor=0.2)
    assert w.shape == (1000,) and float(w.min()) == pytest.approx(0.2)
    assert float(w[999]) == pytest.approx(0.2) and float(w[0]) == pytest.approx(0.2)
    peak = int(w.argmax())
    assert 100 < peak < 400 and float(w[peak]) > 0.7             # snr near gamma: 5 / 6 at most
    snr = acp / (1 - acp)
    mid = (snr > 0.5) & (snr < 50)
    assert torch.allclose(w[mid], (snr.clamp(max=5.0) / (snr + 1))[mid].clamp(min=0.2))


def test_decoder_finetune_keeps_the_latent_space(tiny):
    """Only the decoder may move: the UNet, ControlNet and LoRA were trained on the encoder's latents."""
    from diffusers import AutoencoderKL
    from training import finetune_decoder
    src = str(tiny.parent / "vae" / "final")
    out = finetune_decoder.main(["--vae", src, "--out", str(tiny.parent / "vae-dec"), "--steps", "3",
                                 "--batch", "4", "--n-train", "10", "--threads", "1"])
    a, b = AutoencoderKL.from_pretrained(src), AutoencoderKL.from_pretrained(out)
    assert b.config.scaling_factor == a.config.scaling_factor
    sa, sb = a.state_dict(), b.state_dict()
    frozen = [k for k in sa if k.startswith(("encoder.", "quant_conv."))]
    assert frozen and all(torch.equal(sa[k], sb[k]) for k in frozen)
    assert any(not torch.equal(sa[k], sb[k]) for k in sa if k.startswith("decoder."))


def test_edge_band_marks_colour_edges_only():
    from training.finetune_decoder import edge_band
    x = -torch.ones(1, 3, 10, 10)
    x[:, :, 2:7, 2:7] = 1.0                       # a 5x5 square
    e = edge_band(x)[0, 0]
    assert e[2, 2] == 1 and e[1, 1] == 1          # its border and the ring just outside
    assert e[4, 4] == 0 and e[0, 0] == 0 and e[9, 9] == 0  # its inside and the far background
    assert edge_band(torch.zeros(1, 3, 8, 8)).sum() == 0


def test_stage_resume_skips_finished(tiny):
    from training import train_vae
    out = train_vae.main(["--out", str(tiny.parent / "vae"), "--steps", "2"])
    assert out.endswith("final")


# ----------------------------------------------------------------------------- shipped folders
def _check_models(models, steps=3):
    from diffusers import (AutoPipelineForText2Image, ControlNetModel, StableDiffusionControlNetPipeline,
                           StableDiffusionPipeline)
    from training.train_controlnet import canny
    base = str(models / "denoise-tiny")
    pipe = StableDiffusionPipeline.from_pretrained(base)
    assert pipe.safety_checker is None and pipe.feature_extractor is None
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.scheduler.config.rescale_betas_zero_snr
    g = torch.Generator().manual_seed(0)
    im = pipe("a red circle on a white background", num_inference_steps=steps, guidance_scale=5.0,
              generator=g).images[0]
    assert im.size == (64, 64)
    auto = AutoPipelineForText2Image.from_pretrained(base)
    assert type(auto).__name__ == "StableDiffusionPipeline"
    cn = ControlNetModel.from_pretrained(str(models / "denoise-tiny-controlnet-canny"))
    cp = StableDiffusionControlNetPipeline.from_pretrained(base, controlnet=cn, safety_checker=None)
    ctrl = canny(render(sample_spec(random.Random(0))))
    im2 = cp("a blue star on a white background", image=ctrl, num_inference_steps=steps).images[0]
    assert im2.size == (64, 64)
    meta = json.load(open(models / "loras" / "outline-style.json"))
    assert meta["trigger_words"] == ["outlined"]
    pipe.load_lora_weights(str(models / "loras"), weight_name="outline-style.safetensors", adapter_name="x")
    assert "x" in pipe.get_list_adapters()["unet"] and "x" in pipe.get_list_adapters()["text_encoder"]
    a = np.asarray(pipe("an outlined red circle on a white background", num_inference_steps=steps,
                        generator=torch.Generator().manual_seed(0)).images[0], np.float32)
    pipe.set_adapters(["x"], adapter_weights=[0.0])
    b = np.asarray(pipe("an outlined red circle on a white background", num_inference_steps=steps,
                        generator=torch.Generator().manual_seed(0)).images[0], np.float32)
    assert a.shape == (64, 64, 3) and np.abs(a - b).mean() > 0  # the LoRA changes the output


@pytest.mark.skipif(not (MODELS / "denoise-tiny" / "model_index.json").exists(),
                    reason="the embedded models are not shipped yet (issue #2)")
def test_shipped_models_load_and_generate():
    for f in ("denoise-tiny/model_index.json", "denoise-tiny-controlnet-canny/config.json",
              "loras/outline-style.safetensors"):
        assert (MODELS / f).exists(), f
    assert not list(MODELS.rglob("*.bin")) and not list(MODELS.rglob("*.pt"))
    size = sum(p.stat().st_size for p in MODELS.rglob("*") if p.is_file())
    assert size < 100e6
    idx = json.load(open(MODELS / "denoise-tiny" / "model_index.json"))
    assert idx["safety_checker"] == [None, None] and idx["feature_extractor"] == [None, None]
    _check_models(MODELS)
