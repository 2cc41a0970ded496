"""The last pass over what the unpickler built: plain types out, acyclic, shallow, bounded, tensors checked.

The pass rebuilds the result from plain types only (``dict``, ``OrderedDict`` with its ``_metadata``,
``defaultdict``, ``list``, ``tuple``, ``set``, ``frozenset``; numbers, strings, bytes; numpy scalars and
dtypes; torch dtypes, devices and sizes; tensors), replacing allow-list tokens by the value they stand for and
OmegaConf stand-ins by their raw content (never interpolated). Along the way it refuses

* a reference cycle (a consumer walking the data would never finish), and nesting deeper than ``MAX_DEPTH``;
* a tensor that does not view one of the file's storages;
* anything else the pickle left (an internal object, a token that is not a value);

and it counts the size of the data as a tree, i.e. what ``json.dumps``, ``copy.deepcopy`` or
``.contiguous()`` on every tensor would touch: ``numel * itemsize`` per tensor occurrence, string lengths and a
fixed cost per node. Shared nodes are visited once, so the pass is linear even when that count is astronomic.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ldm.checkpoint_allowlist import NO_VALUE, Allowed
from ldm.checkpoint_config import InertConfig
from ldm.checkpoint_errors import CheckpointFault, shown
from ldm.checkpoint_guard import ExpansionBudget, human_bytes

MAX_DEPTH = 100
NODE_COST = 64
ITEM_COST = 16
_SCALARS = (str, bytes, int, float, bool, complex, type(None))
_INERT_OBJECTS = (np.generic, np.dtype, torch.dtype, torch.device, torch.Size)
_MAPPINGS = (dict, OrderedDict, defaultdict)
_SEQUENCES = (list, tuple, set, frozenset)

#: (converted object, tensor bytes, other bytes) of a node, counted as a tree.
Visited = tuple[Any, int, int]


class _Walk:
    def __init__(self, owns: Callable[[Tensor], bool]):
        self.owns = owns
        self.done: dict[int, Visited] = {}
        self.active: set[int] = set()

    def visit(self, obj: Any, depth: int) -> Visited:
        kind = type(obj)
        if kind in _SCALARS:
            return obj, 0, NODE_COST + (len(obj) if kind in (str, bytes) else 0)
        if isinstance(obj, _INERT_OBJECTS):
            return obj, 0, NODE_COST
        if isinstance(obj, Tensor):
            if not self.owns(obj):
                raise CheckpointFault("a tensor does not view a storage stored in the file")
            return obj, obj.numel() * obj.element_size(), NODE_COST
        if isinstance(obj, Allowed):
            if obj.value is NO_VALUE:
                raise CheckpointFault(f"the pickle stores {shown(obj.name)} itself as a value")
            return obj.value, 0, NODE_COST
        if id(obj) in self.done:
            return self.done[id(obj)]
        if id(obj) in self.active:
            raise CheckpointFault(f"the data contains a reference cycle (through a {shown(kind.__name__)})")
        if depth > MAX_DEPTH:
            raise CheckpointFault(f"the data is nested more than {MAX_DEPTH} levels deep")
        self.active.add(id(obj))
        result = self._rebuild(obj, depth + 1)
        self.active.discard(id(obj))
        self.done[id(obj)] = result
        return result

    def _rebuild(self, obj: Any, depth: int) -> Visited:
        if isinstance(obj, InertConfig):
            return self.visit(obj.raw(), depth)
        kind = type(obj)
        tensors, other = 0, NODE_COST
        if kind in _MAPPINGS:
            out = defaultdict(obj.default_factory) if kind is defaultdict else kind()
            for key, value in obj.items():
                new_key, key_tensors, key_other = self.visit(key, depth)
                new_value, value_tensors, value_other = self.visit(value, depth)
                out[new_key] = new_value
                tensors += key_tensors + value_tensors
                other += key_other + value_other + ITEM_COST
            if kind is OrderedDict and "_metadata" in vars(obj):
                out._metadata, meta_tensors, meta_other = self.visit(obj._metadata, depth)
                tensors, other = tensors + meta_tensors, other + meta_other
            return out, tensors, other
        if kind in _SEQUENCES:
            items = []
            for item in obj:
                new_item, item_tensors, item_other = self.visit(item, depth)
                items.append(new_item)
                tensors += item_tensors
                other += item_other + ITEM_COST
            return kind(items), tensors, other
        raise CheckpointFault(f"the pickle leaves a {shown(kind.__name__)} in the data, which is not a plain value")


def finish(obj: Any, budget: ExpansionBudget, owns: Callable[[Tensor], bool]) -> Any:
    """``obj`` rebuilt from plain types (see the module docstring); refuses what the rules refuse."""
    result, tensors, other = _Walk(owns).visit(obj, 0)
    budget.check_total(
        tensors + other, f"the tensors ({human_bytes(tensors)}) and other values ({human_bytes(other)}) it holds"
    )
    return result
