"""Schedulers offered by friendly names, each built fresh for one request.

Schedulers keep per-run state (`set_timesteps`, step index, multistep history), so a scheduler
shared between two requests is a race. Every request gets its own instance made with
`from_config` from the loaded model's scheduler config, which keeps what the model was trained
with (prediction type, beta schedule, zero-terminal-SNR rescaling, timestep spacing).
"""

from __future__ import annotations

import functools

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
        return _starts_at_first_step(type(base).from_config(base_config))
    if name not in SCHEDULERS:
        raise SchedulerError(f"Unknown scheduler {name!r}. Choose one of: {', '.join(SCHEDULERS)}.")
    class_name, overrides = SCHEDULERS[name]
    config = dict(base_config)
    if class_name in ("EulerDiscreteScheduler", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler") and config.get(
        "rescale_betas_zero_snr"
    ):
        # The last sigma of a zero-SNR schedule is infinite; these samplers must end on sigma 0.
        overrides = {**overrides, "final_sigmas_type": "zero"}
    return _starts_at_first_step(getattr(diffusers, class_name).from_config(config, **overrides))


def _starts_at_first_step(scheduler):
    """Make a run that begins at the schedule's first timestep begin at its first step.

    Schedulers with a step index find the first step by looking its timestep up in `timesteps`,
    and when that timestep occurs twice they take the second occurrence (meant for img2img runs
    that start mid-schedule). Karras sigmas on a zero-terminal-SNR schedule (σ_max ≈ 4096) put
    several sigmas above ~1000 that all round to t=999, 998, …, so from 21 steps on the
    schedule starts [999, 999, 998, …]: the first step then takes sigma #1, every later one is
    one off, and the last step reads past the end of `sigmas` (IndexError). Text-to-image
    pipelines never call `set_begin_index(0)`, so when the first timestep is ambiguous we set it
    here after every `set_timesteps`; pipelines that start later (img2img, inpaint) call
    `set_begin_index` themselves afterwards, which overrides it.
    """
    if not (hasattr(scheduler, "set_begin_index") and hasattr(scheduler, "index_for_timestep")):
        return scheduler  # DDIM, DDPM, PNDM: they step by timestep, no index to get wrong
    original = scheduler.set_timesteps

    # wraps: keeps set_timesteps' signature visible (pipelines inspect it for `timesteps`/`sigmas`)
    @functools.wraps(original)
    def set_timesteps(*args, **kwargs):
        result = original(*args, **kwargs)
        timesteps = scheduler.timesteps
        if len(timesteps) > 1 and scheduler.index_for_timestep(timesteps[0]) != 0:
            scheduler.set_begin_index(0)
        return result

    scheduler.set_timesteps = set_timesteps  # an instance attribute: only this request's scheduler
    return scheduler


def describe(scheduler) -> str:
    """Short human-readable name for metadata: the friendly name when it matches one."""
    cls = type(scheduler).__name__
    karras = bool(getattr(scheduler.config, "use_karras_sigmas", False))
    for friendly, (class_name, overrides) in SCHEDULERS.items():
        if class_name == cls and bool(overrides.get("use_karras_sigmas", False)) == karras:
            return friendly
    return cls
