"""The one thread that runs torch work: model loading, LoRA/ControlNet loading and generation.

torch's OpenMP thread team belongs to the calling thread. Torch work on a second thread (a thread
per request, or generating on the main thread and on another) leaves two teams competing for a few
cores: measured 3-80x slower steps with a thread per request, and 0.8 s -> 2.4 s per 25-step image
after one generation on the main thread. So every torch call goes through `on_worker`, which runs
it on this single long-lived thread.

A generation holds the thread for its whole run. Small jobs that a user waits for while someone
else generates (decoding one preview picture when they scrub) go through `on_worker_soon`: they run
between two denoising steps of the running generation (it calls `run_soon_jobs` after each step),
or right away when the thread is idle, so they wait one step, never a whole run."""

from __future__ import annotations

import contextvars
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, TypeVar

import torch

T = TypeVar("T")

WORKERS = ThreadPoolExecutor(max_workers=1, thread_name_prefix="denoise-torch")
_worker_thread: list[threading.Thread] = []
WORKERS.submit(lambda: _worker_thread.append(threading.current_thread())).result()
_soon: queue.SimpleQueue = queue.SimpleQueue()


def on_worker_thread() -> bool:
    return threading.current_thread() is _worker_thread[0]


def on_worker(fn: Callable[..., T], *args, **kwargs) -> T:
    """Run fn on the torch thread and return its result (directly when already on it)."""
    if on_worker_thread():
        return fn(*args, **kwargs)
    # the caller's context variables go along (e.g. a web framework's per-request progress tracker)
    return WORKERS.submit(contextvars.copy_context().run, fn, *args, **kwargs).result()


def on_worker_soon(fn: Callable[..., T], *args, **kwargs) -> T:
    """Run a short fn on the torch thread at its next free moment (between two steps of a running
    generation) and return its result."""
    if on_worker_thread():
        return fn(*args, **kwargs)
    future: Future = Future()
    _soon.put((future, contextvars.copy_context(), fn, args, kwargs))
    WORKERS.submit(run_soon_jobs)  # for when no generation is running to pick it up
    return future.result()


def run_soon_jobs() -> None:
    """Run the queued `on_worker_soon` jobs; called on the torch thread (after each step, and idle)."""
    while True:
        try:
            future, context, fn, args, kwargs = _soon.get_nowait()
        except queue.Empty:
            return
        if not future.set_running_or_notify_cancel():
            continue
        try:
            future.set_result(context.run(fn, *args, **kwargs))
        except BaseException as error:  # handed to the waiting caller
            future.set_exception(error)


def set_threads(threads: int) -> int:
    """Set the torch thread's intra-op thread count (0: leave torch's default); returns the count."""
    if threads:
        on_worker(torch.set_num_threads, int(threads))
    return on_worker(torch.get_num_threads)
