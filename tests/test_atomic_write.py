"""Atomic writes: outputs appear whole or not at all (a failure mid-write leaves the old file and no temporary)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch
from PIL import Image

from ldm.atomic_write import atomic_file, atomic_path
from ldm.checkpoint import load_checkpoint, save_checkpoint, save_safetensors
from ldm.image_io import save_picture, save_samples


def _disk_full(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(OSError, match="No space"), atomic_file(target) as handle:
        handle.write(b"new, half")
        _disk_full()
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    with atomic_file(target) as handle:
        handle.write(b"new")
    assert target.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_atomic_path_renames_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "x.safetensors"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("writer failed")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_checkpoint_writers_are_atomic(tmp_path: Path, monkeypatch, suffix: str) -> None:
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    path = tmp_path / f"model{suffix}"
    write = (lambda p, s: save_checkpoint(p, s, global_step=3)) if suffix == ".ckpt" else save_safetensors
    write(path, state)
    before = path.read_bytes()
    target = "torch.save" if suffix == ".ckpt" else "safetensors.torch.save_file"
    monkeypatch.setattr(target, _disk_full)
    with pytest.raises(OSError, match="No space"):
        write(path, {"w": torch.zeros(2, 3)})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [path.name]
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["state_dict"]["w"], state["w"])


def test_images_are_written_atomically_in_their_format(tmp_path: Path, monkeypatch) -> None:
    picture = Image.new("RGB", (4, 4), (10, 20, 30))
    save_picture(picture, tmp_path / "a.jpg")
    assert Image.open(tmp_path / "a.jpg").format == "JPEG"
    paths = save_samples(torch.full((2, 3, 4, 4), 0.5), tmp_path)
    assert [p.name for p in paths] == ["00000.png", "00001.png"] and Image.open(paths[0]).format == "PNG"
    monkeypatch.setattr(Image.Image, "save", _disk_full)
    with pytest.raises(OSError):
        save_samples(torch.zeros(1, 3, 4, 4), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000.png", "00001.png", "a.jpg"]
    with pytest.raises(ValueError, match="image format"):
        save_picture(picture, tmp_path / "a.unknown")
