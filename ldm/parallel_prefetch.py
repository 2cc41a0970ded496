"""``parallel_data_prefetch``: apply a function to ``n_proc`` slices of a data set in parallel and join the results.

Re-exported by :mod:`ldm.util` under the original name.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def _slices(data: Any, n_proc: int, as_array: bool) -> list[Any]:
    """``n_proc`` consecutive parts: ``np.array_split`` for arrays, lists of ``ceil(len / n_proc)`` items otherwise."""
    if as_array:
        return list(np.array_split(data, n_proc))
    size = -(-len(data) // n_proc)
    return [data[start : start + size] for start in range(0, len(data), size)]


def parallel_data_prefetch(
    func: Callable[..., Any],
    data: Any,
    n_proc: int,
    target_data_type: str = "ndarray",
    cpu_intensive: bool = True,
    use_worker_id: bool = False,
) -> Any:
    """Split ``data`` into ``n_proc`` parts, run ``func(part)`` (or ``func(part, worker_id=i)``) on each in parallel.

    ``data``: an array or any iterable (a dict contributes its values). ``target_data_type="ndarray"`` turns it
    into an array, splits with ``np.array_split`` and concatenates the results along axis 0; ``"list"`` splits a
    list into parts of ``ceil(len / n_proc)`` and chains the results; any other value returns the per-part results
    as a list, in part order. ``cpu_intensive`` runs the parts in processes (``func`` and results must pickle),
    otherwise in threads.
    """
    if isinstance(data, np.ndarray) and target_data_type == "list":
        raise ValueError("parallel_data_prefetch: target_data_type='list' but data is an np.ndarray; pass a list")
    if not isinstance(data, Iterable):
        raise TypeError(f"parallel_data_prefetch: data must be an np.ndarray or an iterable, got {type(data).__name__}")
    if isinstance(data, dict):
        logger.warning("parallel_data_prefetch: data is a dict; its values are processed and its keys dropped")
        data = list(data.values())
    as_array = target_data_type == "ndarray"
    data = np.asarray(data) if as_array else list(data)
    parts = _slices(data, n_proc, as_array)
    pool: Executor = ProcessPoolExecutor(len(parts)) if cpu_intensive else ThreadPoolExecutor(len(parts))
    began = time.perf_counter()
    with pool:
        futures = [
            pool.submit(func, part, worker_id=index) if use_worker_id else pool.submit(func, part)
            for index, part in enumerate(parts)
        ]
        results = [future.result() for future in futures]
    logger.info("parallel_data_prefetch: %d parts in %.2f s", len(parts), time.perf_counter() - began)
    if as_array:
        return np.concatenate([np.asarray(result) for result in results], axis=0)
    if target_data_type == "list":
        return [item for result in results for item in result]
    return results
