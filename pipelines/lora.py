"""LoRAs: checked before loading, loaded once per model, applied per request.

Files are read only as `.safetensors` (never unpickled). Before anything touches the model, the
file's LoRA layers are converted by diffusers (diffusers/PEFT or kohya/A1111 layouts) and every
layer is matched against the model by name and shape: a file with no LoRA keys, one made for
another architecture, or one that only partly matches is refused with a message, and the model
stays exactly as it was.

Isolation: adapters live on the shared UNet/text encoder, and which ones are active (with which
weights) is global to those modules. `LoraSet.use()` therefore lets requests run together only
when they want the same set; a request that wants another set waits until those finish, and
then the set is switched. A request without LoRAs runs with every adapter disabled.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

from pipelines.loading import HUB_ID, MODELS_DIR
from pipelines.worker import on_worker

LORA_DIR = MODELS_DIR / "loras"
MAX_LORA_BYTES = 512 * 2**20
MAX_LOADED = 8  # adapters kept loaded per model; the least recently used is deleted


class LoraError(ValueError):
    """A LoRA that cannot be used; the message is meant for the user."""


@dataclass(frozen=True)
class LoraInfo:
    name: str  # adapter name: file stem for folder LoRAs, a content hash for uploads
    path: str
    layout: str  # "diffusers/PEFT" or "kohya/A1111"
    layers: int  # LoRA layers that match the model
    text_encoder: bool  # has a text-encoder part
    trigger_words: tuple[str, ...]


def list_loras() -> list[str]:
    """LoRA names in the app's LoRA folder (models/loras/*.safetensors)."""
    return sorted(p.stem for p in LORA_DIR.glob("*.safetensors")) if LORA_DIR.is_dir() else []


def resolve(name_or_path: str, allow_path: bool = False) -> tuple[str, str]:
    """(adapter name, file path) for a LoRA in the LoRA folder, an uploaded file, or a Hub id."""
    name_or_path = (name_or_path or "").strip()
    if name_or_path in list_loras():
        return name_or_path, str(LORA_DIR / f"{name_or_path}.safetensors")
    if allow_path and Path(name_or_path).is_file():
        return "upload-" + _digest(Path(name_or_path))[:12], name_or_path
    if HUB_ID.match(name_or_path):
        return _from_hub(name_or_path)
    raise LoraError(f"{name_or_path!r} is neither a LoRA in models/loras ({', '.join(list_loras()) or 'none'}) "
                    "nor a Hugging Face Hub id.")


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _from_hub(repo_id: str) -> tuple[str, str]:
    from huggingface_hub import HfApi, hf_hub_download

    try:
        files = [f for f in HfApi().list_repo_files(repo_id) if f.endswith(".safetensors")]
        if not files:
            raise LoraError(f"{repo_id} has no .safetensors file; the app never loads pickled weights.")
        path = hf_hub_download(repo_id, files[0])
    except LoraError:
        raise
    except Exception as error:
        raise LoraError(f"Could not download the LoRA {repo_id} from the Hugging Face Hub "
                        f"({type(error).__name__}: no connection, private or misspelled).") from None
    return "hub-" + re.sub(r"[^\w-]", "-", repo_id), path


def read_safetensors(path: str) -> tuple[list[str], dict]:
    """Keys and metadata of a .safetensors file; anything else is refused (never unpickled)."""
    file = Path(path)
    if not file.is_file():
        raise LoraError("The LoRA file does not exist.")
    if file.stat().st_size > MAX_LORA_BYTES:
        raise LoraError(f"The LoRA file is {file.stat().st_size / 2**20:.0f} MiB; at most {MAX_LORA_BYTES >> 20} MiB.")
    try:
        with safe_open(str(file), framework="pt") as f:
            return list(f.keys()), dict(f.metadata() or {})
    except Exception:
        raise LoraError("The LoRA file is not a .safetensors file (pickled .ckpt/.pt/.bin files are never loaded).") from None


def trigger_words(path: str, metadata: dict) -> tuple[str, ...]:
    """From a sidecar `<name>.json` ({"trigger_words": [...]}) or the file's metadata."""
    sidecar = Path(path).with_suffix(".json")
    words = []
    if sidecar.is_file():
        try:
            words = json.loads(sidecar.read_text())["trigger_words"]
        except (ValueError, KeyError, TypeError):
            words = []
    for key in ("trigger_words", "ss_trigger_words", "modelspec.trigger_phrase"):
        if not words and metadata.get(key):
            value = metadata[key]
            try:
                words = json.loads(value)
            except ValueError:
                words = [w.strip() for w in value.split(",")]
    if not words and metadata.get("ss_tag_frequency"):  # kohya: the most frequent tag of each dataset
        try:
            for tags in json.loads(metadata["ss_tag_frequency"]).values():
                words.append(max(tags, key=tags.get))
        except (ValueError, AttributeError, TypeError):
            pass
    return tuple(str(w) for w in words if str(w).strip())


def _down_key(key: str) -> tuple[str, str] | None:
    """(part, module path) of a LoRA down-projection key in any of diffusers' converted layouts."""
    key = re.sub(r"\.processor\.(to_q|to_k|to_v)_lora\.", r".\1.lora.", key)  # older attn-processor layout
    key = key.replace(".processor.to_out_lora.", ".to_out.0.lora.").replace(".lora_linear_layer.", ".lora.")
    # kohya text-encoder keys come back from diffusers in the old layout: self_attn.to_q_lora.down
    key = re.sub(r"\.self_attn\.to_(q|k|v|out)_lora\.", r".self_attn.\1_proj.lora.", key)
    down = re.match(r"^(unet|text_encoder)\.(.+?)\.(lora_A|lora\.down|lora_down)(\.[\w-]+)?\.weight$", key)
    return (down.group(1), down.group(2)) if down else None


def check(pipe, name: str, path: str) -> tuple[LoraInfo, dict]:
    """Validate a LoRA file against a pipeline without changing the pipeline.

    Returns the info and diffusers' converted state dict (ready for `load_lora_weights`).
    """
    keys, metadata = read_safetensors(path)
    layout = "kohya/A1111" if any(k.startswith(("lora_unet_", "lora_te")) for k in keys) else "diffusers/PEFT"
    if not any("lora" in k for k in keys):
        raise LoraError("The file has no LoRA layers (no 'lora' keys): it is not a LoRA.")
    if any(k.startswith(("lora_te2_", "text_encoder_2.")) or "add_embedding" in k for k in keys) \
            and getattr(pipe, "text_encoder_2", None) is None:
        raise LoraError("This LoRA was made for SDXL (it has a second text encoder); the loaded model is not SDXL.")
    try:
        state_dict, _ = pipe.lora_state_dict(path)
    except Exception as error:
        raise LoraError(f"diffusers cannot read this LoRA ({type(error).__name__}: {str(error)[:200]}).") from None
    total, matched, text_encoder = 0, 0, False
    modules = {"unet": dict(pipe.unet.named_modules()), "text_encoder": dict(pipe.text_encoder.named_modules())}
    for key, tensor in state_dict.items():
        down = _down_key(key)
        if not down:
            continue
        total += 1
        part, module_path = down
        text_encoder |= part == "text_encoder"
        # transformers 5 flattened CLIPTextModel; older LoRA files still say text_model.
        module = modules[part].get(module_path) or modules[part].get(module_path.removeprefix("text_model."))
        weight = getattr(module, "weight", None)
        if weight is not None and weight.ndim >= 2 and tensor.shape[1] == weight.shape[1]:
            matched += 1
    if total == 0:
        raise LoraError("No LoRA layer in this file is for a UNet or text encoder of this kind of model.")
    if matched < total:
        raise LoraError(f"Only {matched} of {total} LoRA layers match the loaded model: it was made for another "
                        "base model (diffusers would load it with a warning and it would silently do little).")
    info = LoraInfo(name=name, path=path, layout=layout, layers=total, text_encoder=text_encoder,
                    trigger_words=trigger_words(path, metadata))
    return info, state_dict


class LoraSet:
    """The adapters loaded on one model, and which set is active."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.loaded: dict[str, LoraInfo] = {}
        self.active: tuple = ()
        self.users = 0
        self._changed = threading.Condition()

    def describe(self, loras: list[tuple[str, float]]) -> list[dict]:
        """The LoRA set of a request as recorded in results."""
        return [{"name": n, "weight": float(w), "layout": self.loaded[n].layout} for n, w in loras]

    def load(self, name_or_path: str, allow_path: bool = False) -> LoraInfo:
        """Check and load a LoRA (once); returns its info. Loaded adapters are found by name."""
        return on_worker(self._load, name_or_path, allow_path)  # torch work: on the torch thread

    def _load(self, name_or_path: str, allow_path: bool) -> LoraInfo:
        with self._changed:
            if name_or_path in self.loaded:
                return self.loaded[name_or_path]
        name, path = resolve(name_or_path, allow_path)
        with self._changed:
            if name in self.loaded:
                self.loaded[name] = self.loaded.pop(name)  # most recently used
                return self.loaded[name]
            info, _ = check(self.pipe, name, path)
            self._changed.wait_for(lambda: self.users == 0)
            while len(self.loaded) >= MAX_LOADED:
                self.unload(next(iter(self.loaded)))
            try:
                folder, weight_name = str(Path(path).parent), Path(path).name  # diffusers converts the file itself
                self.pipe.load_lora_weights(folder, weight_name=weight_name, adapter_name=name)
            except Exception as error:
                self._discard_partial(name)
                raise LoraError(f"diffusers could not load this LoRA ({type(error).__name__}: {str(error)[:200]}); "
                                "the model is unchanged.") from None
            self.loaded[name] = info
            self._apply(self.active)  # loading activates the new adapter: restore the active set
            return info

    def _discard_partial(self, name: str) -> None:
        """Remove whatever part of a failed load reached the modules (UNet first, text encoder next)."""
        for module in (self.pipe.unet, self.pipe.text_encoder):
            if name in (getattr(module, "peft_config", None) or {}):
                module.delete_adapters(name) if hasattr(module, "delete_adapters") else None
        self._apply(self.active)

    def unload(self, name: str) -> None:
        """Delete an adapter from the model (callers hold the lock with no users)."""
        if name in self.loaded:
            self.pipe.delete_adapters(name)
            del self.loaded[name]
            self.active = tuple(a for a in self.active if a[0] != name)

    def _apply(self, wanted: tuple) -> None:
        if not self.loaded:
            self.active = ()
            return
        if wanted:
            self.pipe.enable_lora()
            self.pipe.set_adapters([n for n, _ in wanted], adapter_weights=[w for _, w in wanted])
        else:
            self.pipe.disable_lora()
        self.active = wanted

    @contextmanager
    def use(self, loras: list[tuple[str, float]]):
        """Run a request with exactly these (adapter name, weight) pairs active, and nothing else."""
        wanted = tuple((n, float(w)) for n, w in loras if float(w) != 0.0)
        for name, _ in wanted:
            if name not in self.loaded:
                raise LoraError(f"The LoRA {name} is not loaded.")
        with self._changed:
            self._changed.wait_for(lambda: self.users == 0 or self.active == wanted)
            if self.active != wanted:  # no other request is running here
                self._apply(wanted)
            self.users += 1
        try:
            yield
        finally:
            with self._changed:
                self.users -= 1
                self._changed.notify_all()
