"""main.py under faults: hostile, corrupt or mismatched checkpoints, SIGTERM, SIGUSR1 during start-up, a full disk,
stale temporary files. Each ends in the documented exit status with one line and no traceback, and leaves the last
complete ``last.ckpt`` loadable."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader

import main
from ldm.callbacks import AtomicCheckpointIO, ImageLogger, SignalCheckpoint
from ldm.checkpoint import load_checkpoint
from tests.toy_model import ToyAutoencoder

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "tests" / "configs"
QUIET = ["--enable_progress_bar", "false"]
NO_IMAGES = "lightning.callbacks.image_logger.params.disabled=true"
EVERY_STEP = [f"lightning.modelcheckpoint.params.{setting}" for setting in (
    "every_n_train_steps=1", "save_top_k=-1", "filename='{step:06}'", "monitor=null")]
SUBPROCESS_TIMEOUT = 180


class TouchOnLoad:
    """Unpickling this would create ``marker`` (a stand-in for a payload); a safe loader must refuse it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def make_images(folder: Path, count: int = 4, side: int = 16) -> Path:
    rng = np.random.default_rng(0)
    for index in range(count):
        target = folder / f"{index}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (side, side + 3, 3), dtype=np.uint8)).save(target)
    return folder


def data_args(images: Path) -> list[str]:
    return [f"data.params.train.params.root={images}", f"data.params.validation.params.root={images}"]


def toy_args(tmp: Path, *extra: str) -> list[str]:
    return ["-b", str(CONFIGS / "toy_autoencoder.yaml"), "-l", str(tmp / "logs"), *QUIET, NO_IMAGES,
            *data_args(make_images(tmp / "images")), *extra]


def logdir_of(logs: Path) -> Path:
    (logdir,) = logs.iterdir()
    return logdir


def error_lines(err: str) -> list[str]:
    assert "Traceback" not in err, err[-3000:]
    return [line for line in err.splitlines() if line.startswith("main.py: ")]


def run_main(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """``main.main(args)`` in this process: its exit status and its one ``main.py:`` line."""
    status = main.main(args)
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1, lines
    return status, lines[0]


def script(args: list[str], prelude: str = "") -> subprocess.Popen:
    """``python main.py args`` (after ``prelude``, run in the same interpreter first) in a subprocess."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop(main.TIMESTAMP_ENV, None)
    if prelude:
        command = ["-c", f"{prelude}\nimport runpy, sys\nsys.argv = ['main.py', *sys.argv[1:]]\n"
                         "runpy.run_path('main.py', run_name='__main__')", *args]
    else:
        command = [str(ROOT / "main.py"), *args]
    return subprocess.Popen([sys.executable, *command], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> tuple[int, str]:
    try:
        _, err = process.communicate(timeout=SUBPROCESS_TIMEOUT)
    finally:
        process.kill()
    return process.returncode, err


def wait_for(predicate, process: subprocess.Popen, timeout: float = SUBPROCESS_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f"main.py exited early ({process.returncode}):\n{process.communicate()[1][-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("timed out waiting for main.py")
        time.sleep(0.05)


# ----------------------------------------------------------------------------------------------------------------
# checkpoints that are refused, corrupt or do not fit (item 7)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-step toy run's logdir."""
    tmp = tmp_path_factory.mktemp("toy")
    assert main.main(toy_args(tmp, "-t")) == 0
    return logdir_of(tmp / "logs")


def write_bad(kind: str, path: Path, marker: Path, good: Path | None = None) -> None:
    """A checkpoint file of the given kind at ``path``."""
    if kind == "hostile":
        torch.save({"state_dict": {}, "payload": TouchOnLoad(marker)}, path)
    elif kind == "corrupt":
        data = (good or path).read_bytes() if (good or path).exists() else b"PK\x03\x04" + os.urandom(512)
        path.write_bytes(data[: len(data) // 2])
    else:  # a tensor of the right name and the wrong shape
        torch.save({"state_dict": {"encoder.conv_in.weight": torch.zeros(1, 1, 1, 1)}}, path)


@pytest.mark.parametrize("kind", ["hostile", "corrupt", "mismatched"])
@pytest.mark.parametrize("entry", ["model.params.ckpt_path", "first_stage_config.ckpt_path"])
def test_bad_model_checkpoint_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, kind: str, entry: str) -> None:
    ckpt, marker = tmp_path / "weights.ckpt", tmp_path / "payload-ran"
    write_bad(kind, ckpt, marker)
    images = make_images(tmp_path / "images")
    if entry == "model.params.ckpt_path":
        config, key = CONFIGS / "tiny_autoencoder_kl.yaml", "model.params.ckpt_path"
    else:
        config, key = CONFIGS / "tiny_ldm.yaml", "model.params.first_stage_config.params.ckpt_path"
    status, line = run_main(["-b", str(config), "-l", str(tmp_path / "logs"), *QUIET, *data_args(images),
                             f"{key}={ckpt}", "-t"], capsys)
    assert status == 2 and line.startswith(f"main.py: error: {key}: ") and "weights.ckpt" in line
    if kind == "mismatched":
        assert "encoder.conv_in.weight" in line and "(1, 1, 1, 1)" in line
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["hostile", "corrupt", "mismatched", "weights-only"])
def test_bad_resume_checkpoint_is_one_line(toy_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                           kind: str) -> None:
    logdir = tmp_path / toy_run.name
    shutil.copytree(toy_run, logdir)
    last, marker = logdir / "checkpoints" / "last.ckpt", tmp_path / "payload-ran"
    if kind in ("hostile", "corrupt"):
        write_bad(kind, last, marker, good=toy_run / "checkpoints" / "last.ckpt")
    else:
        checkpoint = torch.load(last, weights_only=True)
        if kind == "mismatched":
            checkpoint["state_dict"]["encoder.weight"] = torch.zeros(7)
        else:
            checkpoint = {"state_dict": checkpoint["state_dict"]}
        torch.save(checkpoint, last)
    status, line = run_main(["-r", str(logdir), "--trust-config", "-t", "--max_steps", "3", *QUIET], capsys)
    assert status == 2 and line.startswith("main.py: error: ") and "last.ckpt" in line
    expected = {"mismatched": "does not belong to this config's model", "weights-only": "holds weights only"}
    assert expected.get(kind, "") in line
    assert not marker.exists()


def test_hostile_resume_checkpoint_in_a_real_process(toy_run: Path, tmp_path: Path) -> None:
    """``python main.py -r`` on a logdir whose last.ckpt carries a payload: status 2, one line, nothing ran."""
    logdir = tmp_path / toy_run.name
    shutil.copytree(toy_run, logdir)
    marker = tmp_path / "payload-ran"
    write_bad("hostile", logdir / "checkpoints" / "last.ckpt", marker)
    status, err = finish(script(["-r", str(logdir), "--trust-config", "-t", "--max_steps", "3", *QUIET]))
    assert status == 2 and len(error_lines(err)) == 1 and not marker.exists()


# ----------------------------------------------------------------------------------------------------------------
# signals, full disk, stale temporary files (item 9)


def test_sigterm_writes_last_ckpt_and_exits_143(tmp_path: Path) -> None:
    process = script(toy_args(tmp_path, "-t", "--max_steps", "100000", "model.params.step_delay=0.05", *EVERY_STEP))
    wait_for(lambda: any((tmp_path / "logs").glob("*/checkpoints/step=000002.ckpt")), process)
    process.send_signal(signal.SIGTERM)
    status, err = finish(process)
    (line,) = error_lines(err)
    assert status == 128 + signal.SIGTERM
    assert line.startswith("main.py: stopped by SIGTERM at global step ") and "continue with -r" in line
    step = int(line.split("global step ")[1].split(";")[0])
    logdir = logdir_of(tmp_path / "logs")
    assert load_checkpoint(logdir / "checkpoints" / "last.ckpt")["global_step"] == step >= 2
    assert not list(logdir.rglob("*.tmp"))


def sigusr1_caught(pid: int) -> bool:
    """Whether process ``pid`` has a handler for SIGUSR1 (its ``SigCgt`` mask in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGUSR1 - 1) & 1)
    return False


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to see the signal handler")
def test_sigusr1_during_start_up_does_not_kill_the_run(tmp_path: Path) -> None:
    """The signal arrives while main.py still imports torch: the run goes on and honours the request at the first
    batch end."""
    process = script(toy_args(tmp_path, "-t", "--max_steps", "2"))
    wait_for(lambda: sigusr1_caught(process.pid), process, timeout=30)
    process.send_signal(signal.SIGUSR1)
    status, err = finish(process)
    assert status == 0, err[-3000:]
    assert "Summoned checkpoint at global step 1" in err and "Traceback" not in err
    assert load_checkpoint(logdir_of(tmp_path / "logs") / "checkpoints" / "last.ckpt")["global_step"] == 2


#: Lets ``ALLOWED`` checkpoint writes through, then fails every later one half-way with ENOSPC, as a full disk does.
FULL_DISK = """
import errno
import ldm.callbacks.checkpointing as checkpointing
ALLOWED, writes, real_save = {allowed}, [], checkpointing.torch.save
def save(obj, handle):
    writes.append(1)
    if len(writes) > ALLOWED:
        handle.write(b"PK half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")
    real_save(obj, handle)
checkpointing.torch.save = save
"""


def test_full_disk_during_training_is_one_line_and_keeps_last_ckpt(tmp_path: Path) -> None:
    """Every step writes step=N.ckpt and last.ckpt; the disk fills during step 3's writes."""
    process = script(toy_args(tmp_path, "-t", "--max_steps", "6", *EVERY_STEP, "lightning.modelcheckpoint.params."
                              "save_last=true"), prelude=FULL_DISK.format(allowed=4))
    status, err = finish(process)
    (line,) = error_lines(err)
    assert status == 1
    assert line.startswith("main.py: error: cannot write checkpoint ") and os.strerror(errno.ENOSPC) in line
    logdir = logdir_of(tmp_path / "logs")
    last = logdir / "checkpoints" / "last.ckpt"
    assert f"the last complete checkpoint is {last}" in line
    assert load_checkpoint(last)["global_step"] == 2
    assert not list(logdir.rglob("*.tmp"))


def test_stale_temporary_files_are_removed_on_resume(toy_run: Path, tmp_path: Path) -> None:
    """Temporary files of checkpoint writes killed mid-way (``.<name>.<random>.tmp``) go; other files stay."""
    logdir = tmp_path / toy_run.name
    shutil.copytree(toy_run, logdir)
    ckptdir = logdir / "checkpoints"
    stale = [ckptdir / ".last.ckpt.k3j4h5.tmp", ckptdir / "trainstep_checkpoints" / ".epoch=000000.ckpt.x9.tmp"]
    kept = [ckptdir / "notes.tmp", ckptdir / ".hidden.tmp", ckptdir / "last.ckpt"]
    for path in stale + kept[:2]:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"PK\x03\x04 partial")
    assert main.main(["-r", str(logdir), "--trust-config", "-t", "--max_steps", "3", *QUIET]) == 0
    assert not any(path.exists() for path in stale) and all(path.exists() for path in kept)
    assert load_checkpoint(ckptdir / "last.ckpt")["global_step"] == 3


def test_image_logger_on_a_full_disk_leaves_no_truncated_png(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fills_the_disk(image: Image.Image, handle, format: str | None = None) -> None:
        handle.write(b"\x89PNG\r\n\x1a\n half an image")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Image.Image, "save", fills_the_disk)
    with pytest.raises(OSError, match=os.strerror(errno.ENOSPC)):
        ImageLogger(batch_frequency=1, max_images=2).log_local(
            str(tmp_path), "train", {"inputs": torch.zeros(2, 3, 4, 4)}, global_step=1, current_epoch=0, batch_idx=0)
    assert list((tmp_path / "images" / "train").iterdir()) == []


class SignalAtFirstBatch(pl.Callback):
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.global_step == 0 and batch_idx == 0:
            os.kill(os.getpid(), signal.SIGUSR1)


def test_sigusr1_inside_an_accumulation_window_waits_for_its_end(tmp_path: Path) -> None:
    """With two batches per optimizer step, the request after the first batch is written after the second (the
    first one's gradients are not in any checkpoint)."""
    images = [{"image": np.full((4, 4, 3), value, dtype=np.float32)} for value in np.linspace(-1, 1, 8)]
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=2, accumulate_grad_batches=2, logger=False, limit_val_batches=0,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        plugins=[AtomicCheckpointIO()], callbacks=[SignalAtFirstBatch(), SignalCheckpoint(str(tmp_path))],
    )
    trainer.fit(ToyAutoencoder(monitor=None), DataLoader(images, batch_size=2))
    checkpoint = load_checkpoint(tmp_path / "last.ckpt")
    assert checkpoint["global_step"] == 1
    assert checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"] == 2
