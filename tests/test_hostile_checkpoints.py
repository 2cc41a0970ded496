"""Hostile checkpoint files (issue 22, items 1-4 and 6): each is crafted here, loaded through
ldm.checkpoint.load_checkpoint (the one loader every entry point uses) and scripts/convert_checkpoint.py, and must
end in one clear line or a correct safe result: no hang, no code run, no memory the file does not hold, no
environment value, no allocation beyond the bound. Real checkpoints must keep loading exactly as torch.load reads
them.
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from ldm.checkpoint import (
    CheckpointError,
    CheckpointExpansionError,
    UnsafeCheckpointError,
    load_checkpoint,
    load_state_dict_file,
)
from ldm.checkpoint_archive import TORCH_MAGIC
from scripts.convert_checkpoint import main as convert

ROOT = Path(__file__).resolve().parents[1]
REFDATA = ROOT / "tests" / "refdata"

# ----------------------------------------------------------------------------------------------- crafting files


class StorageRef:
    """A storage record of a crafted archive: pickled as torch's persistent id ``("storage", type, key, ...)``."""

    def __init__(self, key: str, kind: type = torch.FloatStorage, numel: int = 1, legacy: bool = False):
        self.key, self.kind, self.numel, self.legacy = key, kind, numel, legacy


class Call:
    """Pickles as ``func(*args)``: a REDUCE of any global, the way a hostile file is written."""

    def __init__(self, func: Any, *args: Any):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class _CraftPickler(pickle.Pickler):
    def persistent_id(self, obj: Any):
        if not isinstance(obj, StorageRef):
            return None
        pid = ("storage", obj.kind, obj.key, "cpu", obj.numel)
        return (*pid, None) if obj.legacy else pid


def craft_pickle(obj: Any, protocol: int = 2) -> bytes:
    buffer = io.BytesIO()
    _CraftPickler(buffer, protocol=protocol).dump(obj)
    return buffer.getvalue()


def tensor_call(storage: StorageRef, size: tuple, stride: tuple, offset: int = 0) -> Call:
    return Call(torch._utils._rebuild_tensor_v2, storage, offset, size, stride, False, collections.OrderedDict())


def write_archive(path: Path, obj: Any = None, records: dict[str, bytes] | None = None, *, pkl: bytes | None = None,
                  deflated: dict[str, int] | None = None) -> Path:
    """A torch zip archive: ``archive/data.pkl`` (``obj`` pickled, or raw ``pkl``), its storage records, and
    ``deflated`` records of that many zero bytes, deflate-compressed."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", craft_pickle(obj) if pkl is None else pkl)
        archive.writestr("archive/byteorder", "little")
        for key, data in (records or {}).items():
            archive.writestr(f"archive/data/{key}", data)
        for key, size in (deflated or {}).items():
            info = zipfile.ZipInfo(f"archive/data/{key}")
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w") as stream:
                for start in range(0, size, 1 << 22):
                    stream.write(bytes(min(1 << 22, size - start)))
        archive.writestr("archive/version", "3\n")
    return path


def write_legacy(path: Path, obj: Any, keys: list[str], data: bytes = b"") -> Path:
    """The pre-1.6 layout: magic, protocol, system info, the object, storage keys, then raw storage data."""
    system = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    with path.open("wb") as handle:
        for part in (TORCH_MAGIC, 1001, system):
            pickle.dump(part, handle, protocol=2)
        handle.write(craft_pickle(obj))
        pickle.dump(keys, handle, protocol=2)
        handle.write(data)
    return path


PROBE = """
import contextlib, io, json, re, sys, time
from ldm.checkpoint import load_checkpoint, load_state_dict_file
from ldm.sampling_cli import run_script
from scripts.convert_checkpoint import main as convert

def rss(field):
    return int(re.search(field + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024

def run(mode, args):
    if mode == "load":
        value = load_checkpoint(args[0]).get("hyper_parameters")
        load_state_dict_file(args[0])
        return {"ok": True, "value": repr(value)}
    stderr, sys.argv = io.StringIO(), ["convert_checkpoint.py", *args]
    with contextlib.redirect_stderr(stderr):
        try:
            run_script(convert)
        except SystemExit as stop:
            return {"ok": False, "exit": stop.code, "stderr": stderr.getvalue()}
    return {"ok": True, "exit": 0, "stderr": stderr.getvalue()}

for mode, *args in json.loads(sys.argv[1]):
    with contextlib.suppress(OSError):
        open("/proc/self/clear_refs", "w").write("5")  # restart the peak-RSS count (Linux >= 4.0)
    baseline, start = rss("VmRSS"), time.monotonic()
    try:
        outcome = run(mode, args)
    except Exception as error:
        outcome = {"ok": False, "type": type(error).__name__, "message": str(error)}
    outcome.update(seconds=time.monotonic() - start, peak_growth_mb=rss("VmHWM") - baseline)
    print(json.dumps(outcome))
"""


def probe(*jobs: tuple[str, ...], env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Run loads (``("load", path)``) and conversions as the script runs them (``("convert", in, out, ...)``)
    in one fresh process with a 20 s timeout (a hang fails the test). Each outcome has the result or error, the
    time and the growth of the process's peak RSS during that job."""
    spec = json.dumps([[mode, *map(str, args)] for mode, *args in jobs])
    result = subprocess.run([sys.executable, "-c", PROBE, spec], cwd=ROOT, capture_output=True, text=True,
                            timeout=20, env={**os.environ, **(env or {})})
    outcomes = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(outcomes) == len(jobs), result.stderr[-2000:]
    return outcomes


def run_converter(*args: Path | str, timeout: int = 60) -> subprocess.CompletedProcess:
    """scripts/convert_checkpoint.py as a user runs it."""
    return subprocess.run([sys.executable, "scripts/convert_checkpoint.py", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _plain(value: Any) -> Any:
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=False)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(item) for item in value)
    return value


def assert_same(ours: Any, reference: Any, where: str = "") -> None:
    """Equal structure, key order, types and tensors (values, dtype, shape, strides)."""
    if isinstance(reference, torch.Tensor):
        assert isinstance(ours, torch.Tensor) and ours.dtype == reference.dtype, where
        assert ours.shape == reference.shape and ours.stride() == reference.stride(), where
        assert torch.equal(ours, reference), where
    elif isinstance(reference, dict):
        assert isinstance(ours, dict) and list(ours) == list(reference), where
        for key in reference:
            assert_same(ours[key], reference[key], f"{where}/{key}")
    elif isinstance(reference, (list, tuple)):
        assert type(ours) is type(reference) and len(ours) == len(reference), where
        for index, (mine, theirs) in enumerate(zip(ours, reference)):
            assert_same(mine, theirs, f"{where}[{index}]")
    else:
        assert ours == reference and type(ours) is type(reference), (where, ours, reference)


def one_line_error(error: BaseException) -> str:
    message = str(error)
    assert "\n" not in message and len(message) < 1200, message
    return message


# ----------------------------------------------------------------------------------------------- 1: hangs, cycles


def test_config_that_is_its_own_parent_loads_quickly_as_a_plain_dict(tmp_path):
    """The hang: an allow-listed OmegaConf object whose parent is itself (and a pair parented to each other)."""
    looped = OmegaConf.create({"a": 1, "inner": {"b": "x"}})
    looped._set_parent(looped)
    pair = OmegaConf.create({"c": [1, 2]})
    pair._get_node("c")._set_parent(pair)
    pair._set_parent(pair._get_node("c"))
    path = tmp_path / "looped.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": {"looped": looped, "pair": pair}}, path)
    assert path.stat().st_size < 4096

    loaded, converted = probe(("load", path), ("convert", path, tmp_path / "looped.safetensors"))
    assert loaded["ok"], loaded
    assert loaded["value"] == repr({"looped": {"a": 1, "inner": {"b": "x"}}, "pair": {"c": [1, 2]}})
    assert loaded["seconds"] < 5
    assert converted["ok"] and converted["seconds"] < 5, converted
    hyper = json.loads(load_checkpoint(tmp_path / "looped.safetensors")["metadata"]["hyper_parameters"])
    assert hyper == {"looped": {"a": 1, "inner": {"b": "x"}}, "pair": {"c": [1, 2]}}


def test_cycles_and_exponential_sharing_end_quickly_in_one_line(tmp_path):
    """A config containing itself, a list containing itself, and 60 levels of [x, x] (1 KB of pickle that
    json.dumps, as in convert's metadata, would walk 2**60 times)."""
    config = OmegaConf.create({"a": 1})
    config._content["self"] = config
    items: list = [1]
    items.append(items)
    node: list = []
    for _ in range(60):
        node = [node, node]
    for name, value in (("config", config), ("list", items), ("laughs", node)):
        torch.save({"state_dict": {}, "hyper_parameters": value}, tmp_path / f"{name}.ckpt")
    config_cycle, list_cycle, laughs = probe(
        ("load", tmp_path / "config.ckpt"), ("load", tmp_path / "list.ckpt"),
        ("convert", tmp_path / "laughs.ckpt", tmp_path / "laughs.safetensors"),
    )
    for outcome in (config_cycle, list_cycle):
        assert outcome["type"] == "CheckpointError" and "reference cycle" in outcome["message"], outcome
    assert laughs["exit"] == 2 and "more than the limit" in laughs["stderr"], laughs
    assert len(laughs["stderr"].strip().splitlines()) == 1 and not (tmp_path / "laughs.safetensors").exists()
    assert max(outcome["seconds"] for outcome in (config_cycle, list_cycle, laughs)) < 5


def test_deep_nesting_is_refused_without_recursion_error(tmp_path):
    depth = 5000
    pkl = b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."
    path = write_archive(tmp_path / "deep.ckpt", pkl=pkl)
    with pytest.raises(CheckpointError, match="nested more than 100 levels") as info:
        load_checkpoint(path)
    one_line_error(info.value)


# ----------------------------------------------------------------------------------------------- 2: unwritten memory


@pytest.mark.parametrize(
    ("make", "asked"),
    [
        (lambda: Call(torch.ByteTensor, 4096), "torch.ByteTensor"),
        (lambda: Call(torch.FloatStorage, 4096), "torch.FloatStorage (called)"),
        (lambda: Call(torch.UntypedStorage, 4096), "torch.storage.UntypedStorage (called)"),
        (lambda: Call(bytearray, 4096), "builtins.bytearray"),
        (lambda: Call(torch._utils._rebuild_meta_tensor_no_storage, torch.float32, (8,), (1,), False),
         "torch._utils._rebuild_meta_tensor_no_storage"),
    ],
    ids=["ByteTensor(n)", "FloatStorage(n)", "UntypedStorage(n)", "bytearray(n)", "meta-tensor"],
)
def test_constructors_of_unwritten_memory_are_refused(tmp_path, make, asked):
    path = write_archive(tmp_path / "unwritten.ckpt", {"state_dict": {"w": make()}})
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(path)
    message = one_line_error(info.value)
    assert f"{asked} (would make memory the file does not hold)" in message
    assert "Nothing in the file was executed" in message and "convert_checkpoint.py" not in message
    assert not info.value.benign


@pytest.mark.parametrize(
    ("storage_arg", "size", "stride", "offset", "match"),
    [
        ([0.0] * 4, (4,), (1,), 0, "built on a list, not on a storage stored in the file"),
        (StorageRef("0", numel=4), (5,), (1,), 0, "reaches outside its storage"),
        (StorageRef("0", numel=4), (2, 2), (1, 3), 0, "reaches outside its storage"),
        (StorageRef("0", numel=4), (1,), (1,), 4, "reaches outside its storage"),
        (StorageRef("0", numel=4), (2,), (-1,), 0, "is not a non-negative int"),
        (StorageRef("0", numel=64), (1,), (1,), 0, "claims 64 torch.float32 elements but its record holds 16 bytes"),
    ],
    ids=["not-a-storage", "size", "stride", "offset", "negative-stride", "short-record"],
)
def test_tensors_only_view_bytes_of_the_file(tmp_path, storage_arg, size, stride, offset, match):
    obj = {"state_dict": {"w": tensor_call(storage_arg, size, stride, offset)}}
    path = write_archive(tmp_path / "view.ckpt", obj, {"0": np.arange(4, dtype=np.float32).tobytes()})
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path)
    one_line_error(info.value)


def test_in_bounds_views_of_one_record_load_with_the_file_bytes(tmp_path):
    storage = StorageRef("0", numel=6)
    obj = {"state_dict": {"whole": tensor_call(storage, (2, 3), (3, 1)), "column": tensor_call(storage, (2,), (3,), 2)}}
    path = write_archive(tmp_path / "views.ckpt", obj, {"0": np.arange(6, dtype=np.float32).tobytes()})
    state = load_state_dict_file(path)
    assert torch.equal(state["whole"], torch.arange(6.0).reshape(2, 3))
    assert torch.equal(state["column"], torch.tensor([2.0, 5.0]))
    assert state["whole"].untyped_storage().data_ptr() == state["column"].untyped_storage().data_ptr()


@pytest.mark.parametrize(("numel", "match"), [(16, "has no data: the file is truncated"),
                                              (1 << 20, "claims 4194304 bytes, more than the whole file")])
def test_legacy_file_with_a_storage_left_unwritten_is_refused_and_not_converted(tmp_path, numel, match):
    """torch.load allocates a legacy storage at its claimed size and fills it later; here nothing fills it."""
    obj = {"state_dict": {"w": tensor_call(StorageRef("7", numel=numel, legacy=True), (numel,), (1,))}}
    path = write_legacy(tmp_path / "unfilled.ckpt", obj, keys=[])
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path)
    one_line_error(info.value)
    if numel == 16:
        result = run_converter(path, tmp_path / "unfilled.safetensors")
        assert result.returncode == 2 and "has no data" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "unfilled.safetensors").exists()


def test_legacy_file_with_its_data_loads(tmp_path):
    data = np.arange(4, dtype=np.float32)
    obj = {"state_dict": {"w": tensor_call(StorageRef("7", numel=4, legacy=True), (2, 2), (2, 1))}}
    path = write_legacy(tmp_path / "legacy.ckpt", obj, ["7"], (4).to_bytes(8, "little") + data.tobytes())
    assert torch.equal(load_state_dict_file(path)["w"], torch.arange(4.0).reshape(2, 2))


# ----------------------------------------------------------------------------------------------- 3: environment


SECRET_NAME = "LDM_HOSTILE_TEST_SECRET"
SECRET = "s3cr3t-value-9f2c7a"


def test_interpolations_from_a_checkpoint_are_never_resolved(tmp_path, monkeypatch):
    monkeypatch.setenv(SECRET_NAME, SECRET)
    reference = "${oc.env:" + SECRET_NAME + "}"
    hyper = OmegaConf.create({"token": reference, "nested": {"list": [reference, "${token}"]}, "whole": reference})
    path = tmp_path / "env.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "hyper_parameters": hyper, "global_step": 3}, path)

    checkpoint = load_checkpoint(path)
    assert checkpoint["hyper_parameters"] == {"token": reference, "nested": {"list": [reference, "${token}"]},
                                              "whole": reference}
    for output in (tmp_path / "env.safetensors", tmp_path / "env-back.ckpt"):
        source = path if output.suffix == ".safetensors" else tmp_path / "env.safetensors"
        convert([str(source), str(output)])
        assert SECRET.encode() not in output.read_bytes()
    metadata = load_checkpoint(tmp_path / "env.safetensors")["metadata"]
    assert json.loads(metadata["hyper_parameters"])["token"] == reference

    torch.save({"state_dict": OmegaConf.create({"w": reference})}, tmp_path / "env-error.ckpt")
    with pytest.raises(CheckpointError) as info:
        convert([str(tmp_path / "env-error.ckpt"), str(tmp_path / "never.safetensors")])
    assert SECRET not in one_line_error(info.value) and not (tmp_path / "never.safetensors").exists()


# ----------------------------------------------------------------------------------------------- 4: amplification


def test_compressed_record_is_refused_before_it_is_inflated(tmp_path):
    """128 MiB of zeros deflated into a ~130 KB file: refused from the record's declared size."""
    declared = 128 << 20
    obj = {"state_dict": {"w": tensor_call(StorageRef("0", torch.ByteStorage, declared), (declared,), (1,))}}
    path = write_archive(tmp_path / "bomb.ckpt", obj, deflated={"0": declared})
    assert path.stat().st_size < 200_000
    (outcome,) = probe(("load", path))
    assert outcome["type"] == "CheckpointExpansionError", outcome
    assert "record archive/data/0 would take 128.0 MiB" in outcome["message"]
    assert outcome["peak_growth_mb"] < 32


def test_deflated_record_within_the_bound_loads(tmp_path):
    obj = {"state_dict": {"w": tensor_call(StorageRef("0", torch.ByteStorage, 4096), (64, 64), (64, 1))}}
    path = write_archive(tmp_path / "deflated.ckpt", obj, deflated={"0": 4096})
    assert torch.equal(load_state_dict_file(path)["w"], torch.zeros(64, 64, dtype=torch.uint8))


def test_broadcast_tensor_is_refused_by_the_loader_and_the_converter(tmp_path):
    """A stride-0 view: 4 bytes in the file, 1 GiB once made contiguous (what convert_checkpoint writes)."""
    obj = {"state_dict": {"w": tensor_call(StorageRef("0"), (1 << 28,), (0,))}}
    path = write_archive(tmp_path / "broadcast.ckpt", obj, {"0": bytes(4)})
    assert path.stat().st_size < 1024
    with pytest.raises(CheckpointExpansionError, match=r"1\.0 GiB\) and other values .* more than the limit") as info:
        load_checkpoint(path)
    assert "max_expansion=None" in one_line_error(info.value) and "--allow-large-expansion" in str(info.value)
    trusted = load_checkpoint(path, max_expansion=None)["state_dict"]["w"]  # a view: nothing allocated
    assert trusted.shape == (1 << 28,) and trusted.stride() == (0,)

    (outcome,) = probe(("convert", path, tmp_path / "broadcast.safetensors"))
    assert outcome["exit"] == 2 and len(outcome["stderr"].strip().splitlines()) == 1, outcome
    assert "more than the limit of 4x its size" in outcome["stderr"] and outcome["peak_growth_mb"] < 32
    assert not (tmp_path / "broadcast.safetensors").exists()


def test_allow_large_expansion_converts_a_trusted_broadcast(tmp_path):
    path = tmp_path / "expanded.ckpt"
    torch.save({"state_dict": {"w": torch.full((1,), 0.5).expand(1 << 21)}}, path)  # 8 MiB from ~1.6 KB
    with pytest.raises(CheckpointExpansionError):
        convert([str(path), str(tmp_path / "refused.safetensors")])
    convert([str(path), str(tmp_path / "expanded.safetensors"), "--allow-large-expansion"])
    written = load_state_dict_file(tmp_path / "expanded.safetensors")["w"]
    assert written.shape == (1 << 21,) and bool((written == 0.5).all())


def test_one_tensor_under_many_keys_counts_per_key(tmp_path):
    shared = torch.zeros(16384)
    path = tmp_path / "shared.ckpt"
    torch.save({"state_dict": {f"k{i}": shared for i in range(2000)}}, path)  # 64 KiB, written 2000 times
    with pytest.raises(CheckpointExpansionError, match="125.0 MiB"):
        load_checkpoint(path)


def test_pickle_objects_count_against_the_bound(tmp_path):
    """1 M empty dicts cost ~64 MB of Python objects from 2 MB of opcodes."""
    count = 1 << 20
    pkl = b"\x80\x02]" + b"(" + b"}" * count + b"e."
    path = write_archive(tmp_path / "objects.ckpt", pkl=pkl)
    with pytest.raises(CheckpointExpansionError, match="the pickle's objects would take") as info:
        load_checkpoint(path)
    one_line_error(info.value)


@pytest.mark.parametrize(("key", "match"), [(2**61 + 5, "a dict key or set item is a int"),
                                            ((1, 2), "a dict key or set item is a tuple")])
def test_keys_that_could_collide_in_hash_are_refused(tmp_path, key, match):
    """Big ints share hashes (n and n + 2**61 - 1), tuples of ints can be solved for one: a file of such keys
    would make dict insertion quadratic."""
    path = write_archive(tmp_path / "keys.ckpt", {"state_dict": {}, "table": {key: 1}})
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)


def test_damaged_pickles_always_end_in_one_checkpoint_error(tmp_path):
    """400 seeded mutations (flips, cuts, insertions, splices) of a rich checkpoint's data.pkl: each loads or is
    a one-line CheckpointError; never another exception type."""
    import random

    source = io.BytesIO()
    torch.save({"state_dict": {"w": torch.arange(6.0).reshape(2, 3)}, "loss": np.float64(0.5), "tags": {"a"},
                "hyper_parameters": OmegaConf.create({"a": [1, {"b": "${oc.env:HOME}"}]})}, source)
    with zipfile.ZipFile(source) as archive:
        records = {name: archive.read(name) for name in archive.namelist()}
    pkl_name = next(name for name in records if name.endswith("data.pkl"))
    rng = random.Random(22)
    path = tmp_path / "damaged.ckpt"
    outcomes = collections.Counter()
    for _ in range(400):
        pkl = bytearray(records[pkl_name])
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(pkl))
            choice = rng.random()
            if choice < 0.5:
                pkl[at] = rng.randrange(256)
            elif choice < 0.75:
                del pkl[at : at + rng.randint(1, 8)]
            else:
                start = rng.randrange(len(pkl))
                pkl[at:at] = pkl[start : start + rng.randint(1, 30)]
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in records.items():
                archive.writestr(name, bytes(pkl) if name == pkl_name else data)
        try:
            load_checkpoint(path)
            outcomes["loaded"] += 1
        except CheckpointError as error:
            one_line_error(error)
            outcomes[type(error).__name__] += 1
    assert outcomes["CheckpointError"] > 100 and sum(outcomes.values()) == 400, outcomes


# ----------------------------------------------------------------------------------------------- 6: refusal messages


class _Namespace:
    """Pickled as argparse.Namespace (a legacy class of old Lightning checkpoints)."""


def _refuse(tmp_path: Path, payload: Any, name: str = "model.ckpt") -> UnsafeCheckpointError:
    path = tmp_path / name
    torch.save({"state_dict": {"w": torch.ones(1)}, "extra": payload}, path)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(path)
    one_line_error(info.value)
    return info.value


def test_hostile_globals_get_no_unsafe_advice(tmp_path):
    marker = tmp_path / "marker"
    error = _refuse(tmp_path, [Call(os.system, f"touch {marker}"), Call(eval, "1")])
    message = str(error)
    assert "posix.system (can run code)" in message and "builtins.eval (can run code)" in message
    assert "--unsafe-trust-pickle" not in message and "treat the file as hostile" in message
    assert not marker.exists() and not error.benign


def test_legacy_globals_get_a_quoted_conversion_command(tmp_path):
    import argparse

    name = "x;touch p;#$(touch q).ckpt"
    error = _refuse(tmp_path, argparse.Namespace(lr=1e-4), name=name)
    message = str(error)
    assert "argparse.Namespace (a legacy class)" in message and error.benign
    command = shlex.split(message.rsplit(": ", 1)[1])
    path = tmp_path / name
    assert command == ["python", "scripts/convert_checkpoint.py", str(path), str(path.with_suffix(".safetensors")),
                       "--unsafe-trust-pickle"]
    assert not (ROOT / "p").exists() and not (ROOT / "q").exists()


def test_mixed_or_unknown_globals_get_no_unsafe_advice(tmp_path):
    import argparse

    mixed = str(_refuse(tmp_path, [argparse.Namespace(), Call(getattr, 1, "real")]))
    assert "argparse.Namespace (a legacy class)" in mixed and "builtins.getattr (can run code)" in mixed
    assert "--unsafe-trust-pickle" not in mixed
    unknown = str(_refuse(tmp_path, StorageRef))  # a class of this test module: not known to be harmless
    assert f"{__name__}.StorageRef (not known to be harmless)" in unknown
    assert "--unsafe-trust-pickle" not in unknown and "save plain data instead" in unknown


def test_files_that_are_not_checkpoints_get_no_unsafe_advice(tmp_path):
    marker = tmp_path / "marker"
    plain_pickle = tmp_path / "plain.ckpt"
    plain_pickle.write_bytes(pickle.dumps(Call(os.system, f"touch {marker}"), protocol=2))
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(plain_pickle)
    assert "--unsafe-trust-pickle" not in one_line_error(info.value) and not marker.exists()
    data_pickle = tmp_path / "data.ckpt"
    data_pickle.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(CheckpointError, match="not a torch.save checkpoint"):
        load_checkpoint(data_pickle)


def test_unprintable_file_name_keeps_the_message_on_one_line(tmp_path):
    import argparse

    message = str(_refuse(tmp_path, argparse.Namespace(), name="new\nline.ckpt"))
    assert "new\\nline.ckpt" in message and "scripts/convert_checkpoint.py --unsafe-trust-pickle" in message


# ----------------------------------------------------------------------------------------------- real checkpoints


@pytest.mark.parametrize("name", ["vectors/schedules.pt", "vectors/unet_cls_tiny.pt", "sd2/vectors/v.pt",
                                  "ksamplers/ksamplers.pt", "x_transformer/reference.pt"])
def test_reference_files_load_exactly_as_torch_load_reads_them(name):
    path = REFDATA / name
    assert_same(load_checkpoint(path), torch.load(path, map_location="cpu", weights_only=True))


@pytest.mark.parametrize("layout", ["zip-protocol-2", "zip-protocol-4", "legacy"])
def test_every_layout_of_a_rich_checkpoint_loads(tmp_path, layout):
    base = torch.arange(12.0).reshape(3, 4)
    checkpoint = {
        "state_dict": collections.OrderedDict(
            w=base, view=base[1:, ::2], half=torch.ones(2, dtype=torch.float16), ids=torch.arange(77).expand(1, -1),
            flags=torch.tensor([True, False]), u16=torch.arange(3).to(torch.uint16),
        ),
        "global_step": 7, "loss": np.float32(0.25), "names": ("a", "b"), "tags": {"x", "y"}, "raw": b"\x00\xff",
        "hyper_parameters": OmegaConf.create({"lr": 1e-4, "layers": [1, 2], "nothing": None}),
    }
    checkpoint["state_dict"]._metadata = collections.OrderedDict({"": {"version": 1}})
    path = tmp_path / f"{layout}.ckpt"
    if layout == "legacy":
        del checkpoint["state_dict"]["u16"]  # the legacy layout has no storage class for uint16
        torch.save(checkpoint, path, _use_new_zipfile_serialization=False)
    else:
        torch.save(checkpoint, path, pickle_protocol=int(layout[-1]))
    loaded = load_checkpoint(path)
    assert_same(loaded, _plain(torch.load(path, weights_only=False)))
    assert loaded["state_dict"]._metadata == {"": {"version": 1}} and type(loaded["loss"]) is np.float32


def test_lightning_checkpoint_of_a_tiny_trainer_run_loads(tmp_path):
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    class Module(pl.LightningModule):
        def __init__(self, cfg=None):
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Linear(3, 2)

        def training_step(self, batch, batch_idx):
            loss = self.net(batch[0]).square().mean()
            self.log("train/loss", loss)
            return loss

        def configure_optimizers(self):
            optimizer = torch.optim.Adam(self.parameters(), lr=1e-3)
            return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, 1)]

    trainer = pl.Trainer(max_steps=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", default_root_dir=tmp_path,
                         callbacks=[ModelCheckpoint(dirpath=tmp_path, monitor="train/loss", save_last=True)])
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 3)), batch_size=4)
    trainer.fit(Module(cfg=OmegaConf.create({"target": "x.Y", "params": {"n": [1, 2]}})), data)
    for path in sorted(tmp_path.glob("*.ckpt")):
        assert_same(load_checkpoint(path), _plain(torch.load(path, weights_only=False)), path.name)
