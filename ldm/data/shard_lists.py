"""Shard specifications → the ordered list of shard URLs a stream reads.

A spec is one of

* a brace pattern, ``"data/{000000..000099}.tar"`` (several patterns joined by ``::`` also work, as in webdataset);
* a list of patterns (each expanded, the results concatenated in order);
* a shard-list file: a path to an existing text file that is not itself a tar (``.txt``, ``.list``, ``.shards``,
  anything but ``.tar``/``.tgz``/``.tar.gz``), one URL or pattern per line, blank lines and ``#`` comments skipped.

A ``tar_base`` is joined in front of relative paths (not in front of ``pipe:`` commands, URLs with a scheme or
absolute paths), as ``os.path.join(tar_base, shard)``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from webdataset.shardlists import expand_urls

from ldm.util import ConfigError

_TAR_SUFFIXES = (".tar", ".tgz", ".tar.gz")


def _is_shard_list_file(spec: str) -> bool:
    return not spec.lower().endswith(_TAR_SUFFIXES) and "{" not in spec and Path(spec).expanduser().is_file()


def _is_relative_path(url: str) -> bool:
    return not (url.startswith("pipe:") or "://" in url or os.path.isabs(url) or url.startswith("~"))


def _read_shard_list(path: Path) -> list[str]:
    lines = [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    urls = [url for line in lines if line for url in expand_urls(line)]
    if not urls:
        raise ConfigError(f"shard-list file {str(path)!r} lists no shards; write one tar path or URL per line.")
    base = path.parent
    return [str(base / url) if _is_relative_path(url) else url for url in urls]


def expand_shards(spec: str | Sequence[str], tar_base: str | None = None, key: str = "shards") -> list[str]:
    """The shard URLs of ``spec`` in order (see the module docstring); ``key`` names the setting in errors.

    Paths inside a shard-list file are relative to the file's folder; ``tar_base`` applies to the others.
    """
    if isinstance(spec, str):
        specs = [spec]
    elif isinstance(spec, Sequence) and all(isinstance(s, str) for s in spec):
        specs = list(spec)
    else:
        raise ConfigError(f"'{key}' must be a brace pattern, a list of them or a shard-list file; got {spec!r}.")
    urls: list[str] = []
    for item in specs:
        item = item.strip()
        if tar_base and _is_relative_path(item):
            item = os.path.join(tar_base, item)
        if _is_shard_list_file(item):
            urls.extend(_read_shard_list(Path(item).expanduser()))
        else:
            urls.extend(expand_urls(item))
    if not urls:
        raise ConfigError(f"'{key}' names no shards ({spec!r}); give e.g. 'data/{{000000..000009}}.tar'.")
    return urls
