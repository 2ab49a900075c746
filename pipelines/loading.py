"""Loading models and sharing their components between tasks.

A model is named by the user as one of:
- "denoise-tiny" (the embedded default, shipped in `models/`), or any other folder inside
  `models/` by its folder name;
- a Hugging Face Hub id such as "stable-diffusion-v1-5/stable-diffusion-v1-5" (online path);
- a local diffusers folder, only when the operator gives it on the command line
  (`allow_any_path=True`): a string typed in the browser never becomes a path outside `models/`.

Each model is loaded once. Inpainting and ControlNet pipelines are derived with `from_pipe`,
so they share every weight with the text-to-image pipeline, and each request gets its own
lightweight pipeline object (`request_pipeline`) holding its own scheduler and interrupt flag.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from diffusers import AutoPipelineForText2Image, DiffusionPipeline

from pipelines.tiny import STAND_IN_NAME, tiny_pipeline
from pipelines.worker import on_worker

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO_ROOT / "models"
EMBEDDED_MODEL = "denoise-tiny"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")


class ModelLoadError(Exception):
    """A model could not be loaded; the message is meant for the user."""


@dataclass
class LoadedModel:
    name: str  # what the user asked for
    source: str  # folder path or Hub id actually loaded
    pipe: DiffusionPipeline  # the text-to-image pipeline; owns all components
    device: str
    dtype: torch.dtype
    derived: dict = field(default_factory=dict)  # pipeline class -> pipeline sharing components
    taesd: object = None  # optional AutoencoderTiny for fast previews
    cache: dict = field(default_factory=dict)  # things computed once for this model (fitted preview map, …)
    _loras: object = None

    @property
    def loras(self):
        """The model's `LoraSet` (adapters loaded on the shared UNet and text encoder)."""
        if self._loras is None:
            from pipelines.lora import LoraSet

            self._loras = LoraSet(self.pipe)
        return self._loras

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Picture sizes must be multiples of this (VAE factor × UNet downsampling)."""
        return self.vae_scale_factor * 2 ** (len(self.pipe.unet.config.block_out_channels) - 1)

    @property
    def default_size(self) -> int:
        size = self.pipe.unet.config.sample_size
        size = size[0] if isinstance(size, (list, tuple)) else size
        return int(size) * self.vae_scale_factor

    @property
    def prediction_type(self) -> str:
        return self.pipe.scheduler.config.get("prediction_type", "epsilon")

    def derive(self, pipeline_class, **components) -> DiffusionPipeline:
        """A pipeline of another class on the same weights (`from_pipe`, cached).

        Extra components (a ControlNet) are added without copying the shared ones.
        """
        key = (pipeline_class, tuple(sorted((k, id(v)) for k, v in components.items())))
        if key not in self.derived:
            derived = pipeline_class.from_pipe(self.pipe, **components)
            derived.set_progress_bar_config(disable=True)
            self.derived[key] = derived
        return self.derived[key]


def list_local_models() -> list[str]:
    """Folder names inside `models/` that hold a diffusers pipeline."""
    if not MODELS_DIR.is_dir():
        return []
    return sorted(p.name for p in MODELS_DIR.iterdir() if (p / "model_index.json").is_file())


def resolve_source(name: str, allow_any_path: bool = False) -> str:
    """Turn a user's model name into a folder path or a Hub id; refuse anything else."""
    name = (name or EMBEDDED_MODEL).strip()
    if name in list_local_models():
        return str(MODELS_DIR / name)
    if name == EMBEDDED_MODEL:
        return STAND_IN_NAME
    if allow_any_path and Path(name).expanduser().is_dir():
        folder = Path(name).expanduser().resolve()
        if not (folder / "model_index.json").is_file():
            raise ModelLoadError(f"{folder} is not a diffusers model folder (it has no model_index.json).")
        return str(folder)
    if HUB_ID.match(name) and ".." not in name:
        return name
    raise ModelLoadError(
        f"{name!r} is neither a model in the app's models/ folder ({', '.join(list_local_models()) or 'none'}) "
        "nor a Hugging Face Hub id like 'owner/model-name'."
    )


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype in ("auto", "", None):
        return torch.float16 if device.startswith("cuda") else torch.float32
    try:
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    except KeyError:
        raise ModelLoadError(f"Unknown dtype {dtype!r}: use auto, float32, float16 or bfloat16.") from None


def load_model(
    name: str = EMBEDDED_MODEL,
    device: str | None = None,
    dtype: str = "auto",
    allow_any_path: bool = False,
    progress: Callable[[float, str], None] | None = None,
) -> LoadedModel:
    """Load a text-to-image pipeline (only `.safetensors` weights are accepted).

    Args:
        name: see the module docstring.
        device: "cpu", "cuda", "cuda:1", …; default: cuda when available.
        dtype: "auto" (float16 on GPU, float32 on CPU), "float32", "float16" or "bfloat16".
        allow_any_path: accept any local folder (command-line use only).
        progress: called with (fraction, message) as loading proceeds.
    """
    device = device or default_device()
    torch_dtype = resolve_dtype(dtype, device)
    source = resolve_source(name, allow_any_path)
    report = progress or (lambda fraction, message: None)
    report(0.0, f"Loading {name} …")
    if source == STAND_IN_NAME:
        pipe = tiny_pipeline()
    else:
        pipe = _from_pretrained(source, torch_dtype)
    pipe.set_progress_bar_config(disable=True)
    try:
        pipe.to(device)
    except (RuntimeError, AssertionError) as error:
        raise ModelLoadError(f"Could not move the model to {device}: {error}") from error
    report(1.0, f"Loaded {name}")
    return LoadedModel(name=name or EMBEDDED_MODEL, source=source, pipe=pipe, device=device, dtype=torch_dtype)


def _from_pretrained(source: str, torch_dtype: torch.dtype) -> DiffusionPipeline:
    folder = Path(source)
    is_local = folder.is_dir()
    kwargs = dict(torch_dtype=torch_dtype, use_safetensors=True)
    try:
        index = DiffusionPipeline.load_config(source)
        if "safety_checker" in index:
            kwargs.update(safety_checker=None, requires_safety_checker=False)
        return AutoPipelineForText2Image.from_pretrained(source, **kwargs)
    except ModelLoadError:
        raise
    except (OSError, ValueError, EnvironmentError) as error:
        text = str(error)
        if is_local:
            raise ModelLoadError(f"Could not load the diffusers model in {folder.name}: {text.splitlines()[0]}") from error
        if "safetensors" in text.lower():
            raise ModelLoadError(f"{source} has no .safetensors weights; the app never loads pickled weights.") from error
        raise ModelLoadError(
            f"Could not download {source} from the Hugging Face Hub (no connection, a private/misspelled "
            f"repository, or not a diffusers model): {text.splitlines()[0] if text else type(error).__name__}"
        ) from error


TAESD_VARIANTS = ("taesd", "taesdxl", "taesd3", "taef1")  # madebyollin's, for SD1.x/2.x, SDXL, SD3, Flux


def load_taesd(source: str, device: str, dtype: torch.dtype, allow_any_path: bool = False,
               latent_channels: int | None = None):
    """TAESD preview decoder (`AutoencoderTiny`) from a folder in models/, a local folder
    (command line only), a Hub id or a variant name (`TAESD_VARIANTS`, from madebyollin); it must
    match the model's latent space (`latent_channels`: 4 for SD1.x/SDXL, 16 for SD3/Flux)."""
    from diffusers import AutoencoderTiny

    if source in TAESD_VARIANTS:
        source = f"madebyollin/{source}"
    if MODELS_DIR.is_dir() and source in {p.name for p in MODELS_DIR.iterdir() if p.is_dir()}:
        source = str(MODELS_DIR / source)
    elif not (allow_any_path and Path(source).is_dir()) and not HUB_ID.match(source):
        raise ModelLoadError(f"{source!r} is neither a folder in models/ nor a Hugging Face Hub id.")
    try:
        taesd = AutoencoderTiny.from_pretrained(source, torch_dtype=dtype, use_safetensors=True).to(device)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"Could not load the TAESD decoder {source}: {str(error).splitlines()[0]}") from error
    if latent_channels is not None and taesd.config.latent_channels != latent_channels:
        raise ModelLoadError(f"The TAESD decoder {source} reads {taesd.config.latent_channels}-channel latents but the "
                             f"model makes {latent_channels}-channel ones: use one of {', '.join(TAESD_VARIANTS)} "
                             "that matches the model's family.")
    return taesd


def own_taesd(source: str) -> str | None:
    """The TAESD preview decoder shipped for a model in models/ (`models/<name>-taesd`), if any."""
    folder = Path(source)
    if folder.parent == MODELS_DIR and (MODELS_DIR / f"{folder.name}-taesd" / "config.json").is_file():
        return f"{folder.name}-taesd"
    return None


class ModelManager:
    """Keeps the loaded model(s); one load at a time, nothing loaded twice.

    Args:
        default: model name used when a request names none.
        keep: how many models stay in memory (least recently used is dropped).
    """

    def __init__(self, default: str = EMBEDDED_MODEL, device: str | None = None, dtype: str = "auto",
                 allow_any_path: bool = False, keep: int = 1, taesd: str | None = None):
        self.default = default
        self.device = device or default_device()
        self.dtype = dtype
        self.allow_any_path = allow_any_path
        self.keep = keep
        self.taesd = taesd
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def get(self, name: str | None = None, progress: Callable[[float, str], None] | None = None) -> LoadedModel:
        with self._lock:  # a loaded model is a lookup: no trip to the (maybe busy) torch thread
            model = self._models.get((name or self.default).strip())
        if model is not None:
            return model
        return on_worker(self._get, name, progress)  # loading is torch work too: keep it on one thread

    def _get(self, name: str | None, progress: Callable[[float, str], None] | None) -> LoadedModel:
        name = (name or self.default).strip()
        with self._lock:
            if name in self._models:
                self._models[name] = self._models.pop(name)  # mark most recently used
                return self._models[name]
            model = load_model(name, self.device, self.dtype, self.allow_any_path, progress)
            taesd = self.taesd or own_taesd(model.source)
            if taesd:
                model.taesd = load_taesd(taesd, model.device, model.dtype, self.allow_any_path,
                                         latent_channels=model.pipe.vae.config.latent_channels)
            self._models[name] = model
            while len(self._models) > self.keep:
                self._models.pop(next(iter(self._models)))
            return model

    def loaded(self) -> list[str]:
        return list(self._models)
