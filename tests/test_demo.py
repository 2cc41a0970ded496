"""scripts/demo.py end to end with a few steps (``--smoke``): both main.py runs, txt2img sampling, the report.

The full demo is a benchmark (``make demo``), not a test: here only the path and the well-formedness of the
figures are checked, not their quality.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
ATTRIBUTES = ("color", "kind", "size", "position", "all")


def test_demo_smoke_path(tmp_path: Path) -> None:
    logdir, outdir = tmp_path / "logs", tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
           "XDG_CACHE_HOME": str(tmp_path / "cache")}  # the shapes feature net is trained and cached there
    command = [sys.executable, "scripts/demo.py", "--smoke", "--scales", "1", "4", "--logdir", str(logdir),
               "--outdir", str(outdir)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    runs = sorted(logdir.iterdir())
    assert [run.name.split("_", 1)[1] for run in runs] == ["autoencoder_kl", "txt2img_ldm_zero_snr"]
    for run in runs:
        assert (run / "checkpoints" / "last.ckpt").is_file()
        assert len(list((run / "configs").glob("*-project.yaml"))) == 1
        assert list((run / "images" / "train").glob("*.png"))
    stage2_config = next((runs[1] / "configs").glob("*-project.yaml")).read_text()
    assert str(runs[0] / "checkpoints" / "last.ckpt") in stage2_config

    report = json.loads((outdir / "demo_report.json").read_text())
    assert report["samples"] == 15
    stage1 = report["stage1"]
    assert all(math.isfinite(stage1[key]) for key in ("psnr_db", "kl", "latent_std", "latent_mean"))
    assert 0.0 < stage1["psnr_db_min"] <= stage1["psnr_db"] < 100.0 and stage1["latent_std"] > 0.0
    assert 0.0 < stage1["psnr_8bit_db"] < 100.0 and -1.0 <= stage1["ssim"] <= 1.0 and stage1["shapes_fd"] >= 0.0
    assert list((tmp_path / "cache" / "ldm" / "shapes_features").glob("*.safetensors"))
    assert set(report["shapes_fd"]) == {"1", "4"}
    for distance in report["shapes_fd"].values():
        assert distance["samples"] == 15 and distance["shapes_fd"] >= 0.0 and distance["real_floor"] >= 0.0
    assert set(report["stage2"]) == {"1", "4"}
    for scale, accuracy in report["stage2"].items():
        assert all(0.0 <= accuracy[key] <= 1.0 for key in ATTRIBUTES)
        folder = outdir / runs[1].name / f"txt2img-scale{scale}"
        assert report["paths"][f"samples, scale {scale}"] == str(folder / "samples")
        samples = sorted((folder / "samples").glob("*.png"))
        assert len(samples) == 15 and Image.open(samples[0]).size == (32, 32)
        assert (folder / "grid-0000.png").is_file()
    assert report["chance"]["color"] == 0.2 and report["chance"]["kind"] == 1 / 3
    assert report["timings_s"]["total"] > 0.0

    markdown = (outdir / "demo_report.md").read_text()
    assert "PSNR" in markdown and "| chance |" in markdown and "not Inception FID" in markdown
    assert str(outdir / "demo_report.md") in result.stdout
