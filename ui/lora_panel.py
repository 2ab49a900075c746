"""LoRA panel used by every generation tab: up to three LoRAs, each with a weight and a switch."""

from __future__ import annotations

import gradio as gr

from pipelines.lora import LORA_DIR, LoraError, list_loras, read_safetensors, trigger_words
from ui.controls import user_error

SLOTS = 3


def describe_triggers(names: list[str]) -> str:
    lines = []
    for name in names:
        if name in list_loras():
            path = str(LORA_DIR / f"{name}.safetensors")
            try:
                words = trigger_words(path, read_safetensors(path)[1])
            except LoraError:
                words = ()
            if words:
                lines.append(f"**{name}** trigger words: " + ", ".join(f"`{w}`" for w in words))
    return "\n\n".join(lines)


class LoraPanel:
    """`selection` (a hidden JSON) always holds [[name, weight], …] of the enabled slots."""

    def __init__(self, tab: str, manager, model_choice: gr.Dropdown):
        with gr.Accordion("LoRA", open=False, elem_id=f"{tab}-lora"):
            self.slots = []
            for i in range(SLOTS):
                with gr.Row(equal_height=True):
                    name = gr.Dropdown(list_loras(), value=None, allow_custom_value=True, label=f"LoRA {i + 1}",
                                       info="models/loras, an upload, or a Hub id (online)" if i == 0 else None,
                                       scale=3, elem_id=f"{tab}-lora-{i}")
                    weight = gr.Slider(-2, 2, value=1.0, step=0.05, label="Weight", scale=2)
                    enabled = gr.Checkbox(value=True, label="On", scale=0, min_width=60)
                self.slots.append((name, weight, enabled))
            upload = gr.File(label="Upload a LoRA (.safetensors)", file_types=[".safetensors"], type="filepath")
            self.triggers = gr.Markdown()
        self.selection = gr.JSON(value=[], visible=False)
        widgets = [w for slot in self.slots for w in slot]
        for widget in widgets:
            widget.change(self.collect, widgets, [self.selection, self.triggers], queue=False,
                          api_visibility="private")

        def add_upload(path, model_name):
            if not path:
                return gr.skip()
            try:
                info = manager.get(model_name).loras.load(path, allow_path=True)
            except Exception as error:
                raise user_error(error) from None
            gr.Info(f"Loaded {info.layers} LoRA layers ({info.layout}) as {info.name}")
            return gr.update(choices=sorted(set(list_loras()) | {info.name}), value=info.name)

        upload.upload(add_upload, [upload, model_choice], self.slots[0][0], concurrency_id="model",
                      api_visibility="private")

    @staticmethod
    def collect(*values):
        chosen = []
        for i in range(0, len(values), 3):
            name, weight, enabled = values[i: i + 3]
            if name and enabled:
                chosen.append([name, float(weight)])
        return chosen, describe_triggers([n for n, _ in chosen])
