"""The model picker above the tabs: embedded/local models by name, or a Hub id (online)."""

from __future__ import annotations

import gradio as gr

from pipelines.loading import list_local_models
from ui.controls import user_error


def build(manager) -> gr.Dropdown:
    with gr.Row(equal_height=True, elem_classes="ds-model-bar"):
        choices = sorted(set(list_local_models()) | {manager.default})
        model = gr.Dropdown(choices, value=manager.default, allow_custom_value=True, scale=4,
                            label="Model", info="a model in models/, or a Hugging Face Hub id such as owner/name")
        load = gr.Button("Load", scale=1)
        status = gr.Markdown(describe(manager, manager.default), elem_classes="ds-model-status")

    def load_model(name, progress=gr.Progress(track_tqdm=True)):
        try:
            manager.get(name, progress=lambda fraction, message: progress(fraction, desc=message))
        except Exception as error:
            raise user_error(error) from None
        return describe(manager, name)

    load.click(load_model, model, status, concurrency_id="model", api_visibility="private")
    return model


def describe(manager, name: str) -> str:
    loaded = manager.get(name) if name in manager.loaded() else None
    if loaded is None:
        return f"`{name}` will load on first use."
    pipe = loaded.pipe
    size = sum(p.numel() for p in pipe.unet.parameters()) / 1e6
    return (f"**{loaded.name}** · {type(pipe).__name__} · UNet {size:.1f} M parameters · "
            f"{loaded.default_size}px · {loaded.device}/{str(loaded.dtype).removeprefix('torch.')} · "
            f"source: `{loaded.source}`")
