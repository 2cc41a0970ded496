"""Sampler names: the table of every sampler by the names AUTOMATIC1111's web UI and ComfyUI made standard.

:data:`SAMPLERS` is the one table: display name, snake-case aliases, the function that runs it and how it is fed.
Names are looked up case-insensitively and may end in a schedule (``"DPM++ 2M Karras"``, ``"euler_a_exponential"``);
:func:`sampler_choice` checks a name, a schedule and η together. The front-end that runs an entry is
:class:`~ldm.models.diffusion.named_samplers.NamedSampler`.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch

from ldm.models.diffusion.sampler_core import declared_keywords

K_SAMPLERS = "ldm.models.diffusion.k_samplers"
UNI_PC = "ldm.models.diffusion.uni_pc"

#: Noise-level schedules (``schedule_sigmas`` of :mod:`ldm.models.diffusion.k_samplers`); "uniform" = "normal".
SCHEDULES = ("normal", "karras", "exponential", "polyexponential", "simple", "ddim_uniform")
SCHEDULE_ALIASES = {"uniform": "normal"}


class Family(Enum):
    """How a sampler is fed: its noise, its step list, or its own class."""

    ODE = "deterministic, over the σ list"
    ANCESTRAL = "fresh Gaussian noise each step (drawn from the generator)"
    SDE = "Brownian-tree noise (seeded from the generator)"
    DPM_SOLVER = "k-diffusion's DPM-Solver: its own steps between σ_min and σ_max"
    LEGACY = "the DDIM / PLMS / DPM-Solver++ classes on the model's discrete timesteps"


@dataclass(frozen=True)
class SamplerEntry:
    """One row of :data:`SAMPLERS`. ``function`` names ``sample_<x>`` in ``module`` (or the legacy class);
    ``options`` are fixed keyword arguments of it; ``discard_penultimate_sigma`` takes S + 1 noise levels and
    drops σ_min, so the last step jumps from the second smallest level to 0 (AUTOMATIC1111 does so for these)."""

    name: str
    aliases: tuple[str, ...]
    function: str
    family: Family
    options: dict[str, Any] = field(default_factory=dict)
    discard_penultimate_sigma: bool = False
    module: str = K_SAMPLERS

    def takes_eta(self) -> bool:
        """Whether η means something to this sampler (DDIM, and the functions with an ``eta`` argument)."""
        if self.family is Family.LEGACY:
            return self.function == "DDIMSampler"
        return "eta" in declared_keywords(self.load())

    def load(self) -> Callable[..., torch.Tensor]:
        """The sampler function, looked up by name when first used."""
        function = getattr(importlib.import_module(self.module), self.function, None)
        if function is None:
            raise NotImplementedError(f"{self.module}.{self.function} (sampler {self.name!r}) is not available.")
        return function


_ROWS = (
    SamplerEntry("Euler", ("euler",), "sample_euler", Family.ODE),
    SamplerEntry("Euler a", ("euler_a", "euler_ancestral"), "sample_euler_ancestral", Family.ANCESTRAL),
    SamplerEntry("Heun", ("heun",), "sample_heun", Family.ODE),
    SamplerEntry("DPM2", ("dpm_2",), "sample_dpm_2", Family.ODE, discard_penultimate_sigma=True),
    SamplerEntry("DPM2 a", ("dpm_2_a", "dpm_2_ancestral"), "sample_dpm_2_ancestral", Family.ANCESTRAL,
                 discard_penultimate_sigma=True),
    SamplerEntry("LMS", ("lms",), "sample_lms", Family.ODE),
    SamplerEntry("DPM++ 2S a", ("dpmpp_2s_a", "dpmpp_2s_ancestral"), "sample_dpmpp_2s_ancestral", Family.ANCESTRAL),
    SamplerEntry("DPM++ 2M", ("dpmpp_2m",), "sample_dpmpp_2m", Family.ODE),
    SamplerEntry("DPM++ SDE", ("dpmpp_sde",), "sample_dpmpp_sde", Family.SDE),
    SamplerEntry("DPM++ 2M SDE", ("dpmpp_2m_sde",), "sample_dpmpp_2m_sde", Family.SDE),
    SamplerEntry("DPM++ 2M SDE Heun", ("dpmpp_2m_sde_heun",), "sample_dpmpp_2m_sde", Family.SDE,
                 {"solver_type": "heun"}),
    SamplerEntry("DPM++ 3M SDE", ("dpmpp_3m_sde",), "sample_dpmpp_3m_sde", Family.SDE, discard_penultimate_sigma=True),
    SamplerEntry("DPM fast", ("dpm_fast",), "sample_dpm_fast", Family.DPM_SOLVER),
    SamplerEntry("DPM adaptive", ("dpm_adaptive",), "sample_dpm_adaptive", Family.DPM_SOLVER),
    SamplerEntry("UniPC", ("unipc", "uni_pc"), "sample_unipc", Family.ODE, module=UNI_PC),
    SamplerEntry("DDIM", ("ddim",), "DDIMSampler", Family.LEGACY),
    SamplerEntry("PLMS", ("plms",), "PLMSSampler", Family.LEGACY),
    SamplerEntry("DPM-Solver++", ("dpm_solver", "dpm_solver_pp"), "DPMSolverSampler", Family.LEGACY),
)  # fmt: skip
#: Every sampler by its display name.
SAMPLERS: dict[str, SamplerEntry] = {row.name: row for row in _ROWS}


def _key(name: str) -> str:
    return " ".join(name.casefold().split())


_BY_KEY = {_key(spelling): row for row in _ROWS for spelling in (row.name, *row.aliases)}


def schedule_name(name: str) -> str:
    """The canonical schedule for ``name`` (case-insensitive; "uniform" is "normal"); ``ValueError`` otherwise."""
    key = _key(name).replace(" ", "_")
    key = SCHEDULE_ALIASES.get(key, key)
    if key not in SCHEDULES:
        guesses = difflib.get_close_matches(key, [*SCHEDULES, *SCHEDULE_ALIASES], n=1)
        hint = f"did you mean {guesses[0]!r}? " if guesses else ""
        raise ValueError(f"unknown schedule {name!r}; {hint}choose one of {', '.join(SCHEDULES)}")
    return key


def resolve_sampler(name: str) -> tuple[SamplerEntry, str | None]:
    """``(entry, schedule)`` for a sampler name, its alias, or either followed by a schedule (``"DPM++ 2M Karras"``,
    ``"dpmpp_2m_karras"``); ``schedule`` is None without a suffix. Unknown names raise ``ValueError`` naming the
    closest valid ones."""
    key = _key(name)
    if key in _BY_KEY:
        return _BY_KEY[key], None
    for schedule in (*SCHEDULES, *SCHEDULE_ALIASES):
        for suffix in {f" {schedule}", f"_{schedule}", " " + schedule.replace("_", " ")}:
            if key.endswith(suffix) and key[: -len(suffix)] in _BY_KEY:
                return _BY_KEY[key[: -len(suffix)]], schedule_name(schedule)
    close = difflib.get_close_matches(key, list(_BY_KEY), n=6, cutoff=0.5)
    suggestions = list(dict.fromkeys(_BY_KEY[guess].name for guess in close))[:3]
    hint = f"did you mean {' or '.join(repr(s) for s in suggestions)}? " if suggestions else ""
    raise ValueError(f"unknown sampler {name!r}; {hint}valid names: {', '.join(SAMPLERS)} (case-insensitive, "
                     "or their snake-case aliases, optionally followed by a schedule such as ' Karras')")


def sampler_choice(name: str, schedule: str | None = None, eta: float | None = None) -> tuple[SamplerEntry, str | None]:
    """``(entry, schedule)`` for a sampler name, an optional schedule and η, checked together: the schedule given
    once (by a suffix of ``name`` or by ``schedule``), none but "normal" for the samplers that space their steps
    themselves, and no non-zero η for a deterministic sampler. ``ValueError`` naming the fix otherwise;
    ``schedule`` is None when neither gives one."""
    entry, suffix = resolve_sampler(name)
    if eta not in (None, 0.0) and not entry.takes_eta():
        raise ValueError(f"{entry.name} is deterministic and takes no eta (got {eta}); drop it or choose a sampler "
                         "that adds noise ('Euler a', 'DPM++ 2M SDE', DDIM)")
    given = None if schedule is None else schedule_name(schedule)
    if suffix is not None and given is not None and suffix != given:
        raise ValueError(f"sampler {name!r} selects the {suffix!r} schedule but schedule {schedule!r} was given; "
                         "give the schedule once")
    chosen = suffix or given
    if chosen not in (None, "normal") and entry.family in (Family.LEGACY, Family.DPM_SOLVER):
        raise ValueError(f"{entry.name} spaces its steps itself and takes no schedule ({chosen!r} given); drop the "
                         "schedule or choose a k-diffusion sampler such as 'DPM++ 2M'")
    return entry, chosen


def describe_samplers() -> str:
    """One line per sampler, ``"DPM++ 2M (dpmpp_2m)"``, for help texts."""
    return ", ".join(f"{row.name} ({'/'.join(row.aliases)})" for row in _ROWS)
