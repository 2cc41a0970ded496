"""Bad input (issue 22, items 8 and 11): every bad option, path, config or file ends in one line on stderr with exit
status 2 (usage) or 1 (runtime) and no traceback; inputs that used to give a wrong result with exit status 0
(16-bit and float init images, nan guidance, ``ignore_keys`` as a string, a checkpoint of another model) are now
read correctly or refused."""

from __future__ import annotations

import os
import resource
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import main
from ldm.checkpoint import apply_state_dict
from ldm.cli.validation import require_writable_dir
from ldm.image_io import image_to_tensor, read_image
from ldm.sampling_cli import run_script
from ldm.util import instantiate_from_config
from ldm.weights_match import check_enough_loaded
from scripts.img2img import main as img2img
from scripts.sample_diffusion import main as sample_diffusion
from scripts.txt2img import main as txt2img
from tests.test_scripts import FIRST_STAGE, TEXT_ENCODER, _config, _save_model

ROOT = Path(__file__).resolve().parents[1]
TOY = str(ROOT / "tests" / "configs" / "toy_autoencoder.yaml")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png(path: Path, pixels: np.ndarray | None, width: int = 0, height: int = 0) -> Path:
    """A PNG of ``pixels`` ``(H, W, 3)`` uint16 (16 bits per channel, colour type 2), written by hand because
    Pillow cannot save 16-bit RGB; ``pixels=None`` writes only a header declaring ``width`` x ``height``."""
    if pixels is not None:
        height, width = pixels.shape[:2]
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    data = b""
    if pixels is not None:
        rows = [b"\x00" + row.astype(">u2").tobytes() for row in pixels]
        data = _png_chunk(b"IDAT", zlib.compress(b"".join(rows)))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + data + _png_chunk(b"IEND", b""))
    return path


# ----------------------------------------------------------------------------------------------------------------
# files the table uses


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> dict[str, Path]:
    """A tiny text-to-image model, a checkpoint of another model (a bare autoencoder), and bad files of each kind."""
    root = tmp_path_factory.mktemp("bad")
    config, ckpt = _save_model(root / "run", _config(TEXT_ENCODER, "caption"), seed=0)
    autoencoder = instantiate_from_config(OmegaConf.create(FIRST_STAGE))
    torch.save({"state_dict": autoencoder.state_dict()}, root / "vae.ckpt")
    (root / "empty.yaml").write_text("")
    (root / "broken.yaml").write_text("model:\n  target: [a, b\n  params: {}\n")
    (root / "list.yaml").write_text("- model\n- data\n")
    (root / "latin1.yaml").write_bytes(b"model:\n  target: caf\xe9\n")
    (root / "unset.yaml").write_text(config.read_text().replace("scale_factor: 0.18215", "scale_factor: ???"))
    (root / "prompts.txt").write_bytes(b"a caf\xe9 at night\n")
    (root / "folder").mkdir()
    (root / "a_file").write_text("x")
    Image.fromarray(np.full((32, 32, 3), 128, dtype=np.uint8)).save(root / "image.png")
    write_png(root / "huge.png", None, width=10_000, height=10_000)
    return {"config": config, "ckpt": ckpt, "root": root, "image": root / "image.png"}


def _args(files: dict[str, Path], *extra: str, script: str = "txt2img") -> list[str]:
    """The script's arguments for the tiny model, ``extra`` (flag, value pairs) replacing or adding to them."""
    options = {"--config": str(files["config"]), "--ckpt": str(files["ckpt"]), "--outdir": str(files["root"] / "out"),
               "--f": "4", "--ddim_steps": "2", "--n_samples": "1", "--n_iter": "1"}
    if script == "txt2img":
        options.update({"--H": "32", "--W": "32"})
    else:
        options["--init-img"] = str(files["image"])
    options.update(zip(extra[::2], extra[1::2]))
    return [part for pair in options.items() for part in pair]


#: (script, extra arguments (``{root}`` is the files' folder), exit status, text the line must contain)
CASES = [
    ("txt2img", ["--scale", "nan"], 2, "--scale: 'nan' is not finite"),
    ("txt2img", ["--scale", "inf"], 2, "--scale: 'inf' is not finite"),
    ("txt2img", ["--ddim_eta", "nan"], 2, "--ddim_eta: 'nan' is not finite"),
    ("txt2img", ["--ddim_eta", "-1"], 2, "--ddim_eta: -1 is out of range"),
    ("txt2img", ["--f", "0"], 2, "--f: 0 is out of range"),
    ("txt2img", ["--C", "0"], 2, "--C: 0 is out of range"),
    ("txt2img", ["--n_samples", "0"], 2, "--n_samples: 0 is out of range"),
    ("txt2img", ["--n_samples", "100000000"], 2, "--n_samples: 100000000 is out of range"),
    ("txt2img", ["--n_iter", "0"], 2, "--n_iter: 0 is out of range"),
    ("txt2img", ["--n_iter", "two"], 2, "--n_iter: 'two' is not a whole number"),
    ("txt2img", ["--ddim_steps", "0"], 2, "--ddim_steps: 0 is out of range"),
    ("txt2img", ["--n_rows", "-1"], 2, "--n_rows: -1 is out of range"),
    ("txt2img", ["--seed", "-1"], 2, "--seed: -1 is out of range"),
    ("txt2img", ["--attention_slicing", "0"], 2, "--attention_slicing: 0 is out of range"),
    ("txt2img", ["--H", "0"], 2, "--H: 0 is out of range"),
    ("txt2img", ["--H", "100000", "--W", "100000"], 2, "above --max_pixels"),
    ("txt2img", ["--precision", "13"], 2, "--precision: invalid choice: '13'"),
    ("txt2img", ["--device", "warp9"], 2, "--device 'warp9' is not a device name"),
    ("txt2img", ["--ckpt", "{root}/folder"], 2, "folder (from --ckpt) is a directory"),
    ("txt2img", ["--ckpt", "{root}/none.ckpt"], 2, "checkpoint not found"),
    ("txt2img", ["--config", "{root}/folder"], 2, "folder (from --config) is a directory"),
    ("txt2img", ["--config", "{root}/empty.yaml"], 2, "empty.yaml (from --config) is empty"),
    ("txt2img", ["--config", "{root}/broken.yaml"], 2, "broken.yaml:3:9: YAML syntax error"),
    ("txt2img", ["--config", "{root}/list.yaml"], 2, "holds a list"),
    ("txt2img", ["--config", "{root}/latin1.yaml"], 2, "latin1.yaml (from --config) is not UTF-8"),
    ("txt2img", ["--config", "{root}/unset.yaml"], 2, "'???' left unset for model.params.scale_factor"),
    ("txt2img", ["--from-file", "{root}/prompts.txt"], 2, "prompts.txt (from --from-file) is not UTF-8"),
    ("txt2img", ["--from-file", "{root}/folder"], 2, "folder (from --from-file) is a directory"),
    ("txt2img", ["--outdir", "{root}/a_file/out"], 2, "a_file is a file, not a folder"),
    ("txt2img", ["--ckpt", "{root}/vae.ckpt"], 2, "filled only 0 of the LatentDiffusion's"),
    ("img2img", ["--init-img", "{root}/huge.png"], 2, "10000x10000 = 100000000 pixels, above --max_pixels"),
    ("img2img", ["--init-img", "{root}/folder"], 2, "(from --init-img) is a directory"),
    ("img2img", ["--init-img", "{root}/huge.png", "--strength", "nan"], 2, "--strength: 'nan' is not finite"),
    ("sample_diffusion", ["-n", "0"], 2, "--n_samples: 0 is out of range"),
    ("sample_diffusion", ["--batch_size", "0"], 2, "--batch_size: 0 is out of range"),
    ("sample_diffusion", ["-e", "nan"], 2, "--eta: 'nan' is not finite"),
    ("sample_diffusion", ["-c", "0"], 2, "--custom_steps: 0 is out of range"),
    ("sample_diffusion", ["--class", "-3"], 2, "--class: -3 is out of range"),
]
SCRIPTS = {"txt2img": txt2img, "img2img": img2img, "sample_diffusion": sample_diffusion}


@pytest.mark.parametrize(("script", "extra", "status", "message"), CASES, ids=[" ".join(c[1]) for c in CASES])
def test_bad_input_is_one_line(model_files, script, extra, status, message, monkeypatch, capsys):
    extra = [part.replace("{root}", str(model_files["root"])) for part in extra]
    if script == "sample_diffusion":
        argv = ["-r", str(model_files["ckpt"]), "-l", str(model_files["root"] / "samples"), *extra]
    else:
        argv = _args(model_files, *extra, script=script)
    monkeypatch.delenv("LDM_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        run_script(lambda: SCRIPTS[script](argv))
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == status
    assert len(lines) == 1 and "Traceback" not in lines[0] and "error:" in lines[0], lines
    assert message in lines[0], lines
    assert not (model_files["root"] / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_device_cuda_without_a_gpu(model_files, monkeypatch, capsys):
    monkeypatch.delenv("LDM_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        run_script(lambda: txt2img(_args(model_files, "--device", "cuda")))
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1
    assert "--device cuda: no CUDA GPU is available here; pass --device cpu" in lines[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_output_folder_is_refused_before_loading(model_files, tmp_path, monkeypatch, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        monkeypatch.delenv("LDM_TRACEBACK", raising=False)
        with pytest.raises(SystemExit) as exit_info:
            run_script(lambda: txt2img(_args(model_files, "--outdir", str(locked / "out"))))
        lines = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(lines) == 1
        assert f"{locked} is not writable" in lines[0] and "--outdir" in lines[0]
    finally:
        locked.chmod(0o700)


def test_a_runtime_failure_is_one_line_with_status_1(monkeypatch, capsys):
    def full_disk() -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.delenv("LDM_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        run_script(full_disk)
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 1 and len(lines) == 1 and "No space left on device" in lines[0]


def test_partial_checkpoint_can_be_allowed(model_files, tmp_path):
    argv = _args(model_files, "--ckpt", str(model_files["root"] / "vae.ckpt"), "--outdir", str(tmp_path / "out"))
    txt2img([*argv, "--allow_partial_ckpt", "--seed", "1"])
    assert len(list((tmp_path / "out" / "samples").iterdir())) == 1


# ----------------------------------------------------------------------------------------------------------------
# main.py


MAIN_CASES = [
    (["--max_steps", "-5"], "--max_steps -5 (lightning.trainer.max_steps) is out of range"),
    (["--precision", "13"], "--precision 13 (lightning.trainer.precision) is not accepted"),
    (["--max_steps", "many"], "--max_steps 'many' (lightning.trainer.max_steps) is not accepted"),
    (["--num_nodes", "0"], "--num_nodes 0 (lightning.trainer.num_nodes) is out of range"),
    (["data.params.batch_size=0"], "data.params.batch_size=0 in the config is not a whole number >= 1"),
    (["data.params.batch_size=two"], "data.params.batch_size='two'"),
    (["model.base_learning_rate=-1"], "model.base_learning_rate=-1"),
    (["-s", "-1"], "--seed: -1 is out of range"),
]


@pytest.mark.parametrize(("extra", "message"), MAIN_CASES, ids=[" ".join(c[0]) for c in MAIN_CASES])
def test_main_bad_settings_are_one_line(extra, message, tmp_path, capsys):
    roots = [f"data.params.{split}.params.root={tmp_path}" for split in ("train", "validation")]
    argv = ["-b", TOY, "-l", str(tmp_path / "logs"), *roots, *extra]
    try:
        status = main.main(argv)
    except SystemExit as error:  # the parser's own errors
        status = error.code
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "Traceback" not in lines[0], lines
    assert message in lines[0], lines
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize(("text", "message"), [
    ("", "is empty"),
    ("model: {target: [a\n", "bad.yaml:2:1: YAML syntax error"),
    ("model:\n  params:\n    size: ???\n", "'???' left unset for model.params.size"),
    ("model:\n  x: ${nowhere.y}\n", "model.x cannot be resolved"),
])
def test_main_bad_config_files_are_one_line(text, message, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    roots = [f"data.params.{split}.params.root={tmp_path}" for split in ("train", "validation")]
    assert main.main(["-b", TOY, str(bad), "-l", str(tmp_path / "logs"), *roots]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_main_config_folder_is_one_line(tmp_path, capsys):
    roots = [f"data.params.{split}.params.root={tmp_path}" for split in ("train", "validation")]
    assert main.main(["-b", str(tmp_path), "-l", str(tmp_path / "logs"), *roots]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "is a directory" in lines[0], lines


def test_library_loader_refuses_another_models_checkpoint(model_files):
    """``ldm.inference.load_eval_model`` (the README's library entry) applies the same check as the scripts."""
    from ldm.inference import load_eval_model

    config = OmegaConf.load(model_files["config"])
    with pytest.raises(ValueError, match="vae.ckpt"):
        load_eval_model(config, model_files["root"] / "vae.ckpt")
    assert load_eval_model(config, model_files["root"] / "vae.ckpt", allow_partial=True) is not None
    assert load_eval_model(config, model_files["ckpt"]) is not None


# ----------------------------------------------------------------------------------------------------------------
# wrong output with exit status 0, now correct


def test_16_bit_grey_png_is_scaled_not_clipped(tmp_path):
    values = np.linspace(0, 65535, 64 * 48).astype(np.uint16).reshape(48, 64)
    Image.fromarray(values).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode == "I;16"
    rgb = np.asarray(read_image(tmp_path / "grey16.png", "--init-img"), dtype=np.float64) / 255.0
    expected = values / 65535.0
    for channel in range(3):
        np.testing.assert_allclose(rgb[..., channel], expected, atol=0.5 / 255 + 1e-9)
    assert 0.45 < rgb.mean() < 0.55  # clipping made nearly all of it white (mean ~1)


def test_16_bit_rgb_png_keeps_its_colours(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.integers(0, 65536, (16, 24, 3)).astype(np.uint16)
    rgb = np.asarray(read_image(write_png(tmp_path / "rgb16.png", values), "--init-img"), dtype=np.float64)
    np.testing.assert_allclose(rgb / 255.0, values / 65535.0, atol=1.0 / 255)


def test_float_tiff_in_unit_range_is_read_as_is(tmp_path):
    values = np.linspace(0.0, 1.0, 32 * 16, dtype=np.float32).reshape(16, 32)
    Image.fromarray(values).save(tmp_path / "float.tiff")
    assert Image.open(tmp_path / "float.tiff").mode == "F"
    pixels = image_to_tensor(read_image(tmp_path / "float.tiff", "--init-img"), 8)  # (1, 3, 16, 32) in [-1, 1]
    np.testing.assert_allclose((pixels[0, 0].numpy() + 1) / 2, values, atol=0.5 / 255 + 1e-6)


def test_float_tiff_outside_unit_range_is_refused(tmp_path):
    Image.fromarray(np.full((8, 8), 3.5, dtype=np.float32)).save(tmp_path / "hdr.tiff")
    with pytest.raises(ValueError, match=r"hdr\.tiff \(from --init-img\) is a F image with values from 3\.5 to 3\.5"):
        read_image(tmp_path / "hdr.tiff", "--init-img")


def test_100_megapixel_header_is_refused_without_decoding(tmp_path):
    huge = write_png(tmp_path / "huge.png", None, width=10_000, height=10_000)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValueError, match="above --max_pixels"):
        read_image(huge, "--init-img")
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 50  # decoding alone would take 300 MB, the float tensor 1.2 GB


def test_ignore_keys_as_a_string_is_one_prefix():
    module = torch.nn.ModuleDict({"first_stage_model": torch.nn.Linear(2, 2), "model": torch.nn.Linear(2, 2),
                                  "fc": torch.nn.Linear(2, 2)})
    state = {k: torch.ones_like(v) for k, v in module.state_dict().items()}
    report = apply_state_dict(module, state, ignore_keys="first_stage_model")
    assert sorted(report.ignored) == ["first_stage_model.bias", "first_stage_model.weight"]
    assert torch.equal(module["model"].weight, torch.ones(2, 2)) and torch.equal(module["fc"].bias, torch.ones(2))
    assert not torch.equal(module["first_stage_model"].weight, torch.ones(2, 2))


def test_a_checkpoint_without_ema_weights_still_loads():
    """The EMA copy (model_ema.*) is optional: a raw-only checkpoint fills every other tensor."""
    module = torch.nn.ModuleDict({"model": torch.nn.Linear(2, 2), "model_ema": torch.nn.Linear(2, 2)})
    state = {k: v for k, v in module.state_dict().items() if k.startswith("model.")}
    report = apply_state_dict(module, state)
    assert check_enough_loaded(module, report, state, "raw.ckpt") == 2
    with pytest.raises(ValueError, match=r"other\.ckpt filled only 0 of the ModuleDict's 2 tensors; its 1 tensors are "
                                         r"under encoder\.\* \(1\)"):
        check_enough_loaded(module, apply_state_dict(module, {"encoder.w": torch.ones(1)}),
                            {"encoder.w": torch.ones(1)}, "other.ckpt")


def test_writable_dir_accepts_a_new_folder_below_a_writable_one(tmp_path):
    assert require_writable_dir(tmp_path / "a" / "b", "--outdir") == tmp_path / "a" / "b"
