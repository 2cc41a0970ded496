"""The two layouts ``torch.save`` writes, read record by record under the allocation bound.

* **zip** (torch >= 1.6): ``<name>/data.pkl`` plus one record ``<name>/data/<key>`` per storage. Each record's
  declared size is charged to the budget before it is read (a deflated record cannot expand past it), and a
  storage may claim at most the bytes its record holds.
* **legacy** (older torch, ``_use_new_zipfile_serialization=False``): pickles for the magic number, protocol
  and system info, the object, the storage keys, then each storage's bytes. Storages are allocated zeroed
  (charged first), filled from the file, and a storage the file leaves without data is an error.

Every storage is registered, so the graph walk can check that each tensor views one of them.
"""

from __future__ import annotations

import mmap
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ldm.checkpoint_allowlist import Allowed, StorageKind
from ldm.checkpoint_errors import CheckpointFault, ForbiddenGlobals, shown
from ldm.checkpoint_guard import ArchiveStorage, ExpansionBudget
from ldm.checkpoint_unpickler import RestrictedUnpickler

TORCH_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
CHUNK = 1 << 22


class StorageRegistry:
    """The storages read from one file; :meth:`owns` says whether a tensor views one of them."""

    def __init__(self) -> None:
        self.pointers: set[int] = set()

    def new_buffer(self, nbytes: int, register: bool = True, zeroed: bool = True) -> Tensor:
        """A ``uint8`` buffer; with ``register`` its storage counts as one of the file's storages.

        ``zeroed=False`` only where the caller fills every byte before anything can see the buffer."""
        buffer = torch.zeros(nbytes, dtype=torch.uint8) if zeroed else torch.empty(nbytes, dtype=torch.uint8)
        if nbytes and register:
            self.pointers.add(buffer.untyped_storage().data_ptr())
        return buffer

    def owns(self, tensor: Tensor) -> bool:
        return tensor.numel() == 0 or tensor.untyped_storage().data_ptr() in self.pointers


def _storage_id(pid: Any, length: int) -> tuple[torch.dtype, str, int, tuple[Any, ...]]:
    """``(dtype, key, numel, rest)`` of torch's ``("storage", type, key, location, numel, ...)`` id."""
    if type(pid) is not tuple or len(pid) != length or pid[0] not in ("storage", b"storage"):
        raise CheckpointFault("the pickle refers to external data that is not a torch storage")
    kind, key, location, numel = pid[1:5]
    if not (isinstance(kind, Allowed) and isinstance(kind.value, StorageKind)):
        raise CheckpointFault(f"a storage id names {shown(getattr(kind, 'name', kind))}, not a storage type")
    if type(key) is not str or type(location) not in (str, bytes) or type(numel) is not int or numel < 0:
        raise CheckpointFault("a storage id is malformed")
    return kind.value.dtype, key, numel, pid[5:]


def _copy_into(target: memoryview, read: Callable[[int], bytes], what: str) -> None:
    done = 0
    while done < len(target):
        chunk = read(min(CHUNK, len(target) - done))
        if not chunk:
            raise CheckpointFault(f"{what} is truncated")
        target[done : done + len(chunk)] = chunk
        done += len(chunk)


class _ZipStorages:
    def __init__(self, archive: zipfile.ZipFile, prefix: str, budget: ExpansionBudget, registry: StorageRegistry):
        self.archive = archive
        self.prefix = prefix
        self.budget = budget
        self.registry = registry
        self.records: dict[str, torch.UntypedStorage] = {}

    def read(self, name: str, register: bool = False) -> Tensor:
        """The bytes of record ``name`` in a buffer (registered as a storage or not), after charging its size."""
        try:
            info = self.archive.getinfo(name)
        except KeyError:
            raise CheckpointFault(f"record {shown(name)} is missing from the archive") from None
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or info.flag_bits & 0x1:
            raise CheckpointFault(f"record {shown(name)} is encrypted or uses an unsupported compression")
        self.budget.charge(info.file_size, f"record {shown(name)}")
        buffer = self.registry.new_buffer(info.file_size, register, zeroed=False)
        with self.archive.open(info) as stream:  # fills every byte of the buffer or raises
            _copy_into(memoryview(buffer.numpy()), stream.read, f"record {shown(name)}")
            if stream.read(1):
                raise CheckpointFault(f"record {shown(name)} is longer than its declared size")
        return buffer

    def load(self, pid: Any) -> ArchiveStorage:
        dtype, key, numel, _ = _storage_id(pid, 5)
        if key not in self.records:
            self.records[key] = self.read(f"{self.prefix}data/{key}", register=True).untyped_storage()
        untyped = self.records[key]
        if numel * dtype.itemsize > untyped.nbytes():
            raise CheckpointFault(
                f"storage {shown(key)!r} claims {numel} {dtype} elements but its record holds {untyped.nbytes()} bytes"
            )
        return ArchiveStorage(untyped, dtype, key)


def _read_zip(path: Path, budget: ExpansionBudget) -> tuple[Any, StorageRegistry]:
    registry = StorageRegistry()
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        if len(set(names)) != len(names):
            raise CheckpointFault("the zip archive names a record twice")
        pickles = [name for name in names if name.endswith("/data.pkl") and name.count("/") == 1]
        if len(pickles) != 1:
            scripted = any(name.endswith("constants.pkl") for name in names)
            kind = "a TorchScript archive (torch.jit.save)" if scripted else "a zip file"
            raise CheckpointFault(f"it is {kind} without one <name>/data.pkl record, not a torch.save checkpoint")
        prefix = pickles[0].removesuffix("data.pkl")
        storages = _ZipStorages(archive, prefix, budget, registry)
        if f"{prefix}byteorder" in names and bytes(storages.read(f"{prefix}byteorder").numpy()) != b"little":
            raise CheckpointFault("it was saved on a big-endian machine; re-save it on a little-endian one")
        data = storages.read(pickles[0]).numpy().tobytes()
        return RestrictedUnpickler(data, budget, storages.load).load(), registry


class _LegacyStorages:
    def __init__(self, budget: ExpansionBudget, registry: StorageRegistry, file_size: int):
        self.budget = budget
        self.registry = registry
        self.file_size = file_size
        self.buffers: dict[str, tuple[Tensor, torch.dtype]] = {}

    def load(self, pid: Any) -> ArchiveStorage:
        dtype, key, numel, (view,) = _storage_id(pid, 6)
        if view is not None:
            raise CheckpointFault("it uses storage views of torch < 1.0, which are not read")
        nbytes = numel * dtype.itemsize
        if key not in self.buffers:
            if nbytes > self.file_size:
                raise CheckpointFault(f"storage {shown(key)!r} claims {nbytes} bytes, more than the whole file")
            self.budget.charge(nbytes, f"storage {shown(key)!r}")
            self.buffers[key] = (self.registry.new_buffer(nbytes), dtype)
        buffer, first_dtype = self.buffers[key]
        if first_dtype != dtype or buffer.numel() != nbytes:
            raise CheckpointFault(f"storage {shown(key)!r} is referenced with two different types or sizes")
        return ArchiveStorage(buffer.untyped_storage(), dtype, key)

    def fill(self, data: mmap.mmap, position: int, keys: Any) -> None:
        """Copy each key's ``int64 numel`` + bytes that follow the pickles into its buffer."""
        if type(keys) is not list or any(type(key) is not str for key in keys):
            raise CheckpointFault("the list of storage keys is malformed")
        for key in keys:
            if key not in self.buffers:
                raise CheckpointFault(f"it stores data for storage {shown(key)!r}, which no tensor uses")
            buffer, dtype = self.buffers.pop(key)
            data.seek(position)
            numel = int.from_bytes(data.read(8), "little", signed=True)
            if numel * dtype.itemsize != buffer.numel():
                raise CheckpointFault(f"storage {shown(key)!r} has {numel} elements in the data, not as declared")
            _copy_into(memoryview(buffer.numpy()), data.read, f"storage {shown(key)!r}")
            position = data.tell()
        if self.buffers:
            raise CheckpointFault(f"storage {shown(next(iter(self.buffers)))!r} has no data: the file is truncated")


def _read_legacy(path: Path, budget: ExpansionBudget) -> tuple[Any, StorageRegistry]:
    registry = StorageRegistry()
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:

        def next_pickle(position: int, persistent_load: Any = None) -> tuple[Any, int]:
            unpickler = RestrictedUnpickler(data, budget, persistent_load, start=position)
            return unpickler.load(), unpickler.position

        try:
            magic, position = next_pickle(0)
        except ForbiddenGlobals as refusal:
            raise ForbiddenGlobals(refusal.names, in_checkpoint=False) from None
        if magic != TORCH_MAGIC:
            raise CheckpointFault("it is a pickle but not a torch.save checkpoint (no torch magic number)")
        version, position = next_pickle(position)
        if version != LEGACY_PROTOCOL:
            raise CheckpointFault(f"unknown legacy torch.save protocol {shown(version, 20)}")
        system, position = next_pickle(position)
        if type(system) is not dict or system.get("little_endian") is not True:
            raise CheckpointFault("it was saved on a big-endian machine; re-save it on a little-endian one")
        storages = _LegacyStorages(budget, registry, len(data))
        result, position = next_pickle(position, storages.load)
        keys, position = next_pickle(position)
        storages.fill(data, position, keys)
        return result, registry


def read_torch_file(path: Path, budget: ExpansionBudget) -> tuple[Any, StorageRegistry]:
    """The raw unpickled object of a ``torch.save`` file (before the graph walk) and its storage registry."""
    if budget.file_size == 0:
        raise CheckpointFault("the file is empty")
    if zipfile.is_zipfile(path):
        return _read_zip(path, budget)
    with path.open("rb") as handle:
        head = handle.read(1)
    if head != b"\x80":
        raise CheckpointFault("it is neither a torch.save zip archive nor a legacy torch.save file")
    return _read_legacy(path, budget)
