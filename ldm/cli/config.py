"""Config merging: YAML files left to right, then ``key.path=value`` overrides; ``lightning.trainer`` with the
command line's Trainer options on top, Lightning 1 keys (``gpus``, ``accelerator: ddp``) mapped to Lightning 2."""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Collection
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ldm.cli.args import trainer_arg_names
from ldm.cli.errors import UsageError
from ldm.cli.trainer_values import check_config_values, check_trainer_values
from ldm.config_file import check_complete, read_config
from ldm.config_trust import check_config
from ldm.util import ConfigError, get_obj_from_str


def _accepted_params(target: Any) -> set[str] | None:
    """Keyword names ``target`` accepts (following ``**kwargs`` up the class hierarchy); None if anything goes."""
    try:
        obj = get_obj_from_str(target)
    except ConfigError:
        return None
    functions = [cls.__init__ for cls in obj.__mro__] if inspect.isclass(obj) else [obj]
    names: set[str] = set()
    for function in functions:
        try:
            parameters = inspect.signature(function).parameters.values()
        except (TypeError, ValueError):
            return None
        names |= {p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return names - {"self"}
    return None


def check_dotlist_key(config: DictConfig, key: str) -> None:
    """Raise :class:`UsageError` if ``key`` is not a path of ``config`` and cannot be a new one.

    New keys are allowed under ``lightning.`` and as keyword arguments of a ``params`` node's ``target``.
    """
    parts = key.split(".")
    node: Any = config
    for depth, part in enumerate(parts):
        where = repr(".".join(parts[:depth])) if depth else "the config"
        if isinstance(node, DictConfig) and part in node:
            node = node[part]
            continue
        if parts[0] == "lightning":
            return
        if not isinstance(node, DictConfig):
            raise UsageError(f"unknown config key {key!r}: {where} is not a mapping.")
        is_new_param = depth == len(parts) - 1 and depth > 0 and parts[depth - 1] == "params"
        choices = [str(k) for k in node.keys()]
        if is_new_param:
            parent = OmegaConf.select(config, ".".join(parts[:-2])) if depth > 1 else config
            accepted = _accepted_params(parent.get("target")) if isinstance(parent, DictConfig) else None
            if accepted is None or part in accepted:
                return
            choices = sorted(accepted)
        close = difflib.get_close_matches(part, choices, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else f"; known: {sorted(choices)}"
        raise UsageError(f"unknown config key {key!r}: {where} has no key {part!r}{hint}")


def load_config(paths: list[str], dotlist: list[str], untrusted: Collection[str] = ()) -> DictConfig:
    """Merge the YAML files left to right, then the ``key.path=value`` overrides. The files in ``untrusted`` (a
    resumed run's saved configs) have their targets screened before anything is imported from them
    (:func:`ldm.config_trust.check_config`; ``--trust-config`` lifts it). Every file must be a readable YAML
    mapping, and the result complete (no ``???`` left) with its known settings in range (:mod:`ldm.config_file`,
    :mod:`ldm.cli.trainer_values`); each problem is one error line."""
    configs = []
    for path in paths:
        if os.path.isdir(path):
            raise UsageError(f"config file {path!r} is a directory; pass the .yaml file in it.")
        if not os.path.isfile(path):
            raise UsageError(f"config file {path!r} not found.")
        configs.append(read_config(path, "-b/--base"))
        if path in untrusted:
            check_config(configs[-1], path)
    config = OmegaConf.merge(*configs) if configs else OmegaConf.create()
    bad = [item for item in dotlist if "=" not in item or item.startswith("-")]
    if bad:
        raise UsageError(f"unrecognized argument(s) {bad}; config overrides are written key.path=value.")
    for item in dotlist:
        check_dotlist_key(config, item.split("=", 1)[0])
    merged = OmegaConf.merge(config, OmegaConf.from_dotlist(dotlist))
    check_complete(merged, f"the config of {', '.join(paths) or 'the command line'}")
    check_config_values(merged)
    return merged


#: Lightning 1 Trainer argument (found in the lightning.yaml of runs made with Lightning 1); see :func:`legacy_resume`.
LEGACY_RESUME_KEY = "resume_from_checkpoint"


def legacy_resume(lightning_config: DictConfig) -> str | None:
    """``lightning.trainer.resume_from_checkpoint`` (Lightning 1), which Lightning 2 takes as ``fit(ckpt_path=)``."""
    return lightning_config.get("trainer", OmegaConf.create()).get(LEGACY_RESUME_KEY)


def _lightning2_keys(trainer: dict[str, Any]) -> dict[str, Any]:
    """``gpus: 0,`` → ``accelerator: gpu, devices: "0,"`` (``gpus: 0`` → CPU); ``accelerator: ddp`` → ``strategy``;
    ``resume_from_checkpoint`` dropped (read by :func:`legacy_resume`)."""
    trainer = dict(trainer)
    if "gpus" in trainer:
        gpus = trainer.pop("gpus")
        if gpus in (0, None, "", "0"):
            trainer["accelerator"] = "cpu"
        else:
            trainer["accelerator"], trainer["devices"] = "gpu", gpus
    if trainer.get("accelerator") in ("ddp", "ddp_spawn", "dp"):
        trainer["strategy"] = trainer.pop("accelerator")
    trainer.pop(LEGACY_RESUME_KEY, None)
    return trainer


def trainer_config(lightning_config: DictConfig, cli: dict[str, Any]) -> DictConfig:
    """``lightning.trainer`` updated by the command line, Lightning 1 keys mapped to Lightning 2 ones in each."""
    saved = OmegaConf.to_container(lightning_config.get("trainer", OmegaConf.create()), resolve=True)
    config = OmegaConf.merge(_lightning2_keys(saved), _lightning2_keys(cli))
    valid = trainer_arg_names()
    for key in config:
        if key not in valid:
            close = difflib.get_close_matches(str(key), sorted(valid), n=3)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise UsageError(f"lightning.trainer.{key} is not a pytorch_lightning.Trainer argument{hint}")
    check_trainer_values(OmegaConf.to_container(config, resolve=True))
    return config
