"""Warn when another project's ``ldm/`` tree is on ``sys.path`` but this package was imported instead.

ControlNet, InstructPix2Pix and the web UIs vendor their own copy of the original ``ldm`` tree. Python imports the
first ``ldm`` it finds on ``sys.path``: run from such a project's root, its own tree wins; but a script in a
sub-folder that appends the project root (``sys.path.append(os.getcwd())``) gets this installed package instead,
silently. Both trees are usable, and which one a user wants is theirs to decide, so this does not change the import:
it says once which tree was imported and which was passed over, and how to choose. ``LDM_ALLOW_SHADOWING=1``
silences it.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

#: A file every original ``ldm`` tree has (CompVis latent-diffusion / stable-diffusion, Stability-AI stablediffusion).
_MARKER = Path("ldm") / "models" / "diffusion" / "ddpm.py"


class ShadowedLdmWarning(UserWarning):
    """Another ``ldm`` tree is on ``sys.path``; this package was imported in its place."""


def other_ldm_trees(own_package: Path, search_path: list[str] | None = None) -> list[Path]:
    """The ``ldm`` directories on ``search_path`` (default ``sys.path``) that hold an original-style tree and are
    not ``own_package`` itself, in search order."""
    own = own_package.resolve()
    found: list[Path] = []
    for entry in sys.path if search_path is None else search_path:
        root = Path(entry or os.getcwd())
        candidate = root / _MARKER
        if not candidate.is_file():
            continue
        tree = candidate.parents[2].resolve()  # .../ldm
        if tree != own and tree not in found:
            found.append(tree)
    return found


def warn_if_shadowing(own_package: Path) -> None:
    """One ShadowedLdmWarning naming the imported tree and the ones passed over (unless LDM_ALLOW_SHADOWING)."""
    if os.environ.get("LDM_ALLOW_SHADOWING", "").strip().lower() in {"1", "true", "yes", "on"}:
        return
    others = other_ldm_trees(own_package)
    if not others:
        return
    listed = ", ".join(str(path) for path in others)
    warnings.warn(
        f"`import ldm` loaded this package ({own_package.resolve()}), not the ldm tree(s) at {listed}. To use a "
        "project's own tree, put its root first on sys.path (run from that root, or PYTHONPATH=<root>); to keep "
        "this package, ignore this or set LDM_ALLOW_SHADOWING=1.",
        ShadowedLdmWarning,
        stacklevel=3,
    )
