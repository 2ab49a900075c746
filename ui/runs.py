"""One control per browser session and tab for the run going on: Stop stops only its own user's
run, and a view switch changes only what that run decodes live."""

from __future__ import annotations

import threading

import gradio as gr


class RunControl:
    """What a user can change while their run goes on."""

    def __init__(self, view: str):
        self.cancel = threading.Event()
        self.view = view  # "x_t", "x0" or "eps": decoded live at each step

    def watched(self) -> str:
        return self.view


_controls: dict[tuple[str, str], RunControl] = {}
_lock = threading.Lock()


def _key(request: gr.Request | None, tab: str) -> tuple[str, str]:
    return (getattr(request, "session_hash", None) or "no-session", tab)


def start(request: gr.Request | None, tab: str, view: str) -> RunControl:
    """A fresh control for a run that is starting (any older one of this session/tab is dropped)."""
    control = RunControl(view)
    with _lock:
        _controls[_key(request, tab)] = control
    return control


def current(request: gr.Request | None, tab: str) -> RunControl | None:
    with _lock:
        return _controls.get(_key(request, tab))


def stop(request: gr.Request | None, tab: str) -> bool:
    """Stop this session's running run in this tab; False when none is running."""
    control = current(request, tab)
    if control is None or control.cancel.is_set():
        return False
    control.cancel.set()
    return True


def finish(request: gr.Request | None, tab: str, control: RunControl) -> None:
    with _lock:
        if _controls.get(_key(request, tab)) is control:
            del _controls[_key(request, tab)]
