"""ControlNet on the loaded model: control pictures, preprocessors and ControlNet models.

Preprocessors come from controlnet-aux. Those that are plain image filters run offline; those that
need downloaded annotator weights say so clearly when the Hub cannot be reached.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from diffusers import ControlNetModel, MultiControlNetModel, StableDiffusionControlNetPipeline
from PIL import Image

from pipelines.generation import GenerationError, GenerationRequest, GenerationResult, StepEvent, as_number, stream
from pipelines.inputs import prepare_picture
from pipelines.loading import HUB_ID, MODELS_DIR, ModelLoadError
from pipelines.worker import on_worker

EMBEDDED_CONTROLNET = "denoise-tiny-controlnet-canny"
CANNY_DEFAULT = (50, 100)  # low/high thresholds: those the embedded ControlNet was trained with (its model card)

# name -> controlnet_aux class; these need no downloaded weights
OFFLINE_PREPROCESSORS = {"canny": "CannyDetector", "shuffle": "ContentShuffleDetector",
                         "lineart (standard)": "LineartStandardDetector", "none (use the picture as is)": None}
# name -> controlnet_aux class that loads annotator weights from the Hub (online only)
HUB_PREPROCESSORS = {"softedge (HED)": "HEDdetector", "softedge (PiDiNet)": "PidiNetDetector",
                     "lines (M-LSD)": "MLSDdetector", "depth (MiDaS)": "MidasDetector", "depth (ZoeDepth)": "ZoeDetector",
                     "depth (LeReS)": "LeresDetector", "pose (OpenPose)": "OpenposeDetector",
                     "lineart": "LineartDetector", "lineart (anime)": "LineartAnimeDetector",
                     "normals (BAE)": "NormalBaeDetector"}
ANNOTATORS_REPO = "lllyasviel/Annotators"


def preprocessor_names() -> list[str]:
    return [*OFFLINE_PREPROCESSORS, *HUB_PREPROCESSORS]


_hub_detectors: dict[str, object] = {}


def preprocess(name: str, picture: Image.Image, low_threshold: int = CANNY_DEFAULT[0],
               high_threshold: int = CANNY_DEFAULT[1]) -> Image.Image:
    """Turn an RGB picture into a control picture of the same size."""
    import controlnet_aux

    side = max(picture.size)
    if name in OFFLINE_PREPROCESSORS:
        class_name = OFFLINE_PREPROCESSORS[name]
        if class_name is None:
            return picture
        detector = getattr(controlnet_aux, class_name)()
        kwargs = dict(detect_resolution=side, output_type="pil")
        if name != "lineart (standard)":
            kwargs["image_resolution"] = side
        if name == "canny":
            if not 0 <= low_threshold <= high_threshold <= 255:
                raise GenerationError("Canny thresholds must satisfy 0 ≤ low ≤ high ≤ 255.")
            kwargs.update(low_threshold=int(low_threshold), high_threshold=int(high_threshold))
        out = detector(np.asarray(picture), **kwargs)
    elif name in HUB_PREPROCESSORS:
        if name not in _hub_detectors:
            try:
                _hub_detectors[name] = getattr(controlnet_aux, HUB_PREPROCESSORS[name]).from_pretrained(ANNOTATORS_REPO)
            except Exception as error:  # offline, or the annotator repository changed
                raise GenerationError(f"The {name} preprocessor needs annotator weights from the Hugging Face Hub "
                                      f"({ANNOTATORS_REPO}), which could not be loaded ({type(error).__name__}). "
                                      f"Offline, use one of: {', '.join(OFFLINE_PREPROCESSORS)}.") from None
        # these annotators are torch models: torch work belongs on the torch thread
        out = on_worker(_hub_detectors[name], picture, detect_resolution=side, image_resolution=side)
    else:
        raise GenerationError(f"Unknown preprocessor {name!r}. Choose one of: {', '.join(preprocessor_names())}.")
    return out.convert("RGB").resize(picture.size, Image.NEAREST)


_controlnets: dict[tuple[str, str], ControlNetModel] = {}
_lock = threading.Lock()


def list_controlnets() -> list[str]:
    """Folder names inside `models/` that hold a ControlNet (a config.json, no model_index.json)."""
    if not MODELS_DIR.is_dir():
        return []
    return sorted(p.name for p in MODELS_DIR.iterdir() if (p / "config.json").is_file()
                  and not (p / "model_index.json").is_file())


def load_controlnet(model, name: str = EMBEDDED_CONTROLNET, allow_any_path: bool = False) -> ControlNetModel:
    """A ControlNet for the loaded model, loaded once: a folder in models/, a Hub id, or (command
    line only) a local folder. Without the embedded one, a random-weight stand-in is made."""
    return on_worker(_load_controlnet, model, name, allow_any_path)  # torch work: on the torch thread


def _load_controlnet(model, name: str, allow_any_path: bool) -> ControlNetModel:
    name = (name or EMBEDDED_CONTROLNET).strip()
    if name in list_controlnets():  # a name is a path only when it is one of our own folders
        source = str(MODELS_DIR / name)
    elif name == EMBEDDED_CONTROLNET:
        source = None  # not shipped in this checkout: a random-weight stand-in made from the UNet
    elif allow_any_path and Path(name).is_dir():
        source = name
    elif HUB_ID.match(name):
        source = name
    else:
        raise ModelLoadError(f"{name!r} is neither a ControlNet folder in models/ nor a Hub id.")
    key = (source or name, str(id(model.pipe.unet)))
    with _lock:
        if key in _controlnets:
            return _controlnets[key]
        if source is None:
            controlnet = ControlNetModel.from_unet(model.pipe.unet, conditioning_embedding_out_channels=(16, 32, 64)[
                : len(model.pipe.vae.config.block_out_channels)])
        else:
            try:
                controlnet = ControlNetModel.from_pretrained(source, torch_dtype=model.dtype, use_safetensors=True)
            except (OSError, ValueError) as error:
                raise ModelLoadError(f"Could not load the ControlNet {name}: {str(error).splitlines()[0]}") from None
        if controlnet.config.cross_attention_dim != model.pipe.unet.config.cross_attention_dim:
            raise ModelLoadError(f"The ControlNet {name} was made for another base model "
                                 f"(cross-attention {controlnet.config.cross_attention_dim}, "
                                 f"model {model.pipe.unet.config.cross_attention_dim}).")
        controlnet = controlnet.to(model.device, model.dtype)
        _controlnets[key] = controlnet
        return controlnet


_multis: dict[tuple[int, ...], MultiControlNetModel] = {}


def _multi(controlnets: list[ControlNetModel]) -> MultiControlNetModel:
    """One MultiControlNetModel per combination, so derived pipelines are cached, not rebuilt."""
    key = tuple(id(c) for c in controlnets)
    if key not in _multis:
        _multis[key] = MultiControlNetModel(controlnets)
    return _multis[key]


def _floats(values, what: str) -> list[float]:
    if values is None or isinstance(values, (int, float, str)) or not hasattr(values, "__iter__"):
        values = [values]
    return [as_number(v, what) for v in values]


def controlnet_stream(model, request: GenerationRequest, control_images: list, controlnets: list[ControlNetModel],
                      scales: list[float], guidance_start: float = 0.0, guidance_end: float = 1.0,
                      cancel: threading.Event | None = None, names: list[str] | None = None,
                      notes: list[str] | None = None,
                      live_view: Callable[[], str] | None = None) -> Iterator[StepEvent | GenerationResult]:
    """Stream a ControlNet run (one or several ControlNets, each with its control picture).

    `notes` are earlier adjustments (made while preprocessing) to report with the result.
    """
    if not control_images or any(c is None for c in control_images):
        raise GenerationError("No control picture was given: upload one or send the last result here.")
    # diffusers insists on Python floats (an int 1 from a slider or the API is refused), so coerce here
    scales, guidance_start, guidance_end = _floats(scales, "conditioning scale"), \
        as_number(guidance_start, "control start"), as_number(guidance_end, "control end")
    if not 0 <= guidance_start < guidance_end <= 1:
        raise GenerationError("Control start and end must satisfy 0 ≤ start < end ≤ 1.")
    if len(scales) != len(controlnets) or len(control_images) != len(controlnets):
        raise GenerationError(f"Each ControlNet needs one control picture and one conditioning scale; got "
                              f"{len(controlnets)} ControlNet(s), {len(control_images)} picture(s), "
                              f"{len(scales)} scale(s).")
    notes, prepared = list(notes or []), []
    target = max(request.width, request.height) or None
    for control in control_images:
        picture, more = prepare_picture(control, model, target_side=target, what="control picture")
        prepared.append(picture)
        notes += more
    if len({p.size for p in prepared}) > 1:
        raise GenerationError("All control pictures must have the same aspect ratio.")
    request.width, request.height = prepared[0].size
    controlnet = controlnets[0] if len(controlnets) == 1 else _multi(controlnets)
    single = len(controlnets) == 1
    settings = dict(task="controlnet", controlnet=names or [], conditioning_scale=scales,
                    control_guidance_start=guidance_start, control_guidance_end=guidance_end)
    for item in stream(model, StableDiffusionControlNetPipeline, request, cancel,
                       extra_call_args=dict(image=prepared[0] if single else prepared,
                                            controlnet_conditioning_scale=scales[0] if single else scales,
                                            control_guidance_start=guidance_start, control_guidance_end=guidance_end),
                       extra_components=dict(controlnet=controlnet), extra_settings=settings,
                       live_view=live_view):
        if isinstance(item, GenerationResult):
            item.notes = notes + item.notes
        yield item
