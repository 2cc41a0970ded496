"""scripts/evaluate.py end to end on tiny image folders, an ADM-layout .npz and a tiny random model, with the
test feature extractor of tests/test_eval_reference_stats.py (``--feature-extractor module:factory``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from ldm.evaluation.extract import DatasetImageSource
from ldm.evaluation.frechet import fid_from_features
from ldm.evaluation.generated import GenerationPlan, parse_int_list, read_prompts
from ldm.evaluation.inception_score import inception_score_from_logits
from ldm.evaluation.kid import kernel_inception_distance
from ldm.evaluation.precision_recall import precision_recall
from ldm.evaluation.reference_stats import load_reference_stats, npz_images
from ldm.util import instantiate_from_config
from scripts.evaluate import main
from tests.test_eval_reference_stats import TinyExtractor

EXTRACTOR = ["--feature-extractor", "tests.test_eval_reference_stats:TinyExtractor", "--device", "cpu"]


def write_folder(folder: Path, count: int, seed: int, size: int = 16, offset: int = 0) -> np.ndarray:
    """``count`` random RGB PNGs (values ``offset`` + uniform noise) in ``folder``; returns them (N, H, W, 3)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = np.clip(rng.integers(0, 160, (count, size, size, 3)) + offset, 0, 255).astype(np.uint8)
    for index, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{index:04}.png")
    return images


def expected_features(images: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = TinyExtractor()(torch.from_numpy(np.array(images)).permute(0, 3, 1, 2))
    return {key: value.numpy() for key, value in out.items()}


def run(argv: list[str], capsys) -> dict:
    main(argv)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("FID") or "|" in lines[-1]  # the one-line table follows the JSON
    return json.loads("\n".join(lines[:-1]))


def test_folders_give_the_metrics_of_their_features(tmp_path, capsys) -> None:
    generated = write_folder(tmp_path / "gen", 24, seed=0, offset=60)
    real = write_folder(tmp_path / "real", 30, seed=1)
    results = run(["--samples", str(tmp_path / "gen"), "--reference", str(tmp_path / "real"), *EXTRACTOR,
                   "--metrics", "fid,kid,is,pr", "--kid-subsets", "5", "--kid-subset-size", "20", "--is-splits", "2",
                   "--batch-size", "7", "--json", str(tmp_path / "out.json")], capsys)
    gen, ref = expected_features(generated), expected_features(real)
    assert results["fid"] == pytest.approx(fid_from_features(gen["pool"], ref["pool"]), rel=1e-5)
    assert (results["kid_mean"], results["kid_std"]) == pytest.approx(
        kernel_inception_distance(gen["pool"], ref["pool"], 5, 20), rel=1e-4)
    assert (results["is_mean"], results["is_std"]) == pytest.approx(inception_score_from_logits(gen["logits"], 2),
                                                                    rel=1e-5, abs=1e-8)
    assert (results["precision"], results["recall"]) == pytest.approx(precision_recall(gen["pool"], ref["pool"]))
    assert results["num_generated"] == 24 and results["feature_extractor"] == "tiny-test"
    assert results["fid"] > 0
    assert json.loads((tmp_path / "out.json").read_text()) == results


def test_saved_statistics_and_adm_batches_give_the_same_fid(tmp_path, capsys) -> None:
    write_folder(tmp_path / "gen", 12, seed=2, offset=40)
    real = write_folder(tmp_path / "real", 16, seed=3)
    main(["--reference", str(tmp_path / "real"), "--save-stats", str(tmp_path / "ref.npz"), *EXTRACTOR])
    stats = load_reference_stats(tmp_path / "ref.npz")
    assert stats.feature_extractor == "tiny-test" and stats.pool_features.shape == (16, 6)
    from_folder = run(["--samples", str(tmp_path / "gen"), "--reference", str(tmp_path / "real"), *EXTRACTOR],
                      capsys)
    from_stats = run(["--samples", str(tmp_path / "gen"), "--reference", str(tmp_path / "ref.npz"), *EXTRACTOR,
                      "--metrics", "fid,pr"], capsys)
    np.savez(tmp_path / "adm_ref.npz", arr_0=real)  # an ADM reference batch with images only
    from_batch = run(["--samples", str(tmp_path / "gen"), "--reference", str(tmp_path / "adm_ref.npz"), *EXTRACTOR],
                     capsys)
    assert from_stats["fid"] == pytest.approx(from_folder["fid"], rel=1e-9)
    assert from_batch["fid"] == pytest.approx(from_folder["fid"], rel=1e-6)
    # an ADM file holding Inception statistics is refused for another extractor
    np.savez(tmp_path / "inception_ref.npz", mu=np.zeros(6), sigma=np.eye(6))
    with pytest.raises(ValueError, match="same feature extractor"):
        main(["--samples", str(tmp_path / "gen"), "--reference", str(tmp_path / "inception_ref.npz"), *EXTRACTOR])


def test_samples_from_a_tiny_model_and_a_data_config_reference(tmp_path, capsys) -> None:
    write_folder(tmp_path / "data", 10, seed=4)
    config = OmegaConf.load(Path(__file__).parent / "configs" / "tiny_ldm.yaml")
    config.model.params.first_stage_config.params.ckpt_path = None
    config.data.params.train.params.root = str(tmp_path / "data")
    config.data.params.train.params.flip_p = 0.0  # reference images without random flips
    config.data.params.validation.params.root = str(tmp_path / "data")
    OmegaConf.save(config, tmp_path / "tiny.yaml")
    torch.manual_seed(0)
    torch.save({"state_dict": instantiate_from_config(config.model).state_dict()}, tmp_path / "tiny.ckpt")
    model = ["--config", str(tmp_path / "tiny.yaml"), "--ckpt", str(tmp_path / "tiny.ckpt")]
    results = run([*model, "--sampler", "ddim", "--steps", "1", "--scale", "2.0",
                   "--null-class", "1", "--classes", "0-1", "--seeds", "0-3", "--batch-size", "2",
                   "--precision", "full", "--reference", str(tmp_path / "tiny.yaml"), "--metrics", "fid,is",
                   "--is-splits", "1", "--save-samples", str(tmp_path / "samples.npz"), "--outdir",
                   str(tmp_path / "out"), *EXTRACTOR], capsys)
    batch = npz_images(tmp_path / "samples.npz")
    assert batch.shape == (4, 16, 16, 3)
    with np.load(tmp_path / "samples.npz") as archive:
        np.testing.assert_array_equal(archive["arr_1"], [0, 1, 0, 1])
    saved = np.stack([np.asarray(Image.open(p)) for p in sorted((tmp_path / "out" / "samples").glob("*.png"))])
    np.testing.assert_array_equal(saved, batch)
    dataset = instantiate_from_config(config.data.params.train)
    reference = expected_features(np.stack([DatasetImageSource(dataset)[i][1].permute(1, 2, 0).numpy()
                                            for i in range(len(dataset))]))
    assert results["fid"] == pytest.approx(fid_from_features(expected_features(np.asarray(batch))["pool"],
                                                             reference["pool"]), rel=1e-4)


def test_bad_input_is_one_line(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--metrics", "fid,nope", "--samples", str(tmp_path)])
    assert "unknown ['nope']" in capsys.readouterr().err
    write_folder(tmp_path / "gen", 4, seed=5)
    with pytest.raises(ValueError, match="pass --reference"):
        main(["--samples", str(tmp_path / "gen"), "--metrics", "fid", *EXTRACTOR])


def test_plan_and_prompt_files(tmp_path) -> None:
    assert parse_int_list("0-3,7", "--seeds") == [0, 1, 2, 3, 7]
    with pytest.raises(ValueError, match="--classes '5-2'"):
        parse_int_list("5-2", "--classes")
    plan = GenerationPlan(seeds=list(range(5)), classes=[3, 4])
    assert plan.classes_of(1, 4) == [4, 3, 4] and plan.prompts_of(0, 2) is None
    (tmp_path / "captions.json").write_text(json.dumps({"annotations": [{"caption": " a cat "}, {"caption": "a dog"}]}))
    assert read_prompts(tmp_path / "captions.json") == ["a cat", "a dog"]
    (tmp_path / "prompts.txt").write_text("a cat\n\na dog\n")
    assert read_prompts(tmp_path / "prompts.txt") == ["a cat", "a dog"]


def test_clip_score_of_a_folder_follows_the_prompt_file(tmp_path, capsys, monkeypatch) -> None:
    import scripts.evaluate as script
    from tests.test_eval_clip_score import tiny_scorer

    scorer = tiny_scorer()
    monkeypatch.setattr(script, "clip_scorer", lambda opt, device: scorer)
    images = write_folder(tmp_path / "gen", 5, seed=6, size=32)
    (tmp_path / "prompts.txt").write_text("a red circle\na blue square\n")
    results = run(["--samples", str(tmp_path / "gen"), "--prompts", str(tmp_path / "prompts.txt"),
                   "--metrics", "clip", "--batch-size", "2", *EXTRACTOR], capsys)
    prompts = ["a red circle", "a blue square"] * 3
    expected = scorer(torch.from_numpy(images).permute(0, 3, 1, 2), prompts[:5]).mean()
    assert results["clip_score"] == pytest.approx(float(expected), rel=1e-5)


def test_kid_and_pr_need_reference_features(tmp_path) -> None:
    write_folder(tmp_path / "gen", 6, seed=7)
    np.savez(tmp_path / "moments.npz", mu=np.zeros(6), sigma=np.eye(6), feature_extractor=np.array("tiny-test"))
    with pytest.raises(ValueError, match="holds only moments"):
        main(["--samples", str(tmp_path / "gen"), "--reference", str(tmp_path / "moments.npz"), "--metrics", "pr",
              *EXTRACTOR])


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_equals_one_process(tmp_path) -> None:
    """``--devices 2 --strategy ddp``: Lightning relaunches the script per rank; rank 0 prints the gathered result."""
    import os
    import subprocess
    import sys

    write_folder(tmp_path / "gen", 13, seed=8, offset=50)  # 13 images: uneven shards, padded and de-duplicated
    write_folder(tmp_path / "real", 17, seed=9)
    root = Path(__file__).resolve().parents[1]
    common = [sys.executable, str(root / "scripts" / "evaluate.py"), "--samples", str(tmp_path / "gen"),
              "--reference", str(tmp_path / "real"), *EXTRACTOR, "--metrics", "fid,kid,pr", "--kid-subsets", "3",
              "--kid-subset-size", "10", "--batch-size", "4"]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    outputs = []
    for extra in ([], ["--devices", "2", "--accelerator", "cpu", "--strategy", "ddp"]):
        done = subprocess.run([*common, *extra], cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        lines = done.stdout.strip().splitlines()
        outputs.append(lines[lines.index("{"):])  # after Lightning's progress bar: JSON, then the table
    single, ddp = (json.loads("\n".join(lines[:-1])) for lines in outputs)
    assert ddp.pop("feature_extractor") == single.pop("feature_extractor") == "tiny-test"
    assert ddp == pytest.approx(single, rel=1e-6) and sum(line.startswith("FID") for line in outputs[1]) == 1
