"""The launched app through gradio_client, as a script or another program would use it."""

import numpy as np
import pytest
from diffusers import StableDiffusionPipeline
from gradio_client import Client
from PIL import Image

from pipelines.generation import GenerationRequest, run
from pipelines.metadata import read_settings


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
