"""Tiny webdataset shards written in a test's tmp_path: PNG/JPEG images of a few pixels whose red channel encodes
the sample number, captions in ``.txt`` and metadata in ``.json`` (the img2dataset layout)."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image


def colour_of(number: int) -> tuple[int, int, int]:
    """The flat colour of sample ``number``'s image (red = number mod 256, so the pixels identify the sample)."""
    return number % 256, 40, 200


def image_bytes(size: tuple[int, int], colour: tuple[int, int, int], fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, fmt)
    return buffer.getvalue()


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


Member = Callable[[int], dict[str, bytes]]


def default_members(number: int, size: tuple[int, int] = (12, 8)) -> dict[str, bytes]:
    """``png`` (flat :func:`colour_of`), ``txt`` ("caption N") and ``json`` (caption and original size)."""
    meta = {"caption": f"caption {number}", "original_width": size[0], "original_height": size[1]}
    return {"png": image_bytes(size, colour_of(number)), "txt": f"caption {number}".encode(),
            "json": json.dumps(meta).encode()}


def write_shards(root: Path, per_shard: list[int], members: Callable[[int], dict[str, Any]] = default_members,
                 pattern: str = "{:06d}.tar") -> list[str]:
    """Shards ``root/000000.tar, ...`` holding ``per_shard[i]`` samples each, numbered consecutively; sample ``n``
    has key ``"%08d" % n`` and the members ``members(n)``. Returns the shard paths."""
    root.mkdir(parents=True, exist_ok=True)
    paths, number = [], 0
    for shard, count in enumerate(per_shard):
        path = root / pattern.format(shard)
        with tarfile.open(path, "w") as tar:
            for _ in range(count):
                for ext, data in members(number).items():
                    add_member(tar, f"{number:08d}.{ext}", data)
                number += 1
        paths.append(str(path))
    return paths


def keys_of(batches: list[dict[str, Any]]) -> list[str]:
    return [key for batch in batches for key in batch["__key__"]]
