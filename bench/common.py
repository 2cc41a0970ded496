"""Measurement helpers shared by the benchmarks: interleaved median timing, the peak memory of one call,
seeded random weights, the machine's description, a matrix product to time the machine's fp32 rate with.

Peak memory is the growth of the process's resident set during one call (Linux ``VmHWM`` after resetting it
through ``/proc/self/clear_refs``, freed heap returned with ``malloc_trim`` first): the activations and
workspaces of the call, on top of the weights that both implementations hold alike.
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf

SD_CONFIG = "configs/stable-diffusion/v1-inference.yaml"


@dataclass
class Row:
    """One line of the results table; ``theirs_*`` are None where diffusers has no counterpart."""

    benchmark: str
    ours_s: float
    theirs_s: float | None = None
    ours_mb: float | None = None
    theirs_mb: float | None = None
    max_abs_diff: float | None = None
    note: str = ""
    matmul_gflops: float | None = None  # the machine's fp32 matmul rate measured in the same session


def sd_config() -> DictConfig:
    """``model.params`` of the Stable Diffusion v1 inference config."""
    return OmegaConf.load(SD_CONFIG).model.params


def randomize_(module: torch.nn.Module, seed: int, std: float = 0.02) -> torch.nn.Module:
    """Every parameter ~ N(0, std²) from a seeded generator (zero-initialised layers included, so that every
    layer contributes to the compared outputs); returns ``module`` in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * std)
    return module.eval()


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))


def _release_free_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def peak_memory_mb(fn: Callable[[], object]) -> float | None:
    """MiB by which the resident set grows at its peak while ``fn()`` runs (None where Linux's counters are
    unavailable)."""
    _release_free_memory()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_kb("VmRSS")
    except OSError:
        return None
    fn()
    return (_status_kb("VmHWM") - before) / 1024


Timed = Callable[[], object] | tuple[Callable[[], object] | None, Callable[[], object]]


def median_times(fns: dict[str, Timed], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median wall seconds of each function, run in turn (A B A B …) so that drifting load hits all alike.

    A value may be ``(setup, fn)``: ``setup`` (e.g. a change of weight layout) runs untimed before each ``fn``.
    """
    pairs = {name: f if isinstance(f, tuple) else (None, f) for name, f in fns.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(warmup + repeats):
        for name, (setup, fn) in pairs.items():
            if setup is not None:
                setup()
            start = time.perf_counter()
            fn()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def matmul_step(n: int = 2048) -> tuple[Callable[[], object], float]:
    """An ``n × n`` fp32 matrix product to time beside a benchmark, and its FLOPs (2n³)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return (lambda: a @ b), 2.0 * n**3


def machine() -> str:
    """CPU model, core count, memory, load, torch version and threads, in one line."""
    cpuinfo = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    model = re.search(r"model name\s*:\s*(.*)", cpuinfo)
    cpu = model.group(1) if model else platform.processor() or platform.machine()
    flags = [f for f in ("avx512f", "avx2") if f in cpuinfo]
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu}, {os.cpu_count()} cores ({', '.join(flags) or 'no AVX2'}), {mem_gb:.0f} GiB RAM, load {load:.1f}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
