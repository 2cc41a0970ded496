"""Reading YAML configs that a user names: every way a file can be unusable (missing, a folder, not UTF-8, a YAML
syntax error, empty, not a mapping, ``???`` values left unset, a broken ``${...}`` interpolation) becomes one
:class:`~ldm.util.ConfigError` line naming the file (and line) and the fix."""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ldm.cli.validation import require_file
from ldm.util import ConfigError


def _syntax_line(path: Path, error: yaml.YAMLError) -> str:
    """``file:line:column: problem`` of a YAML error (PyYAML counts from 0)."""
    mark = getattr(error, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    context = getattr(error, "context", None)
    return f"{where}: YAML syntax error: {problem}" + (f" ({context})" if context else "")


def read_config(path: str | os.PathLike, flag: str = "--config") -> DictConfig:
    """The YAML mapping in ``path`` (named by ``flag``), or :class:`ConfigError` / ``FileNotFoundError`` /
    ``IsADirectoryError`` with one line naming the problem and the fix."""
    path = require_file(path, flag, "config file")
    try:
        config = OmegaConf.load(path)
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file {path} (from {flag}) is not UTF-8 text (byte {error.object[error.start]:#04x} "
                          f"at offset {error.start}); save it as UTF-8") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{_syntax_line(path, error)}; fix the file (from {flag})") from None
    except OmegaConfBaseException as error:
        raise ConfigError(f"config file {path} (from {flag}) cannot be read: {' '.join(str(error).split())}") from None
    if isinstance(config, ListConfig):
        raise ConfigError(f"config file {path} (from {flag}) holds a list; a config is a mapping (key: value)")
    if len(config) == 0:
        raise ConfigError(f"config file {path} (from {flag}) is empty; pass the model's YAML config")
    return config


def check_complete(config: DictConfig, source: str) -> None:
    """:class:`ConfigError` naming the keys of ``config`` left ``???`` (OmegaConf's mandatory value) or whose
    ``${...}`` interpolation cannot be resolved; ``source`` says where the config came from."""
    try:
        missing = sorted(OmegaConf.missing_keys(config))
        if not missing:
            OmegaConf.to_container(config, resolve=True)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "a value"
        reason = " ".join(str(error).splitlines()[0].split())
        raise ConfigError(f"{source}: {key} cannot be resolved ({reason}); fix the ${{...}} reference") from None
    if missing:
        shown = ", ".join(missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        raise ConfigError(f"{source}: mandatory value '???' left unset for {shown}; set it in the file or on the "
                          f"command line as {missing[0]}=VALUE")
