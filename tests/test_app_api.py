"""The launched app through gradio_client, as a script or another program would use it."""

import sys
from pathlib import Path

import numpy as np
import pytest
from diffusers import StableDiffusionPipeline
from gradio_client import Client, handle_file
from PIL import Image

from pipelines.generation import GenerationRequest, run
from pipelines.metadata import read_settings

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="module")
def client(app_server):
    return Client(app_server["url"], verbose=False)


def test_txt2img_streams_step_previews_then_the_final_image(client, app_server):
    job = client.submit(prompt="a red circle on a white background", steps=6, guidance_scale=5.0, seed=42,
                        api_name="/txt2img")
    final_path, settings = job.result()
    outputs = job.outputs()
    steps = [info for _, info in outputs if not info["final"]]
    assert [s["step"] for s in steps] == list(range(6))  # one streamed preview per step
    assert all(Image.open(path).size == (64, 64) for path, _ in outputs)
    assert settings["final"] and settings["seed"] == 42 and settings["steps"] == 6

    # the final image equals a direct pipeline run with the same settings
    model = app_server["manager"].get()
    expected = run(model, StableDiffusionPipeline, GenerationRequest(prompt="a red circle on a white background",
                                                                     steps=6, guidance_scale=5.0, seed=42))
    received = Image.open(final_path)
    assert np.array_equal(np.asarray(received.convert("RGB")), np.asarray(expected.image.convert("RGB")))
    assert read_settings(received)["seed"] == 42  # settings travel inside the PNG


def test_txt2img_random_seed_reports_the_seed_it_used(client):
    _, settings = client.predict(prompt="a blue star", steps=2, seed=-1, api_name="/txt2img")
    assert 0 <= settings["seed"] < 2**32
    _, again = client.predict(prompt="a blue star", steps=2, seed=settings["seed"], api_name="/txt2img")
    assert again["seed"] == settings["seed"]


def test_txt2img_bad_input_gives_a_message_not_a_crash(client):
    with pytest.raises(Exception, match="not in the list of choices"):
        client.predict(prompt="x", steps=2, scheduler="Nope", api_name="/txt2img")
    _, ok = client.predict(prompt="x", steps=2, seed=1, api_name="/txt2img")  # the server is still fine
    assert ok["seed"] == 1


def test_txt2img_streams_the_view_asked_for_every_n_steps(client):
    """`view` and `preview_every` choose what streams; `preview_every=0` streams only the result."""
    args = dict(prompt="a red circle on a white background", steps=6, seed=4, api_name="/txt2img")
    x0 = client.submit(**args, view="x0")
    eps = client.submit(**args, view="eps", preview_every=2, preview_decoder="full VAE")
    none = client.submit(**args, preview_every=0)
    x0.result(), eps.result(), none.result()
    x0_steps = [info for _, info in x0.outputs() if not info["final"]]
    eps_steps = [(path, info) for path, info in eps.outputs() if not info["final"]]
    assert [info["step"] for _, info in eps_steps] == [0, 2, 4, 5]  # and always the last step
    assert all(info["view"] == "eps" for _, info in eps_steps) and all(i["view"] == "x0" for i in x0_steps)
    # ε̂ looks like noise, x̂0 like the picture: the last ε̂ frame is far from the final picture
    final = np.asarray(Image.open(eps.outputs()[-1][0]).convert("RGB")).astype(int)
    assert np.abs(np.asarray(Image.open(eps_steps[-1][0]).convert("RGB")).astype(int) - final).mean() > 20
    assert len(none.outputs()) == 1 and none.outputs()[0][1]["final"]
    # by default the embedded model previews with its own TAESD, close to the final picture
    assert x0.outputs()[-1][1]["preview_decoder"] == "TAESD"
    last = np.asarray(Image.open(x0.outputs()[-2][0]).convert("RGB")).astype(float)
    final_x0 = np.asarray(Image.open(x0.outputs()[-1][0]).convert("RGB")).astype(float)
    assert 10 * np.log10(255**2 / ((last - final_x0) ** 2).mean()) > 24  # dB; 30.3 on average (evaluate_previews)


def test_api_totals_and_previews_for_strength_below_one(client, tmp_path):
    picture = Image.new("RGB", (64, 64), "white")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    job = client.submit(prompt="a blue star", image=save(picture, tmp_path / "p.png"), mask=save(mask, tmp_path / "m.png"),
                        steps=25, strength=0.6, seed=1, api_name="/inpaint")
    job.result()
    steps = [info for _, info in job.outputs() if not info["final"]]
    assert len(steps) == 15 and {s["total"] for s in steps} == {15}  # 25 steps × strength 0.6


def save(image, path):
    image.save(path)
    return handle_file(str(path))


def test_inpaint_endpoint_repaints_only_the_mask(client, tmp_path):
    rng = np.random.default_rng(1)
    picture = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (8, 8, 40, 40))
    job = client.submit(prompt="a yellow square", image=save(picture, tmp_path / "p.png"),
                        mask=save(mask, tmp_path / "m.png"), steps=4, seed=5, mask_blur=0, api_name="/inpaint")
    final, settings = job.result()
    assert len(job.outputs()) == 5 and settings["task"] == "inpaint" and settings["seed"] == 5
    after = np.asarray(Image.open(final).convert("RGB")).astype(int)
    before = np.asarray(picture).astype(int)
    assert np.array_equal(after[48:, 48:], before[48:, 48:])
    assert np.abs(after[10:38, 10:38] - before[10:38, 10:38]).mean() > 10


def test_inpaint_endpoint_empty_mask_is_a_message(client, tmp_path):
    picture = Image.new("RGB", (64, 64), "red")
    with pytest.raises(Exception, match="mask is empty"):
        client.predict(prompt="x", image=save(picture, tmp_path / "p.png"),
                       mask=save(Image.new("L", (64, 64)), tmp_path / "m.png"), steps=2, api_name="/inpaint")


def test_controlnet_endpoint_with_an_rgba_control_picture_of_another_size(client, tmp_path):
    control = Image.new("RGBA", (128, 128), (255, 255, 255, 255))
    control.paste((0, 0, 0, 255), (32, 32, 96, 96))
    job = client.submit(prompt="a green square", control_image=save(control, tmp_path / "c.png"), steps=3, seed=2,
                        preprocessor="canny", api_name="/controlnet")
    final, settings = job.result()
    assert Image.open(final).size == (64, 64) and settings["task"] == "controlnet"
    assert any("resized from 128×128" in note for note in settings["notes"])
    assert len(job.outputs()) == 4


@pytest.fixture()
def folder_lora(app_server):
    """A LoRA in the app's LoRA folder made for the app's model (removed afterwards)."""
    from pipelines.lora import LORA_DIR
    from test_lora import make_lora

    LORA_DIR.mkdir(parents=True, exist_ok=True)
    path = LORA_DIR / "test-random-style.safetensors"
    make_lora(path, seed=11, pipe=app_server["manager"].get().pipe)
    yield path.stem
    path.unlink()
    app_server["manager"].get().loras.unload(path.stem)


def test_loras_through_the_api_apply_per_request_only(app_server, folder_lora):
    """Two clients alternate with and without a LoRA: each gets exactly its solo picture."""
    one, two = Client(app_server["url"], verbose=False), Client(app_server["url"], verbose=False)
    args = dict(prompt="a red circle", steps=3, seed=9, api_name="/txt2img")
    solo_plain = np.asarray(Image.open(one.predict(**args)[0]))
    solo_lora_path, settings = two.predict(**args, loras=[[folder_lora, 1.0]])
    solo_lora = np.asarray(Image.open(solo_lora_path))
    assert settings["loras"][0]["name"] == folder_lora and not np.array_equal(solo_plain, solo_lora)
    jobs = []
    for _ in range(3):  # queued back to back, interleaved
        jobs.append((one.submit(**args), solo_plain))
        jobs.append((two.submit(**args, loras=[[folder_lora, 1.0]]), solo_lora))
    for job, expected in jobs:
        assert np.array_equal(np.asarray(Image.open(job.result()[0])), expected)
    with pytest.raises(Exception, match="neither a LoRA"):
        one.predict(**args, loras=[["../../secret", 1.0]])


def dark_fraction(path) -> float:
    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3).astype(int)
    return float((np.abs(pixels - (20, 20, 20)).sum(1) < 120).mean())


def test_embedded_style_lora_through_the_api(client):
    """The shipped outline LoRA from the LoRA folder: nothing at weight 0, outlines at weight 1."""
    args = dict(prompt="an outlined large green circle on an orange background", steps=20, seed=2,
                api_name="/txt2img")
    plain, _ = client.predict(**args)
    at_zero, _ = client.predict(**args, loras=[["outline-style", 0.0]])
    at_one, settings = client.predict(**args, loras=[["outline-style", 1.0]])
    assert np.array_equal(np.asarray(Image.open(plain)), np.asarray(Image.open(at_zero)))
    assert dark_fraction(at_one) > dark_fraction(plain) + 0.03
    assert settings["loras"] == [{"name": "outline-style", "weight": 1.0, "layout": "diffusers/PEFT"}]


def test_controlnet_model_paths_from_the_browser_are_refused(client, tmp_path):
    from pipelines.controlnet import EMBEDDED_CONTROLNET
    from pipelines.loading import MODELS_DIR

    control = save(Image.new("RGB", (64, 64), "white"), tmp_path / "c.png")
    with pytest.raises(Exception, match="neither a ControlNet folder"):  # even a path to our own folder
        client.predict(prompt="x", control_image=control, steps=2, preprocessor="canny",
                       controlnet_model=str(MODELS_DIR / EMBEDDED_CONTROLNET), api_name="/controlnet")


def test_position_words_move_the_shape_through_the_app(client):
    """The embedded model obeys position words (issue #2): the same seed, four position phrases."""
    from training.scorer import score
    for pos, phrase in [("left", "on the left"), ("right", "on the right"), ("top", "at the top"),
                        ("bottom", "at the bottom")]:
        path, _ = client.predict(prompt=f"a large red circle {phrase} on a white background", steps=25,
                                 guidance_scale=5.0, seed=3, api_name="/txt2img")
        spec = {"bg": "white", "shapes": [{"kind": "circle", "color": "red", "pos": pos}]}
        assert score(Image.open(path), spec)["shapes"][0]["pos"], phrase


def test_two_shape_prompts_get_both_colours_and_kinds_through_the_app(client):
    """Issue #2: each shape of a two-shape prompt gets its own colour and kind. Eight fixed prompts, every
    kind four times; evaluate.py measures 92.1 % of kinds right in two-shape prompts, so allow 3 misses of 16."""
    from training.scorer import score
    pairs = [("red", "star", "blue", "square", "white"), ("green", "circle", "yellow", "triangle", "black"),
             ("purple", "triangle", "orange", "star", "white"), ("white", "square", "red", "circle", "blue"),
             ("yellow", "star", "green", "circle", "purple"), ("blue", "triangle", "white", "square", "orange"),
             ("orange", "circle", "purple", "star", "yellow"), ("black", "square", "red", "triangle", "green")]
    a = lambda word: ("an " if word[0] in "aeiou" else "a ") + word
    kinds_right = 0
    for c1, k1, c2, k2, bg in pairs:
        prompt = f"{a(c1)} {k1} and {a(c2)} {k2} on {a(bg)} background"
        path, _ = client.predict(prompt=prompt, steps=25, guidance_scale=5.0, seed=0, api_name="/txt2img")
        spec = {"bg": bg, "shapes": [{"kind": k1, "color": c1, "pos": None}, {"kind": k2, "color": c2, "pos": None}]}
        result = score(Image.open(path), spec)
        assert result["bg"] and result["all_present"], prompt
        kinds_right += sum(s["kind"] for s in result["shapes"])
    assert kinds_right >= 13, kinds_right
