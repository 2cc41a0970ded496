"""What a checkpoint's pickle may name, and what each allowed name may do.

A pickle names globals (``module.name``) and then calls them (REDUCE), creates instances of them (NEWOBJ), or
just stores them as values. Here every allowed name maps to an :class:`Allowed` entry that says, separately:

* ``value``: what the name stands for when the file merely stores it (a dict key, an OmegaConf ``ref_type``);
* ``call``: our own reconstructor for a REDUCE, which checks its arguments (never the real callable);
* ``new``: our own reconstructor for a NEWOBJ.

Reconstructors receive tokens among their arguments already replaced by their ``value`` (a ``defaultdict``
factory arrives as ``dict``; ``_rebuild_tensor_v3``'s dtype as ``torch.uint16``).

A name without an entry, or an entry used in a way it lacks (e.g. calling ``torch.FloatStorage(n)``), refuses
the file before anything runs. Tensors come only from :mod:`ldm.checkpoint_guard`'s checked rebuild functions;
OmegaConf classes only from :mod:`ldm.checkpoint_config`'s inert stand-ins. :func:`classify` sorts refused
names into "code", "memory", "legacy" and "unknown" for the refusal message.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.dtypes
import torch

from ldm import checkpoint_guard as guard
from ldm.checkpoint_config import ContainerStandIn, InertConfig, MetadataStandIn, NodeStandIn, stand_in_factory
from ldm.checkpoint_errors import CheckpointFault, shown, shown_repr


class _NoValue:
    def __repr__(self) -> str:
        return "<not a value>"


#: ``Allowed.value`` of names that may be called or instantiated but not stored as values.
NO_VALUE: Any = _NoValue()


@dataclass(frozen=True, eq=False)
class Allowed:
    """One allowed global: see the module docstring. Identity-hashed, so it can be a dict key in the pickle."""

    name: str
    value: Any = NO_VALUE
    call: Callable[..., Any] | None = None
    new: Callable[..., Any] | None = None


@dataclass(frozen=True)
class StorageKind:
    """What ``torch.FloatStorage`` & co. stand for: the dtype of a storage record (only inside a storage id)."""

    dtype: torch.dtype


class ModelCheckpointStub:
    """Inert stand-in for ``pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint``.

    Lightning 1.x checkpoints (Stable Diffusion v1) use that class as a key of ``checkpoint["callbacks"]``;
    loading it needs no Lightning and runs none of its code.
    """


# ----------------------------------------------------------------------------------------------- reconstructors


def _hashable_items(items: Any, what: str) -> list[Any]:
    if type(items) not in (list, tuple):
        raise CheckpointFault(f"{what} is built from a {shown(type(items).__name__)}, not a list")
    for item in items:
        guard.check_key(item, token_type=Allowed)
    return list(items)


def _ordered_dict(*args: Any) -> OrderedDict:
    if not args:
        return OrderedDict()
    pairs = args[0] if len(args) == 1 and type(args[0]) in (list, tuple) else None
    if pairs is None or any(type(pair) not in (list, tuple) or len(pair) != 2 for pair in pairs):
        raise CheckpointFault("an OrderedDict is built from something other than a list of pairs")
    _hashable_items([key for key, _ in pairs], "an OrderedDict")
    return OrderedDict((key, value) for key, value in pairs)


#: ``defaultdict`` factories a checkpoint may use: plain empty-container / zero constructors.
_DEFAULT_FACTORIES = (dict, list, int, float, OrderedDict)


def _default_dict(factory: Any = None) -> defaultdict:
    if factory is None:
        return defaultdict()
    if any(factory is kind for kind in _DEFAULT_FACTORIES):
        return defaultdict(factory)
    raise CheckpointFault(f"a defaultdict's factory is {shown_repr(factory)}; only dict/list/int/float are read")


def _set(items: Any = ()) -> set:
    return set(_hashable_items(items, "a set"))


def _frozenset(items: Any = ()) -> frozenset:
    return frozenset(_hashable_items(items, "a frozenset"))


def _latin1_bytes(text: Any, encoding: Any = "latin1") -> bytes:
    """Protocol 2 stores ``bytes`` as ``_codecs.encode(text, "latin1")``; nothing else is accepted."""
    if type(text) is not str or encoding not in ("latin1", "latin-1"):
        raise CheckpointFault("_codecs.encode is used for something other than latin-1 bytes")
    return text.encode("latin1")


#: numpy type codes of the scalars a checkpoint may hold (bool, ints, floats, complex; no objects, no voids).
NUMPY_CODES = frozenset("b1 i1 i2 i4 i8 u1 u2 u4 u8 f2 f4 f8 f16 c8 c16 c32".split())


def _numpy_dtype(code: Any, align: Any = False, copy: Any = True) -> np.dtype:
    if code not in NUMPY_CODES or type(align) is not bool or type(copy) is not bool:
        raise CheckpointFault(f"numpy dtype {shown_repr(code)} is not a plain numeric type")
    return np.dtype(code)


def _check_numpy_dtype_state(state: Any) -> None:
    """The BUILD state numpy pickles for a plain numeric dtype: ``(3, byteorder, None, None, None, -1, -1, 0)``."""
    if not (
        type(state) is tuple
        and len(state) == 8
        and state[0] in (3, 4)
        and state[1] in ("<", "|", "=")
        and state[2:] == (None, None, None, -1, -1, 0)
    ):
        raise CheckpointFault(f"numpy dtype state {shown_repr(state, 60)} is not that of a little-endian number")


def _numpy_scalar(dtype: Any, data: Any) -> np.generic:
    """``numpy.core.multiarray.scalar(dtype, bytes)``: one number of a plain dtype, from exactly its bytes."""
    if not isinstance(dtype, np.dtype) or dtype.str[1:] not in NUMPY_CODES:
        raise CheckpointFault("a numpy scalar has a dtype that is not a plain numeric type")
    if type(data) is not bytes or len(data) != dtype.itemsize:
        raise CheckpointFault(f"a numpy {dtype} scalar is not stored as exactly {dtype.itemsize} bytes")
    return np.frombuffer(data, dtype=dtype)[0]


def _torch_size(dims: Any = ()) -> torch.Size:
    if type(dims) not in (list, tuple) or len(dims) > guard.MAX_DIMS or any(type(d) is not int for d in dims):
        raise CheckpointFault("a torch.Size is built from something other than a short tuple of ints")
    return torch.Size(dims)


def _torch_device(kind: Any, index: Any = None) -> torch.device:
    if type(kind) is not str or (index is not None and type(index) is not int):
        raise CheckpointFault("a torch.device is built from something other than a name and an index")
    try:
        return torch.device(kind) if index is None else torch.device(kind, index)
    except RuntimeError as error:
        raise CheckpointFault(f"invalid torch.device {shown(kind, 40)!r}") from error


def _plain_dict(*args: Any) -> dict:
    if args:
        raise CheckpointFault("an AttributeDict is created with arguments; Lightning pickles none")
    return {}


def build(inst: Any, state: Any) -> None:
    """The pickle's BUILD (set an object's state): only stand-ins, a state dict's ``_metadata`` and numpy dtypes."""
    if isinstance(inst, InertConfig):
        inst.absorb(state)
    elif isinstance(inst, np.dtype):
        _check_numpy_dtype_state(state)
    elif type(inst) in (dict, OrderedDict) and not state:
        return
    elif type(inst) is OrderedDict and type(state) is dict and set(state) == {"_metadata"}:
        if type(state["_metadata"]) not in (dict, OrderedDict):
            raise CheckpointFault("a state dict's _metadata is not a dict")
        inst._metadata = state["_metadata"]
    else:
        raise CheckpointFault(
            f"the pickle sets the state of a {shown(type(inst).__name__)}; only OmegaConf configs, numpy dtypes "
            "and a state dict's _metadata take one"
        )


# ----------------------------------------------------------------------------------------------- the table

_STORAGE_DTYPES = {
    "Half": torch.float16, "Float": torch.float32, "Double": torch.float64, "BFloat16": torch.bfloat16,
    "Int": torch.int32, "Long": torch.int64, "Short": torch.int16, "Char": torch.int8, "Byte": torch.uint8,
    "Bool": torch.bool, "ComplexFloat": torch.complex64, "ComplexDouble": torch.complex128,
}
_TORCH_DTYPES = (
    "float16 float32 float64 bfloat16 int8 int16 int32 int64 uint8 uint16 uint32 uint64 bool complex64 complex128 "
    "float8_e4m3fn float8_e5m2 float8_e4m3fnuz float8_e5m2fnuz"
).split()
_NUMPY_DTYPE_CLASSES = (
    "Bool Int8 Int16 Int32 Int64 UInt8 UInt16 UInt32 UInt64 Float16 Float32 Float64 LongDouble Complex64 "
    "Complex128 CLongDouble Long ULong LongLong ULongLong"
).split()
_LIGHTNING_ROOTS = ("pytorch_lightning", "lightning.pytorch")
_FABRIC_ROOTS = ("lightning_fabric", "lightning.fabric")
_OMEGACONF_NODES = "AnyNode StringNode IntegerNode FloatNode BooleanNode BytesNode".split()


def _entries() -> list[Allowed]:
    entries = [
        Allowed("collections.OrderedDict", OrderedDict, call=_ordered_dict),
        Allowed("collections.defaultdict", defaultdict, call=_default_dict),
        Allowed("builtins.set", set, call=_set),
        Allowed("builtins.frozenset", frozenset, call=_frozenset),
        Allowed("_codecs.encode", call=_latin1_bytes),
        Allowed("numpy.dtype", np.dtype, call=_numpy_dtype),
        Allowed("numpy.core.multiarray.scalar", call=_numpy_scalar),
        Allowed("numpy._core.multiarray.scalar", call=_numpy_scalar),
        Allowed("torch.Size", torch.Size, call=_torch_size),
        Allowed("torch.device", torch.device, call=_torch_device),
        Allowed("torch._utils._rebuild_tensor", call=guard.rebuild_tensor),
        Allowed("torch._utils._rebuild_tensor_v2", call=guard.rebuild_tensor_v2),
        Allowed("torch._utils._rebuild_tensor_v3", call=guard.rebuild_tensor_v3),
        Allowed("torch._utils._rebuild_parameter", call=guard.rebuild_parameter),
        Allowed("torch.storage.UntypedStorage", StorageKind(torch.uint8)),
        Allowed("torch.UntypedStorage", StorageKind(torch.uint8)),
        Allowed("typing.Any", Any),
        Allowed("omegaconf.dictconfig.DictConfig", dict, new=stand_in_factory(
            "omegaconf.dictconfig.DictConfig", lambda: ContainerStandIn("DictConfig", dict))),
        Allowed("omegaconf.listconfig.ListConfig", list, new=stand_in_factory(
            "omegaconf.listconfig.ListConfig", lambda: ContainerStandIn("ListConfig", list))),
    ]
    plain_types = (dict, list, tuple, int, float, str, bool, bytes)
    entries += [Allowed(f"builtins.{kind.__name__}", kind) for kind in plain_types]
    for prefix in ("torch", "torch.cuda"):
        entries += [Allowed(f"{prefix}.{name}Storage", StorageKind(dtype)) for name, dtype in _STORAGE_DTYPES.items()]
    entries += [Allowed(f"torch.{name}", getattr(torch, name)) for name in _TORCH_DTYPES if hasattr(torch, name)]
    entries += [
        Allowed(f"numpy.dtypes.{name}DType", getattr(numpy.dtypes, f"{name}DType")) for name in _NUMPY_DTYPE_CLASSES
    ]
    entries += [
        Allowed(f"{root}.callbacks.model_checkpoint.ModelCheckpoint", ModelCheckpointStub) for root in _LIGHTNING_ROOTS
    ]
    entries += [Allowed(f"{root}.utilities.parsing.AttributeDict", dict, new=_plain_dict) for root in _LIGHTNING_ROOTS]
    entries += [Allowed(f"{root}.utilities.data.AttributeDict", dict, new=_plain_dict) for root in _FABRIC_ROOTS]
    for name in ("ContainerMetadata", "Metadata"):
        entries.append(Allowed(f"omegaconf.base.{name}", new=stand_in_factory(name, lambda n=name: MetadataStandIn(n))))
    for name in _OMEGACONF_NODES:
        entries.append(Allowed(f"omegaconf.nodes.{name}", new=stand_in_factory(name, lambda n=name: NodeStandIn(n))))
    return entries


#: Every global name a checkpoint may use, with what it may do (see the module docstring).
ALLOWED: dict[str, Allowed] = {entry.name: entry for entry in _entries()}

# ----------------------------------------------------------------------------------------------- refused names

#: Modules whose names in a pickle mean code execution, file or network access.
CODE_MODULES = frozenset(
    "os posix nt sys subprocess shutil socket importlib runpy pty ctypes code codeop pickle _pickle marshal "
    "webbrowser multiprocessing signal tempfile commands platform asyncio threading _thread types functools "
    "operator inspect pdb bdb timeit cProfile profile trace doctest ssl http urllib ftplib smtplib requests pip "
    "setuptools distutils io builtins.eval builtins.exec builtins.compile builtins.open builtins.__import__ "
    "builtins.getattr builtins.setattr builtins.delattr builtins.globals builtins.locals builtins.vars "
    "builtins.input builtins.breakpoint builtins.exit builtins.quit builtins.apply builtins.execfile "
    "torch.load torch.hub torch.jit torch._C torch.ops numpy.load numpy.lib.npyio".split()
)
#: Legacy globals that real checkpoints of this field carry and that a trusted full unpickling reads.
LEGACY_NAMES = frozenset(
    "argparse.Namespace numpy.ndarray numpy.core.multiarray._reconstruct numpy._core.multiarray._reconstruct "
    "numpy.core.numeric._frombuffer numpy._core.numeric._frombuffer collections.Counter collections.deque "
    "builtins.slice builtins.range builtins.complex torch.nn.parameter.Parameter torch.torch_version.TorchVersion "
    "datetime.datetime datetime.date datetime.timedelta uuid.UUID pathlib.Path pathlib.PosixPath "
    "pathlib.PurePosixPath pathlib.WindowsPath pathlib.PureWindowsPath pathlib._local.PosixPath "
    "pathlib._local.PurePosixPath pathlib._local.WindowsPath pathlib._local.PureWindowsPath".split()
)
#: Module prefixes of legacy classes (Lightning, OmegaConf nodes we do not rebuild, torch modules/optimizers).
LEGACY_PREFIXES = (
    "pytorch_lightning.", "lightning.", "lightning_fabric.", "omegaconf.", "torch.nn.modules.", "torch.optim.",
)
#: Refused names that would make memory the file does not hold (uninitialised or unbounded).
MEMORY_NAMES = frozenset(
    "builtins.bytearray torch.Tensor torch.tensor torch.empty torch.empty_strided torch.zeros torch.ones torch.full "
    "numpy.empty numpy.zeros numpy.ones".split()
)
CALLED = " (called)"


def classify(name: str) -> str:
    """``"code"``, ``"memory"``, ``"legacy"`` or ``"unknown"``: why a refused ``name`` is refused."""
    base = name.removesuffix(CALLED)
    if any(base == module or base.startswith(module + ".") for module in CODE_MODULES):
        return "code"
    called_storage = name.endswith(CALLED) and base.endswith("Storage")
    tensor_class = base.startswith("torch.") and base.endswith("Tensor")
    if base in MEMORY_NAMES or called_storage or tensor_class or base.startswith("torch._utils._rebuild"):
        return "memory"
    if base in LEGACY_NAMES or base.startswith(LEGACY_PREFIXES):
        return "legacy"
    return "unknown"
