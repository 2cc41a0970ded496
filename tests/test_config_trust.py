"""Configs that arrive with a model (issue 22, item 5): their targets may only name classes of this package,
``torch.nn``/``torch.optim`` and the few the original configs use, unless the user passes ``--trust-config``;
configs the user names stay trusted (:mod:`ldm.config_trust`).

Every refusal is checked to leave no marker file behind: each hostile target, had it run, would have made one.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

import main
from ldm.checkpoint import load_checkpoint
from ldm.config_trust import (
    UntrustedConfigError,
    check_config,
    screen_class,
    screen_target,
    trusting_configs,
    untrusted_configs,
)
from ldm.inference import load_model_from_config
from ldm.models.diffusion.classifier import diffusion_model_config
from ldm.sampling_cli import load_script_model, run_script, sampling_parser
from ldm.util import get_obj_from_str, instantiate_from_config
from scripts.sample_diffusion import main as sample_diffusion
from scripts.txt2img import main as txt2img

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(
    p.relative_to(ROOT).as_posix() for folder in ("configs", "models") for p in ROOT.glob(f"{folder}/**/*.yaml")
)
RECORD = "tests.test_config_trust.record_call"
#: Weights the shipped configs point at (absent here): nulled for the meta-device build.
FILE_KEYS = ("ckpt_path", "clip_stats_path")
NEEDS_FILE = {"reset_ema": False}  # ``reset_ema: true`` refuses to build without a ckpt_path


class RecordedCall(ValueError):
    """Raised by :func:`record_call` once it has left its marker, so a test sees the target ran and stops there."""


def record_call(path: str, **_: object) -> None:
    """A harmless function target: leaves a marker file at ``path`` and stops the caller."""
    Path(path).write_text("ran")
    raise RecordedCall(path)


def hostile_models(marker: Path) -> dict[str, dict]:
    """``model`` sections that would each create ``marker`` (or run arbitrary code) if their targets were built."""
    touch = ["touch", str(marker)]
    recorded = {"target": RECORD, "params": {"path": str(marker)}}
    unet = {"target": "torch.nn.Identity"}
    return {
        "subprocess.run": {"target": "subprocess.run", "params": {"args": touch}},
        "os.system": {"target": "os.system", "params": {"command": f"touch {marker}"}},
        "builtins.exec": {"target": "builtins.exec", "params": {"source": f"open({str(marker)!r}, 'w')"}},
        "instantiate_from_config": {"target": "ldm.util.instantiate_from_config", "params": {"config": recorded}},
        "get_obj_from_str": {"target": "ldm.util.get_obj_from_str", "params": {"string": RECORD}},
        "re-exported class": {"target": "ldm.cli.run.Trainer", "params": {}},
        "nested in params": {"target": "ldm.models.diffusion.ddpm.LatentDiffusion", "params": {
            "unet_config": unet, "first_stage_config": {"target": "subprocess.run", "params": {"args": touch}},
            "cond_stage_config": "__is_unconditional__"}},
        "oc.create interpolation": {"target": "ldm.models.diffusion.ddpm.LatentDiffusion", "params": {
            "unet_config": unet, "first_stage_config": "${oc.create:'{target: os.system, params: {command: x}}'}",
            "cond_stage_config": "__is_unconditional__"}},
        "interpolated target": {"target": "${oc.env:HOME}.x"},
        "test function": recorded,
    }


def run_folder(tmp_path: Path, model: dict, name: str = "run") -> Path:
    """A released-model-like folder: ``config.yaml`` with ``model`` and a (never read) ``model.ckpt``."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": model}))
    torch.save({"state_dict": {}}, folder / "model.ckpt")
    return folder


def one_error_line(argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> str:
    """Run sample_diffusion as its ``__main__`` does; assert exit status 2 and one stderr line, return it."""
    monkeypatch.setattr(sys, "argv", ["sample_diffusion.py", *argv])
    monkeypatch.delenv("LDM_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as stop:
        run_script(sample_diffusion)
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(lines) == 1 and "Traceback" not in lines[0]
    return lines[0]


# ---- sample_diffusion -r: the config beside the checkpoint ----------------------------------------------------


@pytest.mark.parametrize("case", list(hostile_models(Path("m"))))
def test_sample_diffusion_refuses_what_a_run_folder_config_may_not_name(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    marker = tmp_path / "marker"
    folder = run_folder(tmp_path, hostile_models(marker)[case])
    line = one_error_line(["-r", str(folder), "-n", "1"], monkeypatch, capsys)
    assert line.startswith("sample_diffusion.py: error: refused ")
    assert str(folder / "config.yaml") in line and "--trust-config" in line
    assert not marker.exists()


def test_refusal_names_target_key_and_reason(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    nested = OmegaConf.create({"model": hostile_models(marker)["nested in params"]})
    with pytest.raises(UntrustedConfigError) as refused:
        check_config(nested, "run/config.yaml")
    assert "'subprocess.run' (model.params.first_stage_config.target in run/config.yaml)" in str(refused.value)
    assert "'subprocess' is outside the allowed packages" in str(refused.value)
    with pytest.raises(UntrustedConfigError, match="it is a function, not a class"):
        check_config({"model": hostile_models(marker)["instantiate_from_config"]}, "c.yaml")
    with pytest.raises(UntrustedConfigError, match="defined in 'pytorch_lightning.trainer.trainer'"):
        check_config({"model": hostile_models(marker)["re-exported class"]}, "c.yaml")
    with pytest.raises(UntrustedConfigError, match="the resolver 'oc.create' can build config nodes"):
        check_config({"model": hostile_models(marker)["oc.create interpolation"]}, "c.yaml")


def test_trust_config_builds_what_the_folder_names(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    folder = run_folder(tmp_path, hostile_models(marker)["test function"])
    with pytest.raises(UntrustedConfigError):
        sample_diffusion(["-r", str(folder), "-n", "1"])
    assert not marker.exists()
    with pytest.raises(RecordedCall):
        sample_diffusion(["-r", str(folder), "-n", "1", "--trust-config"])
    assert marker.read_text() == "ran"


def test_a_target_given_on_the_command_line_is_trusted(tmp_path: Path) -> None:
    """``key=value`` overrides are the user's own words: a target named there is built."""
    marker = tmp_path / "marker"
    folder = run_folder(tmp_path, {"target": "torch.nn.Identity"})
    with pytest.raises(RecordedCall):
        sample_diffusion(["-r", str(folder), "-n", "1", f"model.target={RECORD}", f"model.params.path={marker}"])
    assert marker.exists()


def test_main_py_run_configs_are_found_not_named(tmp_path: Path) -> None:
    """The project config main.py wrote into a log directory and reads back with -r is screened too."""
    marker = tmp_path / "marker"
    folder = tmp_path / "logs" / "run"
    (folder / "configs").mkdir(parents=True)
    (folder / "checkpoints").mkdir()
    torch.save({"state_dict": {}}, folder / "checkpoints" / "last.ckpt")
    (folder / "configs" / "x-project.yaml").write_text(yaml.safe_dump({"model": hostile_models(marker)["os.system"]}))
    with pytest.raises(UntrustedConfigError, match=r"'os.system' \(model.target in .*x-project.yaml\)"):
        sample_diffusion(["-r", str(folder), "-n", "1"])
    assert not marker.exists()


# ---- main.py -r: a run's saved configs --------------------------------------------------------------------------


def resumable_run(tmp_path: Path, model: dict) -> Path:
    logdir = tmp_path / "logs" / "2026-01-01T00-00-00_x"
    (logdir / "configs").mkdir(parents=True)
    (logdir / "checkpoints").mkdir()
    (logdir / "checkpoints" / "last.ckpt").write_bytes(b"never read")
    project = {"model": model, "data": {"target": "main.DataModuleFromConfig", "params": {"batch_size": 1}}}
    (logdir / "configs" / "x-project.yaml").write_text(yaml.safe_dump(project))
    (logdir / "configs" / "x-lightning.yaml").write_text(yaml.safe_dump({"lightning": {"trainer": {}}}))
    return logdir


def test_main_resume_refuses_a_saved_config_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "marker"
    logdir = resumable_run(tmp_path, hostile_models(marker)["subprocess.run"])
    assert main.main(["-r", str(logdir)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("main.py: error: refused config target 'subprocess.run' ")
    assert "x-project.yaml" in lines[0] and "--trust-config" in lines[0]
    assert not marker.exists()


def test_main_resume_builds_with_trust_config_and_trusts_base_configs(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    marker = tmp_path / "marker"
    logdir = resumable_run(tmp_path, hostile_models(marker)["test function"])
    assert main.main(["-r", str(logdir)]) == 2 and not marker.exists()
    assert main.main(["-r", str(logdir), "--trust-config"]) == 2  # record_call stops the build once it ran
    assert marker.exists()
    marker.unlink()
    benign = resumable_run(tmp_path / "b", {"target": "torch.nn.Identity"})
    base = tmp_path / "mine.yaml"
    base.write_text(yaml.safe_dump({"model": {"target": RECORD, "params": {"path": str(marker)}}}))
    assert main.main(["-r", str(benign), "-b", str(base)]) == 2  # -b is the user's own config: trusted
    assert marker.exists()
    capsys.readouterr()


# ---- configs the user names stay trusted; one found by default is screened --------------------------------------


def test_the_users_own_config_is_trusted(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    config = tmp_path / "mine.yaml"
    config.write_text(yaml.safe_dump({"model": hostile_models(marker)["test function"]}))
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}}, ckpt)
    with pytest.raises(RecordedCall):
        txt2img(["--config", str(config), "--ckpt", str(ckpt), "--outdir", str(tmp_path / "out")])
    assert marker.exists()


def test_a_default_config_found_in_the_current_folder_is_screened(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    config = tmp_path / "default.yaml"
    config.write_text(yaml.safe_dump({"model": hostile_models(marker)["test function"]}))
    parser = sampling_parser("", outdir=str(tmp_path / "out"), n_iter=1, n_samples=1, scale=1.0, seed=0,
                             config=str(config), ckpt=None, H=None, W=None)
    with pytest.raises(UntrustedConfigError, match="default.yaml"):
        load_script_model(parser.parse_args([]))
    assert not marker.exists()
    with pytest.raises(RecordedCall):
        load_script_model(parser.parse_args(["--trust-config"]))
    assert marker.exists()


# ---- configs stored inside a checkpoint, and other configs found beside one -----------------------------------


def test_a_config_stored_in_a_checkpoint_is_never_built(tmp_path: Path) -> None:
    """The loader hands back a checkpoint's hyper-parameters as inert data and no loader builds them; code that
    would must do so inside ``untrusted_configs``, which refuses what they name."""
    marker = tmp_path / "marker"
    ckpt = tmp_path / "model.ckpt"
    linear = torch.nn.Linear(2, 2)
    torch.save({"state_dict": linear.state_dict(), "hyper_parameters": {"model": hostile_models(marker)["os.system"],
                "first": hostile_models(marker)["test function"]}}, ckpt)
    config = OmegaConf.create({"model": {"target": "torch.nn.Linear", "params": {"in_features": 2, "out_features": 2}}})
    model, _ = load_model_from_config(config, ckpt, torch.device("cpu"))
    assert torch.equal(model.weight, linear.weight) and not marker.exists()
    stored = load_checkpoint(ckpt)["hyper_parameters"]
    for node in stored.values():
        with untrusted_configs(ckpt), pytest.raises(UntrustedConfigError, match="model.ckpt"):
            instantiate_from_config(node)
    assert not marker.exists()


def test_classifier_diffusion_path_log_dir_is_screened(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    (tmp_path / "configs").mkdir()
    saved = tmp_path / "configs" / "1-project.yaml"
    saved.write_text(yaml.safe_dump({"model": hostile_models(marker)["nested in params"]}))
    with pytest.raises(UntrustedConfigError, match="1-project.yaml"):
        diffusion_model_config(tmp_path)
    with trusting_configs():
        assert diffusion_model_config(tmp_path).target.endswith("LatentDiffusion")
    assert diffusion_model_config(saved).target.endswith("LatentDiffusion")  # a file named outright: trusted
    assert not marker.exists()


# ---- the rule itself --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [
    "ldm.models.diffusion.ddpm.LatentDiffusion", "ldm.modules.losses.LPIPSWithDiscriminator", "torch.nn.Identity",
    "torch.optim.AdamW", "torch.optim.lr_scheduler.LambdaLR", "ldm.lr_scheduler.LambdaLinearScheduler",
    "main.DataModuleFromConfig", "main.ImageLogger", "taming.models.vqgan.VQModel", "torchvision.transforms.Resize",
    "pytorch_lightning.callbacks.ModelCheckpoint",
])
def test_allowed_targets_resolve_in_untrusted_mode(target: str) -> None:
    with untrusted_configs("c.yaml"):
        assert isinstance(get_obj_from_str(target), type)


@pytest.mark.parametrize(("target", "why"), [
    ("torch.nn.functional.relu", "a function"),
    ("torch.nn.modules.module.OrderedDict", "outside the allowed packages"),
    ("ldm.util.OmegaConf", "outside the allowed packages"),
    ("ldm.util.ConfigError", "no module, dataset"),
    ("ldm.taming_aliases.logger", "a Logger, not a class"),
    ("torch.load", "'torch' is outside the allowed packages"),
    ("pytorch_lightning.loggers.WandbLogger", "outside the allowed packages"),
    ("ldmx.evil.Thing", "outside the allowed packages"),
    ("taming.modules.losses.vqperceptual.hinge_d_loss", "a function"),
])
def test_refused_targets(target: str, why: str) -> None:
    with untrusted_configs("c.yaml"), pytest.raises(UntrustedConfigError, match=why):
        get_obj_from_str(target)


def test_nothing_outside_the_allowed_packages_is_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "this", raising=False)
    with pytest.raises(UntrustedConfigError):
        check_config({"model": {"target": "this.s"}}, "c.yaml")
    assert "this" not in sys.modules


def test_a_main_module_other_than_ours_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    foreign = types.ModuleType("main")
    foreign.__file__ = "/elsewhere/main.py"
    monkeypatch.setitem(sys.modules, "main", foreign)
    with pytest.raises(UntrustedConfigError, match="'main' would be '/elsewhere/main.py'"):
        screen_target("main.DataModuleFromConfig", "c.yaml")


def test_message_is_one_printable_line_for_any_target_and_file() -> None:
    with pytest.raises(UntrustedConfigError) as refused:
        screen_target("evil\nmodule.X" + "y" * 500, "dir\nx;rm -rf ~/config.yaml")
    text = str(refused.value)
    assert "\n" not in text and len(text) < 600 and "--trust-config" in text


def test_trusting_lifts_screening_and_untrusted_blocks_nest() -> None:
    with untrusted_configs("a.yaml"):
        with trusting_configs():
            assert get_obj_from_str("os.path.join") is not None
        with trusting_configs(False), pytest.raises(UntrustedConfigError, match="a.yaml"):
            get_obj_from_str("os.path.join")
    assert get_obj_from_str("os.path.join") is not None  # trusted again outside


def test_screen_class_accepts_user_targets_only_inside_their_block() -> None:
    with untrusted_configs("a.yaml", user_targets=[RECORD]):
        screen_class(RECORD, record_call, "a.yaml")
    with untrusted_configs("a.yaml"), pytest.raises(UntrustedConfigError):
        screen_class(RECORD, record_call, "a.yaml")


# ---- every shipped config passes as an untrusted one (the allow-list is complete) -------------------------------


def _without_files(node: object) -> object:
    if isinstance(node, dict):
        return {k: None if k in FILE_KEYS else NEEDS_FILE.get(k, _without_files(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_without_files(v) for v in node]
    return node


@pytest.mark.parametrize("relative", SHIPPED)
def test_every_shipped_config_passes_and_builds_untrusted(relative: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every target of every shipped config (model, data, lightning sections) passes the screen, and the model
    builds (full size, on the meta device) with every nested target screened as it is instantiated."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = OmegaConf.load(ROOT / relative)
    check_config(config, relative)
    model = OmegaConf.create(_without_files(OmegaConf.to_container(config.model, resolve=False)))
    with untrusted_configs(relative), torch.device("meta"):
        built = instantiate_from_config(model)
    assert isinstance(built, torch.nn.Module)
