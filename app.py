"""Denoise Studio: assembles the Blocks app, its queue and launch options; nothing else.

    python app.py                       # embedded model, http://127.0.0.1:7860
    python app.py --model owner/name    # a Hub model (online) or --model /path/to/diffusers/folder
Every flag has an environment variable (DENOISE_MODEL, DENOISE_DEVICE, …) for Hugging Face Spaces.
"""

from __future__ import annotations

import argparse
import logging
import os

import gradio as gr
from diffusers.utils import logging as diffusers_logging

from pipelines.generation import warm_up
from pipelines.loading import EMBEDDED_MODEL, ModelManager
from pipelines.presets import preset_names
from pipelines.worker import set_threads
from ui import controlnet, inpaint, model_bar, txt2img
from ui.step_viewer import CSS

MAX_UPLOAD = "20mb"
QUEUE_SIZE = 32


def parse_args(argv=None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description="Denoise Studio")
    parser.add_argument("--model", default=env("DENOISE_MODEL", EMBEDDED_MODEL),
                        help="model name in models/, a Hub id, or a local diffusers folder")
    parser.add_argument("--device", default=env("DENOISE_DEVICE"), help="cpu, cuda, cuda:1 … (default: cuda if available)")
    parser.add_argument("--dtype", default=env("DENOISE_DTYPE", "auto"), choices=["auto", "float32", "float16", "bfloat16"])
    parser.add_argument("--taesd", default=env("DENOISE_TAESD"),
                        help="TAESD preview decoder: a folder in models/, a local folder, a Hub id, or taesd / "
                             "taesdxl / taesd3 / taef1 (default: the model's own models/<name>-taesd)")
    parser.add_argument("--threads", type=int, default=int(env("DENOISE_THREADS", "0")),
                        help="torch threads for generation (0: 1 on CPUs with up to 4 cores, where the web server "
                             "needs a core of its own; torch's default elsewhere). See bench/served_latency.py")
    parser.add_argument("--host", default=env("DENOISE_HOST", env("GRADIO_SERVER_NAME", "127.0.0.1")))
    parser.add_argument("--port", type=int, default=int(env("DENOISE_PORT", env("GRADIO_SERVER_PORT", "7860"))))
    parser.add_argument("--share", action="store_true", default=env("DENOISE_SHARE", "") == "1")
    return parser.parse_args(argv)


def default_threads(device: str) -> int:
    """Measured (bench/served_latency.py): on a small CPU, torch threads on every core fight the web
    server for them, and one thread served faster; bigger machines keep torch's default."""
    cores = os.cpu_count() or 1
    return 1 if device == "cpu" and cores <= 4 else 0


def build_app(manager: ModelManager) -> gr.Blocks:
    with gr.Blocks(title="Denoise Studio", delete_cache=(600, 3600)) as demo:
        gr.Markdown("# Denoise Studio\nWatch noise become a picture, one denoising step at a time.",
                    elem_classes="ds-title")
        model_choice = model_bar.build(manager)
        with gr.Tabs() as tabs:
            with gr.Tab("Text to image", id="txt2img"):
                text = txt2img.build(manager, model_choice)
            with gr.Tab("Inpaint", id="inpaint"):
                paint = inpaint.build(manager, model_choice)
            with gr.Tab("ControlNet", id="controlnet"):
                control = controlnet.build(manager, model_choice)
        with text["send_row"]:
            to_inpaint = gr.Button("Send to inpaint", size="sm", elem_id="send-to-inpaint")
            to_control = gr.Button("Send to ControlNet", size="sm", elem_id="send-to-controlnet")
        to_inpaint.click(lambda image: ({"background": image, "layers": [], "composite": image},
                                        gr.Tabs(selected="inpaint")),
                         text["result"], [paint["editor"], tabs], queue=False, api_visibility="private")
        # preset files added while the app runs appear on the next page load
        presets = [tab["controls"].preset for tab in (text, paint, control)]
        demo.load(lambda: [gr.update(choices=preset_names())] * len(presets), None, presets, queue=False,
                  api_visibility="private")
        to_control.click(lambda image: (image, gr.Tabs(selected="controlnet")), text["result"],
                         [control["picture"], tabs], queue=False, api_visibility="private")
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
    return demo


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    diffusers_logging.set_verbosity_error()
    manager = ModelManager(default=args.model, device=args.device, dtype=args.dtype, allow_any_path=True,
                           taesd=args.taesd)
    set_threads(args.threads or default_threads(manager.device))
    warm_up(manager.get())  # load and run once before serving, so the first visitor does not wait
    demo = build_app(manager)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, max_file_size=MAX_UPLOAD,
                css=CSS, footer_links=["api"])


if __name__ == "__main__":
    main()
