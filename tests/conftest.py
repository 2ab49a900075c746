import os
import socket
import tempfile

# Before anything imports huggingface_hub (it reads these once, at import): offline tests fail fast
# instead of waiting for network timeouts, and fitted preview maps go to a fresh folder.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("DENOISE_CACHE", tempfile.mkdtemp(prefix="denoise-cache-"))

import pytest  # noqa: E402

from pipelines.loading import LoadedModel, ModelManager  # noqa: E402
from pipelines.tiny import tiny_pipeline  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def torch_threads():
    """The app's own thread policy (app.default_threads): on a 2-core machine shared with the test
    client, the browser and the server, two torch threads thrash (5-10x slower steps measured)."""
    import app
    from pipelines.worker import set_threads

    set_threads(app.default_threads("cpu"))


@pytest.fixture(scope="session")
def tiny_model():
    """A random-weight SD pipeline built from configs (v-prediction, zero-SNR DDIM)."""
    pipe = tiny_pipeline(seed=0)
    return LoadedModel(name="tiny", source="test", pipe=pipe, device="cpu", dtype=pipe.unet.dtype)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def app_server():
    """The real Blocks app on the default (embedded) model, launched on a free local port."""
    from diffusers.utils import logging as diffusers_logging

    import app

    diffusers_logging.set_verbosity_error()
    from pipelines.generation import warm_up

    manager = ModelManager(device="cpu")
    warm_up(manager.get())  # as app.main does before serving
    demo = app.build_app(manager)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                max_file_size=app.MAX_UPLOAD, css=app.CSS)
    yield {"url": f"http://127.0.0.1:{port}/", "manager": manager}
    demo.close()
