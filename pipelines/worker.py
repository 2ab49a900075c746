"""The one thread that runs torch work: model loading, LoRA/ControlNet loading and generation.

torch's OpenMP thread team belongs to the calling thread. Torch work on a second thread (a thread
per request, or generating on the main thread and on another) leaves two teams competing for a few
cores: measured 3-80x slower steps with a thread per request, and 0.8 s -> 2.4 s per 25-step image
after one generation on the main thread. So every torch call goes through `on_worker`, which runs
it on this single long-lived thread."""

from __future__ import annotations

import contextvars
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

T = TypeVar("T")

WORKERS = ThreadPoolExecutor(max_workers=1, thread_name_prefix="denoise-torch")
_worker_thread: list[threading.Thread] = []
WORKERS.submit(lambda: _worker_thread.append(threading.current_thread())).result()


def on_worker(fn: Callable[..., T], *args, **kwargs) -> T:
    """Run fn on the torch thread and return its result (directly when already on it)."""
    if threading.current_thread() is _worker_thread[0]:
        return fn(*args, **kwargs)
    # the caller's context variables go along (e.g. a web framework's per-request progress tracker)
    return WORKERS.submit(contextvars.copy_context().run, fn, *args, **kwargs).result()
