"""main.py: CLI, config merge, logdir, lr scaling, resume, signals, DDP and the one-line errors."""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import runpy
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import main

ROOT = Path(__file__).resolve().parents[1]
TOY = str(ROOT / "tests" / "configs" / "toy_autoencoder.yaml")
QUIET = ["--enable_progress_bar", "false"]
#: LatentDiffusion.log_images samples with 200 DDIM steps and extra rows by default; the tests need only a few.
FEW_SAMPLING_STEPS = [f"lightning.callbacks.image_logger.params.log_images_kwargs.{key}" for key in (
    "ddim_steps=2", "inpaint=false", "plot_progressive_rows=false", "plot_diffusion_rows=false",
    "quantize_denoised=false")]


def make_images(folder: Path, count: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for index in range(count):
        target = folder / ("a" if index % 2 else "b") / f"{index}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(target)
    return folder


def toy_args(tmp_path: Path, *extra: str) -> list[str]:
    images = make_images(tmp_path / "images")
    return ["-b", TOY, "-l", str(tmp_path / "logs"), *QUIET, f"data.params.train.params.root={images}",
            f"data.params.validation.params.root={images}", *extra]


def only_logdir(tmp_path: Path) -> Path:
    (logdir,) = (tmp_path / "logs").iterdir()
    return logdir


def run_script(args: list[str], **kwargs) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop(main.TIMESTAMP_ENV, None)
    return subprocess.Popen([sys.executable, str(ROOT / "main.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# command line and configs


def test_trainer_arguments_from_the_command_line() -> None:
    opt, unknown = main.get_parser().parse_known_args(
        ["-t", "--max_steps", "3", "--devices", "0,", "--precision", "16-mixed", "--limit_val_batches", "0.5",
         "--deterministic", "--scale_lr", "False", "model.params.x=1"]
    )
    assert opt.train and not opt.scale_lr and unknown == ["model.params.x=1"]
    assert (opt.max_steps, opt.devices, opt.precision, opt.limit_val_batches) == (3, "0,", "16-mixed", 0.5)
    assert opt.deterministic is True and not hasattr(opt, "max_epochs")


def test_trainer_config_cli_overrides_and_lightning1_keys() -> None:
    lightning = OmegaConf.create({"trainer": {"max_steps": 10, "gpus": "0,", "benchmark": True}})
    config = main.trainer_config(lightning, {"max_steps": 3})
    assert dict(config) == {"max_steps": 3, "benchmark": True, "accelerator": "gpu", "devices": "0,"}
    assert dict(main.trainer_config(OmegaConf.create({"trainer": {"devices": 1}}), {"gpus": 0})) == {
        "devices": 1, "accelerator": "cpu"}
    assert dict(main.trainer_config(lightning, {"devices": 2, "accelerator": "cpu"})) == {
        "max_steps": 10, "benchmark": True, "accelerator": "cpu", "devices": 2}
    assert main.trainer_config(OmegaConf.create({"trainer": {"accelerator": "ddp"}}), {})["strategy"] == "ddp"
    with pytest.raises(main.UsageError, match="max_stepz.*did you mean 'max_steps'"):
        main.trainer_config(OmegaConf.create({"trainer": {"max_stepz": 1}}), {})


def test_configs_merge_left_to_right_then_dotlist(tmp_path: Path) -> None:
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("model:\n  target: tests.toy_model.ToyAutoencoder\n  params:\n    channels: 3\n    monitor: a\n")
    second.write_text("model:\n  params:\n    monitor: b\n")
    config = main.load_config([str(first), str(second)], ["model.params.channels=1", "model.params.step_delay=0.5"])
    assert config.model.params == {"channels": 1, "monitor": "b", "step_delay": 0.5}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.parms.monitor=x", "'model' has no key 'parms'; did you mean 'params'"),
        ("model.params.monitr=x", "'model.params' has no key 'monitr'; did you mean 'monitor'"),
        ("modle.target=x", "the config has no key 'modle'; did you mean 'model'"),
        ("--not-an-option", "unrecognized argument"),
    ],
)
def test_unknown_dotlist_key_is_named_with_close_matches(override: str, message: str) -> None:
    with pytest.raises(main.UsageError, match=message.replace("(", r"\(")):
        main.load_config([TOY], [override])


def test_new_keys_are_allowed_for_lightning_and_constructor_arguments() -> None:
    roots = [f"data.params.{split}.params.root=images" for split in ("train", "validation")]  # the toy's ??? values
    config = main.load_config([TOY], ["lightning.trainer.max_epochs=3", "model.params.step_delay=0.1", *roots])
    assert config.lightning.trainer.max_epochs == 3 and config.model.params.step_delay == 0.1


def test_learning_rate_scaling_arithmetic(tmp_path: Path) -> None:
    args = main.get_parser().parse_known_args(toy_args(tmp_path, "--accumulate_grad_batches", "3", "--devices", "2",
                                                       "--strategy", "ddp", "--num_nodes", "2"))
    opt, unknown = args
    cli = {k: v for k, v in vars(opt).items() if k in main.trainer_arg_names()}
    _, model, _, trainer = main.build(opt, cli, unknown)
    assert (trainer.accumulate_grad_batches, trainer.num_devices, trainer.num_nodes) == (3, 2, 2)
    assert model.learning_rate == pytest.approx(3 * 2 * 2 * 2 * 1.0e-3)
    opt.scale_lr = False
    _, model, _, _ = main.build(opt, cli, unknown)
    assert model.learning_rate == pytest.approx(1.0e-3)


def test_manual_optimisation_models_accumulate_themselves(tmp_path: Path) -> None:
    """The adversarial autoencoders optimise manually: Lightning would refuse accumulate_grad_batches=2, so the
    module accumulates and the learning rate is still scaled by 2 (as the original KL configs expect)."""
    images = make_images(tmp_path / "images")
    argv = ["-b", "tests/configs/tiny_autoencoder_kl.yaml", "-l", str(tmp_path / "logs"), *QUIET,
            "--accumulate_grad_batches", "2", f"data.params.train.params.root={images}",
            f"data.params.validation.params.root={images}"]
    opt, unknown = main.get_parser().parse_known_args(argv)
    cli = {k: v for k, v in vars(opt).items() if k in main.trainer_arg_names()}
    _, model, _, trainer = main.build(opt, cli, unknown)
    assert not model.automatic_optimization
    assert (trainer.accumulate_grad_batches, model.accumulate_grad_batches) == (1, 2)
    assert model.learning_rate == pytest.approx(2 * 1 * 1 * 2 * 1.0e-4)
    (setup,) = [c for c in trainer.callbacks if isinstance(c, main.SetupCallback)]
    assert setup.lightning_config.trainer.accumulate_grad_batches == 2  # saved as given, so -r restores it


def test_main_reexports_the_original_public_names() -> None:
    from ldm.callbacks import CUDACallback, ImageLogger, SetupCallback
    from ldm.data.base import Txt2ImgIterableBaseDataset
    from ldm.data.datamodule import DataModuleFromConfig, WrappedDataset, worker_init_fn

    assert (main.DataModuleFromConfig, main.WrappedDataset, main.worker_init_fn) == (
        DataModuleFromConfig, WrappedDataset, worker_init_fn)
    assert (main.SetupCallback, main.ImageLogger, main.CUDACallback) == (SetupCallback, ImageLogger, CUDACallback)
    assert main.Txt2ImgIterableBaseDataset is Txt2ImgIterableBaseDataset
    assert main.LearningRateMonitor.__module__.startswith("pytorch_lightning")
    assert all(hasattr(main, name) for name in main.__all__)


def test_get_parser_takes_argparse_kwargs_and_the_original_defaults() -> None:
    parser = main.get_parser(prog="custom", add_help=False)
    assert parser.prog == "custom" and "-h" not in parser._option_string_actions
    opt = parser.parse_args([])
    assert (opt.name, opt.resume, opt.base, opt.train, opt.no_test, opt.project, opt.debug) == (
        "", "", [], False, False, None, False)
    assert (opt.seed, opt.postfix, opt.logdir, opt.scale_lr) == (23, "", "logs", True)
    opt = parser.parse_args(["-n", "-r", "-t", "--no-test", "no", "-d", "yes", "--scale_lr", "0", "-b", "a", "b"])
    assert (opt.name, opt.resume, opt.train, opt.no_test, opt.debug, opt.scale_lr) == (True, True, True, False,
                                                                                        True, False)
    assert opt.base == ["a", "b"]


def test_nondefault_trainer_args() -> None:
    opt = main.get_parser().parse_args(["--max_steps", "-1", "--max_epochs", "3", "--gpus", "0,", "-t"])
    assert main.nondefault_trainer_args(opt) == ["gpus", "max_epochs"]
    assert main.nondefault_trainer_args(main.get_parser().parse_args([])) == []


def test_lightning1_resume_from_checkpoint_key(tmp_path: Path) -> None:
    """Lightning 1's Trainer(resume_from_checkpoint=...) (in the original's saved lightning.yaml of resumed runs)
    is not a Lightning 2 argument: it becomes fit's ckpt_path instead of an error."""
    lightning = OmegaConf.create({"trainer": {"resume_from_checkpoint": "x.ckpt", "max_steps": 2}})
    assert dict(main.trainer_config(lightning, {})) == {"max_steps": 2}
    from ldm.cli.config import legacy_resume

    assert legacy_resume(lightning) == "x.ckpt"
    opt = main.get_parser().parse_args(["-n", "new", "--resume_from_checkpoint", str(tmp_path / "missing.ckpt")])
    with pytest.raises(main.UsageError, match="missing.ckpt: no such file"):
        main.new_run(opt, "now")
    (tmp_path / "x.ckpt").write_bytes(b"")
    opt.resume_from_checkpoint = str(tmp_path / "x.ckpt")
    paths = main.new_run(opt, "now")
    assert (paths.nowname, paths.resume_ckpt) == ("now_new", str(tmp_path / "x.ckpt"))


def test_logdir_name_from_name_or_first_base_config() -> None:
    parser = main.get_parser()
    assert main.new_run(parser.parse_args(["-b", "c/first.yaml", "c/second.yaml", "-f", "_p"]), "T").nowname == (
        "T_first_p")
    assert main.new_run(parser.parse_args(["-b", "c/first.yaml", "-n", "run"]), "T").logdir == os.path.join(
        "logs", "T_run")
    assert main.new_run(parser.parse_args(["-l", "out"]), "T").logdir == os.path.join("out", "T")


def test_ignore_keys_callback_gets_the_resumed_checkpoint_or_is_dropped() -> None:
    opt = main.get_parser().parse_args([])
    lightning = OmegaConf.create({"callbacks": {"ignore_keys_callback": {"target": "x.Y", "params": {"a": 1}}}})
    fresh = main.RunPaths(nowname="n", logdir="logs/n", resume_ckpt=None, saved_configs=[])
    modelckpt = OmegaConf.create({"target": "pytorch_lightning.callbacks.ModelCheckpoint"})
    config = OmegaConf.create()
    assert "ignore_keys_callback" not in main.callbacks_config(opt, "now", fresh, config, lightning, modelckpt)
    resumed = main.RunPaths(nowname="n", logdir="logs/n", resume_ckpt="logs/n/checkpoints/last.ckpt",
                            saved_configs=[])
    callbacks = main.callbacks_config(opt, "now", resumed, config, lightning, modelckpt)
    assert dict(callbacks.ignore_keys_callback.params) == {"a": 1, "ckpt_path": "logs/n/checkpoints/last.ckpt"}
    assert list(callbacks)[:4] == ["setup_callback", "image_logger", "learning_rate_logger", "cuda_callback"]
    assert dict(callbacks.image_logger.params) == {"batch_frequency": 750, "max_images": 4, "clamp": True}


# ----------------------------------------------------------------------------------------------------------------
# runs


def test_training_run_writes_the_original_logdir_layout(tmp_path: Path) -> None:
    assert main.main(toy_args(tmp_path, "-t", "-n", "toy")) == 0
    logdir = only_logdir(tmp_path)
    assert logdir.name.endswith("_toy")
    stamp = logdir.name.removesuffix("_toy")
    assert sorted(p.name for p in (logdir / "configs").iterdir()) == [f"{stamp}-lightning.yaml",
                                                                      f"{stamp}-project.yaml"]
    assert {"epoch=000000.ckpt", "last.ckpt"} <= {p.name for p in (logdir / "checkpoints").iterdir()}
    assert (logdir / "images" / "train" / "inputs_gs-000001_e-000000_b-000000.png").is_file()
    assert (logdir / "images" / "val").is_dir() and (logdir / "tensorboard").is_dir()
    saved = OmegaConf.load(logdir / "configs" / f"{stamp}-lightning.yaml")
    assert saved.lightning.trainer.max_steps == 2 and saved.lightning.trainer.accumulate_grad_batches == 1
    checkpoint = torch.load(logdir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2
    assert checkpoint["hyper_parameters"]["extra"] == {"note": "stored in the hyper-parameters as a config node",
                                                       "sizes": [1, 2]}


def test_debug_run_moves_to_debug_runs_and_logger_is_configurable(tmp_path: Path) -> None:
    args = toy_args(tmp_path, "-t", "-d", "-n", "dbg", "lightning.logger.target=pytorch_lightning.loggers.CSVLogger")
    assert main.main(args) == 0
    (run,) = (tmp_path / "logs" / "debug_runs").iterdir()
    assert run.name.endswith("_dbg") and (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "lightning_logs" / "version_0" / "metrics.csv").is_file()


def test_default_logger_is_csv_without_tensorboard(monkeypatch: pytest.MonkeyPatch) -> None:
    paths = main.RunPaths(nowname="x", logdir="logs/x", resume_ckpt=None, saved_configs=[])
    assert main.logger_config(OmegaConf.create(), paths).target.endswith("TensorBoardLogger")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert main.logger_config(OmegaConf.create(), paths) == {
        "target": "pytorch_lightning.loggers.CSVLogger", "params": {"name": "csv", "save_dir": "logs/x"}}


def test_resume_continues_and_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    one_batch = ["data.params.batch_size=4", "--deterministic"]
    assert main.main(toy_args(tmp_path, "-t", "-n", "split", *one_batch)) == 0
    split = only_logdir(tmp_path)
    time.sleep(1.1)  # saved configs are named by the second: let the resumed run write its own pair
    assert main.main(["-r", str(split), "--trust-config", "-t", "--max_steps", "4", *QUIET]) == 0
    assert only_logdir(tmp_path) == split and len(list((split / "configs").iterdir())) == 4
    assert main.main(toy_args(tmp_path / "b", "-t", "-n", "whole", "--max_steps", "4", *one_batch)) == 0
    resumed = torch.load(split / "checkpoints" / "last.ckpt", weights_only=True)
    whole = torch.load(only_logdir(tmp_path / "b") / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == whole["global_step"] == 4
    for key, value in whole["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value)
    assert resumed["optimizer_states"][0]["state"][0]["step"] == 4
    assert resumed["lr_schedulers"][0]["last_epoch"] == whole["lr_schedulers"][0]["last_epoch"] == 4


def test_resuming_a_moved_logdir_keeps_writing_last_ckpt(tmp_path: Path) -> None:
    """No ``last-v1.ckpt``: checkpoint files are overwritten, as with the Lightning the original used."""
    assert main.main(toy_args(tmp_path, "-t", "-n", "run")) == 0
    moved = tmp_path / "moved" / only_logdir(tmp_path).name
    shutil.copytree(only_logdir(tmp_path), moved)
    assert main.main(["-r", str(moved), "--trust-config", "-t", "--max_steps", "3", *QUIET]) == 0
    assert sorted(p.name for p in (moved / "checkpoints").glob("last*")) == ["last.ckpt"]
    assert torch.load(moved / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3


def test_resume_from_a_checkpoint_inside_a_logdir(tmp_path: Path) -> None:
    logdir = tmp_path / "logs" / "2026-01-01T00-00-00_x"
    (logdir / "configs").mkdir(parents=True)
    (logdir / "configs" / "b-project.yaml").write_text("model: {}")
    (logdir / "configs" / "a-lightning.yaml").write_text("lightning: {}")
    ckpt = logdir / "checkpoints" / "trainstep_checkpoints" / "x.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"")
    paths = main.resolve_resume(str(ckpt))
    assert (paths.logdir, paths.nowname, paths.resume_ckpt) == (str(logdir), logdir.name, str(ckpt))
    assert [Path(p).name for p in paths.saved_configs] == ["a-lightning.yaml", "b-project.yaml"]


# ----------------------------------------------------------------------------------------------------------------
# errors


def run_main_error(args: list[str], capsys: pytest.CaptureFixture) -> str:
    assert main.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    return err[0]


def test_bad_inputs_give_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert "config file 'missing.yaml' not found" in run_main_error(["-b", "missing.yaml", "-t"], capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    args = ["-b", TOY, "-t", "-l", str(tmp_path / "logs"), *QUIET,
            f"data.params.train.params.root={empty}", f"data.params.validation.params.root={empty}"]
    assert f"image folder '{empty}' contains no readable images" in run_main_error(args, capsys)
    assert "model.parms.x" in run_main_error(["-b", TOY, "model.parms.x=1"], capsys)
    assert "not a logdir" in run_main_error(["-r", str(tmp_path)], capsys)
    released = tmp_path / "sd-v1-4.ckpt"
    torch.save({"state_dict": {}}, released)
    assert f"model.params.ckpt_path={released}" in run_main_error(["-r", str(released)], capsys)
    assert "cannot be used together" in run_main_error(["-r", str(tmp_path), "-n", "x"], capsys)


def test_script_error_has_no_traceback(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """``python main.py ...`` (the ``__main__`` block, run in this interpreter) exits 2 with one line."""
    monkeypatch.setattr(sys, "argv", ["main.py", "-b", "does/not/exist.yaml", "-t"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "main.py"), run_name="__main__")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "main.py: error: config file 'does/not/exist.yaml' not found."]


# ----------------------------------------------------------------------------------------------------------------
# signals and DDP (subprocesses)


def wait_for(predicate, timeout: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f"main.py exited early:\n{process.communicate()[1][-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for main.py")
        time.sleep(0.1)


def test_sigusr1_then_kill9_leave_loadable_checkpoints(tmp_path: Path) -> None:
    """SIGUSR1 writes last.ckpt mid-run; SIGKILL while checkpoints are written every step corrupts none."""
    process = run_script(toy_args(tmp_path, "-t", "--max_steps", "100000", "model.params.step_delay=0.02",
                                  "lightning.modelcheckpoint.params.every_n_train_steps=1",
                                  "lightning.modelcheckpoint.params.save_top_k=-1",
                                  "lightning.modelcheckpoint.params.filename='{step:06}'",
                                  "lightning.modelcheckpoint.params.monitor=null",
                                  "lightning.modelcheckpoint.params.save_last=false",
                                  "lightning.callbacks.image_logger.params.disabled=true"))
    try:
        logs = tmp_path / "logs"
        wait_for(lambda: any(logs.glob("*/checkpoints/step=000003.ckpt")), 120, process)
        ckptdir = next(logs.glob("*/checkpoints"))
        assert not (ckptdir / "last.ckpt").exists()
        process.send_signal(signal.SIGUSR1)
        wait_for(lambda: (ckptdir / "last.ckpt").exists(), 60, process)
        wait_for(lambda: len(list(ckptdir.glob("*.ckpt"))) > 12, 60, process)
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
    finally:
        process.kill()
    last = torch.load(ckptdir / "last.ckpt", weights_only=True)
    assert last["global_step"] >= 3 and last["optimizer_states"]
    for path in ckptdir.glob("*.ckpt"):
        assert "state_dict" in torch.load(path, weights_only=True), path


def test_ddp_with_two_cpu_processes(tmp_path: Path) -> None:
    process = run_script(toy_args(tmp_path, "-t", "--no-test", "--accelerator", "cpu", "--devices", "2",
                                  "--strategy", "ddp", "lightning.callbacks.image_logger.params.disabled=true"))
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    logdir = only_logdir(tmp_path)
    assert "2 (num_devices)" in err + out
    assert torch.load(logdir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2


def test_two_stage_training_autoencoder_then_latent_diffusion(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Stage 1 trains a tiny AutoencoderKL; stage 2 a LatentDiffusion whose first stage loads its last.ckpt, with
    the fast_training callback's thresholds opened so that every UNet conv runs as GEMMs (training, image logging,
    checkpoints)."""
    images = make_images(tmp_path / "images", count=4)
    data = [f"data.params.train.params.root={images}", f"data.params.validation.params.root={images}"]
    logs = tmp_path / "logs"
    assert main.main(["-b", "tests/configs/tiny_autoencoder_kl.yaml", "-t", "-n", "stage1", "-l", str(logs), *QUIET,
                      *data]) == 0
    (stage1_dir,) = logs.glob("*_stage1")
    stage1_ckpt = stage1_dir / "checkpoints" / "last.ckpt"
    gemm_convs = ["lightning.callbacks.fast_training.params.min_weight_bytes=0",
                  "lightning.callbacks.fast_training.params.max_positions=100000"]
    with caplog.at_level(logging.INFO):
        assert main.main(["-b", "tests/configs/tiny_ldm.yaml", "-t", "-n", "stage2", "-l", str(logs), *QUIET, *data,
                          f"model.params.first_stage_config.params.ckpt_path={stage1_ckpt}", *FEW_SAMPLING_STEPS,
                          *gemm_convs]) == 0
    assert re.search(r"FastTrainingConvs: \d+ convs of the diffusion model", caplog.text)
    (stage2_dir,) = logs.glob("*_stage2")
    for run in (stage1_dir, stage2_dir):
        assert len(list((run / "configs").glob("*-project.yaml"))) == 1
        assert any((run / "images" / "train").glob("inputs_gs-000001_*.png"))
    autoencoder = torch.load(stage1_ckpt, weights_only=True)
    diffusion = torch.load(stage2_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert autoencoder["global_step"] == diffusion["global_step"] == 2
    first_stage = {k.removeprefix("first_stage_model."): v for k, v in diffusion["state_dict"].items()
                   if k.startswith("first_stage_model.")}
    assert first_stage and all(torch.equal(v, autoencoder["state_dict"][k]) for k, v in first_stage.items())
    assert any(k.startswith("model.diffusion_model.") for k in diffusion["state_dict"])
