"""The original's reentrant activation checkpoint as an autograd function (``CheckpointFunction.apply``).

The project's own :func:`ldm.modules.diffusionmodules.util.checkpoint` uses ``torch.utils.checkpoint``; this class
exists for client code that calls ``CheckpointFunction.apply(run_function, length, *inputs, *params)`` directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class CheckpointFunction(torch.autograd.Function):
    """Forward without keeping activations; the backward pass runs ``run_function`` again with grad enabled.

    ``apply(run_function, length, *args)``: the first ``length`` of ``args`` are the inputs passed to
    ``run_function``, the rest are parameters it reads (they receive gradients too). The output is whatever
    ``run_function`` returns (a tensor or a tuple of tensors). CUDA autocast state at forward time is restored
    for the recomputation.
    """

    @staticmethod
    def forward(ctx: Any, run_function: Callable[..., Any], length: int, *args: torch.Tensor) -> Any:
        ctx.run_function = run_function
        ctx.n_inputs = length
        ctx.autocast_state = {
            "enabled": torch.is_autocast_enabled("cuda"),
            "dtype": torch.get_autocast_dtype("cuda"),
            "cache_enabled": torch.is_autocast_cache_enabled(),
        }
        ctx.save_for_backward(*args)
        with torch.no_grad():
            return run_function(*args[:length])

    @staticmethod
    def backward(ctx: Any, *grad_outputs: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        saved = ctx.saved_tensors
        inputs = [t.detach().requires_grad_(True) for t in saved[: ctx.n_inputs]]
        params = list(saved[ctx.n_inputs :])
        with torch.enable_grad(), torch.autocast("cuda", **ctx.autocast_state):
            # view_as gives run_function fresh tensors it may modify in place without touching the leaves
            outputs = ctx.run_function(*[t.view_as(t) for t in inputs])
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        wanted = [t for t in inputs + params if t.requires_grad]
        found = iter(torch.autograd.grad(outputs, wanted, grad_outputs, allow_unused=True))
        grads = [next(found) if t.requires_grad else None for t in inputs + params]
        return (None, None, *grads)
