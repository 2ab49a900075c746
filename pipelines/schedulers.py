"""Schedulers offered by friendly names, each built fresh for one request.

Schedulers keep per-run state (`set_timesteps`, step index, multistep history), so a scheduler
shared between two requests is a race. Every request gets its own instance made with
`from_config` from the loaded model's scheduler config, which keeps what the model was trained
with (prediction type, beta schedule, zero-terminal-SNR rescaling, timestep spacing).
"""

from __future__ import annotations

import diffusers

# friendly name -> (diffusers class name, config overrides)
SCHEDULERS: dict[str, tuple[str, dict]] = {
    "DDIM": ("DDIMScheduler", {}),
    "DDPM": ("DDPMScheduler", {}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "PNDM": ("PNDMScheduler", {"skip_prk_steps": True}),
    "DEIS": ("DEISMultistepScheduler", {}),
}

DEFAULT_SCHEDULER = "model default"


class SchedulerError(ValueError):
    """A scheduler name the app does not offer."""


def scheduler_names() -> list[str]:
    """Names for the UI: the model's own scheduler first, then the friendly names."""
    return [DEFAULT_SCHEDULER, *SCHEDULERS]


def make_scheduler(name: str, base):
    """Build a new scheduler instance for one request.

    Args:
        name: one of `scheduler_names()`; "model default" (or empty) rebuilds the model's own class.
        base: the loaded pipeline's scheduler; its config keeps the model's noise schedule and
            prediction type whatever sampler is chosen. It is only read, never stepped.
    """
    base_config = base.config
    if not name or name == DEFAULT_SCHEDULER:
        return type(base).from_config(base_config)
    if name not in SCHEDULERS:
        raise SchedulerError(f"Unknown scheduler {name!r}. Choose one of: {', '.join(SCHEDULERS)}.")
    class_name, overrides = SCHEDULERS[name]
    config = dict(base_config)
    if class_name in ("EulerDiscreteScheduler", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler") and config.get(
        "rescale_betas_zero_snr"
    ):
        # The last sigma of a zero-SNR schedule is infinite; these samplers must end on sigma 0.
        overrides = {**overrides, "final_sigmas_type": "zero"}
    return getattr(diffusers, class_name).from_config(config, **overrides)


def describe(scheduler) -> str:
    """Short human-readable name for metadata: the friendly name when it matches one."""
    cls = type(scheduler).__name__
    karras = bool(getattr(scheduler.config, "use_karras_sigmas", False))
    for friendly, (class_name, overrides) in SCHEDULERS.items():
        if class_name == cls and bool(overrides.get("use_karras_sigmas", False)) == karras:
            return friendly
    return cls
