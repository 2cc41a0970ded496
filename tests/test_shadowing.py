"""A project's own vendored ``ldm/`` tree next to this installed package: which one ``import ldm`` gives is
unchanged (Python's search order), and when this package wins over another tree on ``sys.path`` one warning
says so."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import ldm
from ldm.shadowing import ShadowedLdmWarning, other_ldm_trees, warn_if_shadowing

OWN = Path(ldm.__file__).parent
REPO = OWN.parent


def _vendored_tree(root: Path) -> Path:
    """A minimal original-style tree: ``root/ldm/models/diffusion/ddpm.py``."""
    (root / "ldm" / "models" / "diffusion").mkdir(parents=True)
    (root / "ldm" / "__init__.py").write_text("")
    (root / "ldm" / "models" / "diffusion" / "ddpm.py").write_text("")
    return root / "ldm"


def test_other_trees_are_found_in_search_order_and_our_own_is_not(tmp_path: Path) -> None:
    first, second = _vendored_tree(tmp_path / "a"), _vendored_tree(tmp_path / "b")
    (tmp_path / "c" / "ldm").mkdir(parents=True)  # an unrelated `ldm` folder without the tree's marker
    search = [str(REPO), str(tmp_path / "b"), str(tmp_path / "c"), str(tmp_path / "a"), str(tmp_path / "b")]
    assert other_ldm_trees(OWN, search) == [second.resolve(), first.resolve()]
    assert other_ldm_trees(OWN, [str(REPO)]) == []


def test_one_warning_names_both_trees_and_the_variable_silences_it(tmp_path: Path, monkeypatch) -> None:
    vendored = _vendored_tree(tmp_path / "project")
    monkeypatch.setattr(sys, "path", [*sys.path, str(tmp_path / "project")])
    monkeypatch.delenv("LDM_ALLOW_SHADOWING", raising=False)
    with pytest.warns(ShadowedLdmWarning) as record:
        warn_if_shadowing(OWN)
    assert len(record) == 1
    message = str(record[0].message)
    assert str(OWN.resolve()) in message and str(vendored.resolve()) in message and "sys.path" in message
    monkeypatch.setenv("LDM_ALLOW_SHADOWING", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_shadowing(OWN)


def _import_ldm(cwd: Path, code: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in {"PYTHONPATH", "LDM_ALLOW_SHADOWING"}}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=60, check=True)


def test_python_search_order_decides_and_only_the_shadowing_case_warns(tmp_path: Path) -> None:
    vendored = _vendored_tree(tmp_path / "project")
    # Run from the project's root: its own tree comes first and is imported; this package is not involved.
    own_first = _import_ldm(tmp_path / "project", "import ldm; print(ldm.__file__)")
    assert Path(own_first.stdout.strip()).parent.resolve() == vendored.resolve()
    # A script that appends the project root after an installed copy of this package: this package is imported
    # and says which tree it passed over.
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); sys.path.append({str(tmp_path / 'project')!r}); "
            "import ldm; print(ldm.__file__)")
    shadowing = _import_ldm(tmp_path, code)
    assert Path(shadowing.stdout.strip()).parent.resolve() == OWN.resolve()
    assert "ShadowedLdmWarning" in shadowing.stderr and str(vendored.resolve()) in shadowing.stderr
