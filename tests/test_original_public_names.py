"""Every public name of the original ``ldm`` trees imports from the same path here, or is listed as missing.

``tests/data/original_public_names.txt`` lists them (made with ``ast`` from CompVis/latent-diffusion,
CompVis/stable-diffusion and Stability-AI/stablediffusion; see its header). Names not provided yet are in
``original_public_names_missing.txt`` with a reason; that list may only shrink: a listed name that appears makes
the second test fail until its line is deleted.
"""

from __future__ import annotations

import importlib
from pathlib import Path

DATA = Path(__file__).parent / "data"


def _entries(filename: str) -> list[str]:
    """``module:name`` keys of a kept list: comments (``#`` to end of line) and blank lines dropped."""
    keys = []
    for line in (DATA / filename).read_text().splitlines():
        key = line.split("#", 1)[0].strip()
        if key:
            keys.append(key)
    return keys


def _resolves(key: str) -> bool:
    """Whether ``from module import name`` works for ``key = "module:name"``."""
    module_name, attribute = key.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and module_name.startswith(error.name):
            return False
        raise
    return hasattr(module, attribute)


def test_the_lists_are_well_formed():
    names = _entries("original_public_names.txt")
    missing = _entries("original_public_names_missing.txt")
    assert len(names) > 300
    assert names == sorted(set(names))
    assert len(missing) == len(set(missing))
    assert set(missing) <= set(names), sorted(set(missing) - set(names))
    for line in (DATA / "original_public_names_missing.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert "#" in line and line.split("#", 1)[1].strip(), f"no reason given: {line!r}"


def test_every_name_not_listed_missing_imports():
    missing = set(_entries("original_public_names_missing.txt"))
    absent = [key for key in _entries("original_public_names.txt") if key not in missing and not _resolves(key)]
    assert absent == [], f"original public names that no longer import: {absent}"


def test_every_name_listed_missing_is_still_missing():
    present = [key for key in _entries("original_public_names_missing.txt") if _resolves(key)]
    assert present == [], f"now provided; delete these lines from original_public_names_missing.txt: {present}"


def _positional_parameters(obj: object) -> list[str] | None:
    """Names of the positional parameters of a function, or of a class's ``__init__`` without ``self``."""
    import inspect

    try:
        signature = inspect.signature(obj.__init__ if inspect.isclass(obj) else obj)
    except (TypeError, ValueError):  # builtins and C types without a signature
        return None
    params = [p for p in signature.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if inspect.isclass(obj) and params and params[0].name == "self":
        params = params[1:]
    return [p.name for p in params]


def test_every_original_signature_is_kept():
    """Positional parameters keep the original's names and order (clients call them positionally and by
    keyword); ours may add parameters after them. The originals' lists: original_public_signatures.txt."""
    wrong = []
    for line in (DATA / "original_public_signatures.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, variants = line.split(None, 1)
        module_name, attribute = key.split(":")
        ours = _positional_parameters(getattr(importlib.import_module(module_name), attribute))
        if ours is None:
            continue
        options = [[] if v.strip() == "-" else v.strip().split(",") for v in variants.split(" | ")]
        if not any(ours[: len(option)] == option for option in options):
            wrong.append(f"{key}: ours {ours}, original {variants}")
    assert wrong == [], "\n".join(wrong)
