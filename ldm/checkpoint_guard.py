"""What a checkpoint file may make us allocate, and which tensors it may produce.

Rules (each checked before the work it guards):

* **Allocation bound.** The bytes the loader holds (records read from the archive, Python objects the pickle
  builds) and the bytes a consumer would touch walking the result as a tree (tensor elements counted as
  ``numel * itemsize`` per occurrence, strings, containers) are each at most
  ``max_expansion * file_size + EXPANSION_SLACK``. ``max_expansion=None`` lifts the bound (trusted files).
* **Tensors view archive storages.** A tensor is only ever a view ``set_(storage, offset, size, stride)`` of a
  storage whose bytes came from the file, with every reachable element inside it:
  ``offset + sum((size_i - 1) * stride_i) < len(storage)``. Nothing else can make a tensor, so no tensor
  shows memory the file did not write.
* **Hash-safe keys.** Dict keys and set items are strings, bytes, bools, None, floats, ints below ``2**61``
  (whose hashes cannot collide) or tuples of strings, so no key set can make insertion quadratic.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ldm.checkpoint_errors import CheckpointFault, ExpansionFault, shown, shown_repr

#: Default factor: a file may make us hold / produce at most this many times its own size (+ the slack).
DEFAULT_MAX_EXPANSION = 4.0
#: Fixed allowance on top of the factor, so tiny files with Lightning metadata are never refused.
EXPANSION_SLACK = 1 << 20
#: Largest int accepted as a dict key or set item (larger ones can be made to share one hash).
MAX_KEY_INT = 2**61 - 1
MAX_DIMS = 64


def human_bytes(count: int) -> str:
    """``1536`` -> ``1.5 KiB`` (for messages)."""
    if count < 1024:
        return f"{count} bytes"
    value = float(count)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}" if value < 1e6 else f"{value:.3g} {unit}"


class ExpansionBudget:
    """Running total of the bytes a load holds, against ``max_expansion * file_size + EXPANSION_SLACK``."""

    def __init__(self, file_size: int, max_expansion: float | None = DEFAULT_MAX_EXPANSION):
        if max_expansion is not None and not (math.isfinite(max_expansion) and max_expansion > 0):
            raise ValueError(f"max_expansion must be a positive number or None, got {max_expansion!r}")
        self.file_size = file_size
        self.max_expansion = max_expansion
        self.limit = None if max_expansion is None else int(max_expansion * file_size) + EXPANSION_SLACK
        self.used = 0

    def charge(self, nbytes: int, what: str) -> None:
        """Add ``nbytes`` held for ``what``; raise :class:`ExpansionFault` past the limit."""
        self.used += nbytes
        if self.limit is not None and self.used > self.limit:
            raise ExpansionFault(f"{what} would take {self.describe(self.used)}")

    def check_total(self, nbytes: int, what: str) -> None:
        """Raise :class:`ExpansionFault` if a separately counted total ``nbytes`` is past the limit."""
        if self.limit is not None and nbytes > self.limit:
            raise ExpansionFault(f"{what} come to {self.describe(nbytes)}")

    def describe(self, nbytes: int) -> str:
        return (
            f"{human_bytes(nbytes)} from a file of {human_bytes(self.file_size)}, more than the limit of "
            f"{self.max_expansion:g}x its size + {human_bytes(EXPANSION_SLACK)}"
        )


@dataclass(eq=False)
class ArchiveStorage:
    """A typed view of one storage record of the archive: ``untyped`` holds bytes read from the file."""

    untyped: torch.UntypedStorage
    dtype: torch.dtype
    key: str

    def capacity(self, dtype: torch.dtype) -> int:
        """Whole elements of ``dtype`` in the record."""
        return self.untyped.nbytes() // dtype.itemsize


def _index(value: Any, what: str) -> int:
    if type(value) is not int or not 0 <= value < 2**62:
        raise CheckpointFault(f"tensor {what} {shown_repr(value)} is not a non-negative int")
    return value


def _shape(value: Any, what: str) -> tuple[int, ...]:
    if type(value) not in (tuple, list, torch.Size) or len(value) > MAX_DIMS:
        raise CheckpointFault(f"tensor {what} is not a tuple of at most {MAX_DIMS} ints")
    return tuple(_index(item, what) for item in value)


def view_of_storage(storage: Any, offset: Any, size: Any, stride: Any, dtype: torch.dtype | None = None) -> Tensor:
    """``torch.empty(0).set_(storage, offset, size, stride)`` after checking the view lies inside the record.

    The last element a view reaches is ``offset + sum((size_i - 1) * stride_i)`` (when it has any element);
    it must be below the record's capacity in elements of ``dtype`` (the storage's dtype by default).
    """
    if not isinstance(storage, ArchiveStorage):
        raise CheckpointFault(
            f"a tensor is built on a {shown(type(storage).__name__)}, not on a storage stored in the file"
        )
    dtype = storage.dtype if dtype is None else dtype
    offset = _index(offset, "storage offset")
    size, stride = _shape(size, "size"), _shape(stride, "stride")
    if len(size) != len(stride):
        raise CheckpointFault(f"tensor size {size} and stride {stride} have different lengths")
    capacity = storage.capacity(dtype)
    reach = offset + sum((n - 1) * step for n, step in zip(size, stride)) if all(size) else offset - 1
    if reach >= capacity or offset > capacity:
        raise CheckpointFault(
            f"a tensor of size {size}, stride {stride}, offset {offset} reaches outside its storage "
            f"{shown(storage.key)!r} of {capacity} elements"
        )
    return torch.empty(0, dtype=dtype).set_(storage.untyped, offset, size, stride)


def _check_hooks(hooks: Any) -> None:
    """Old torch wrote ``None``, newer an empty (ordered) dict; anything else would be code to run."""
    if hooks is None:
        return
    if type(hooks) not in (dict, OrderedDict) or hooks:
        raise CheckpointFault("a tensor carries backward hooks; a checkpoint's tensors have none")


def _with_grad(tensor: Tensor, requires_grad: Any) -> Tensor:
    if type(requires_grad) is not bool:
        raise CheckpointFault("a tensor's requires_grad flag is not a bool")
    if requires_grad:
        if not (tensor.is_floating_point() or tensor.is_complex()):
            raise CheckpointFault(f"a {tensor.dtype} tensor cannot require grad")
        tensor.requires_grad_(True)
    return tensor


def rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any) -> Tensor:
    """``torch._utils._rebuild_tensor``: a checked view of an archive storage."""
    return view_of_storage(storage, offset, size, stride)


def rebuild_tensor_v2(
    storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any, metadata: Any = None
) -> Tensor:
    """``torch._utils._rebuild_tensor_v2``: a checked view; no hooks, no extra metadata."""
    _check_hooks(hooks)
    if metadata:
        raise CheckpointFault("a tensor carries extra metadata; a checkpoint's tensors have none")
    return _with_grad(view_of_storage(storage, offset, size, stride), requires_grad)


def rebuild_tensor_v3(
    storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any, dtype: Any,
    metadata: Any = None,
) -> Tensor:
    """``torch._utils._rebuild_tensor_v3`` (dtypes without a legacy storage class, e.g. uint16)."""
    if not isinstance(dtype, torch.dtype):
        raise CheckpointFault(f"tensor dtype {shown_repr(dtype)} is not a torch dtype")
    _check_hooks(hooks)
    if metadata:
        raise CheckpointFault("a tensor carries extra metadata; a checkpoint's tensors have none")
    return _with_grad(view_of_storage(storage, offset, size, stride, dtype), requires_grad)


def rebuild_parameter(data: Any, requires_grad: Any, hooks: Any) -> Tensor:
    """``torch._utils._rebuild_parameter``: ``nn.Parameter`` around a tensor the file already built."""
    if type(data) is not Tensor or type(requires_grad) is not bool:
        raise CheckpointFault("a parameter wraps something other than a tensor of the file")
    _check_hooks(hooks)
    return torch.nn.Parameter(data, requires_grad=requires_grad)


def check_key(key: Any, *, token_type: type) -> None:
    """Raise :class:`CheckpointFault` unless ``key`` is hash-safe (see the module docstring)."""
    kind = type(key)
    if kind in (str, bytes, bool, float, type(None), token_type):
        return
    if kind is int and -MAX_KEY_INT <= key <= MAX_KEY_INT:
        return
    if kind is tuple and len(key) <= MAX_DIMS and all(type(item) in (str, bytes) for item in key):
        return
    raise CheckpointFault(f"a dict key or set item is a {shown(kind.__name__)} ({shown_repr(key, 40)})")


def tensor_bytes(tensors: Iterable[Tensor]) -> int:
    """``sum(numel * itemsize)``: the bytes the tensors take once made contiguous."""
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def check_state_dict_expansion(state_dict: Mapping[str, Tensor], file_size: int, max_expansion: float | None) -> None:
    """Apply the allocation bound to tensors read some other way (a trusted full unpickling)."""
    ExpansionBudget(file_size, max_expansion).check_total(tensor_bytes(state_dict.values()), "its tensors")
