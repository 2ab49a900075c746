"""One cancel flag per browser session and tab, so Stop stops only its own user's run."""

from __future__ import annotations

import threading

import gradio as gr

_flags: dict[tuple[str, str], threading.Event] = {}
_lock = threading.Lock()


def _key(request: gr.Request | None, tab: str) -> tuple[str, str]:
    return (getattr(request, "session_hash", None) or "no-session", tab)


def start(request: gr.Request | None, tab: str) -> threading.Event:
    """A fresh flag for a run that is starting (any older flag of this session/tab is dropped)."""
    flag = threading.Event()
    with _lock:
        _flags[_key(request, tab)] = flag
    return flag


def stop(request: gr.Request | None, tab: str) -> bool:
    """Set the flag of this session's running run in this tab; False when none is running."""
    with _lock:
        flag = _flags.get(_key(request, tab))
    if flag is None or flag.is_set():
        return False
    flag.set()
    return True


def finish(request: gr.Request | None, tab: str, flag: threading.Event) -> None:
    with _lock:
        if _flags.get(_key(request, tab)) is flag:
            del _flags[_key(request, tab)]
