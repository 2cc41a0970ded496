"""ldm.modules.losses.lpips: original keys, the shipped lin weights, the LPIPS math and the offline backbone rules."""

import logging
import urllib.error

import pytest
import torch
import torch.nn.functional as F

from ldm.modules.losses.lpips import (
    LPIPS,
    VGG16_URL,
    PerceptualWeightsError,
    VGG16Features,
    lin_weights_path,
)
from tests.helpers import load_manifest, state_dict_manifest


@pytest.fixture(autouse=True)
def no_download(monkeypatch):
    """Every torch hub / torchvision weight download goes through ``torch.hub.download_url_to_file``: make it fail
    so that no test here can reach the network (tests that expect a download patch it themselves)."""
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("tried to download weights"))


@pytest.fixture(scope="module")
def lpips_random() -> LPIPS:
    torch.manual_seed(0)
    return LPIPS(backbone="random")


def _images(seed: int, n: int = 2, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_keys_shapes_match_the_original_manifest(monkeypatch):
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("tried to download"))
    with torch.device("meta"):
        module = LPIPS()  # default "pretrained": on meta nothing is loaded, so no network is needed
    expected = {k.removeprefix("loss.perceptual_loss."): v for k, v in load_manifest("ldm-kl-f8.tsv").items()
                if k.startswith("loss.perceptual_loss.")}
    assert state_dict_manifest(module) == expected
    assert not any(k.startswith("lins.") for k in module.state_dict())


def test_lin_weights_are_the_lpips_package_file(lpips_random):
    shipped = torch.load(lin_weights_path(), map_location="cpu", weights_only=True)
    assert sorted(shipped) == [f"lin{i}.model.1.weight" for i in range(5)]
    for key, value in shipped.items():
        assert torch.equal(lpips_random.state_dict()[key], value)


def test_frozen_and_always_in_eval_mode(lpips_random):
    assert all(not p.requires_grad for p in lpips_random.parameters())
    lpips_random.train()
    assert not lpips_random.training and not any(m.training for m in lpips_random.modules())
    x, y = _images(1), _images(2).requires_grad_()
    first = lpips_random(x, y)
    assert torch.equal(first, lpips_random(x, y))  # dropout of the lin layers never fires
    first.sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0


def test_distance_is_zero_symmetric_and_positive(lpips_random):
    x, y = _images(3), _images(4)
    with torch.no_grad():
        d_xy, d_yx, d_xx = lpips_random(x, y), lpips_random(y, x), lpips_random(x, x)
    assert d_xy.shape == (2, 1, 1, 1)
    assert torch.all(d_xx == 0)
    torch.testing.assert_close(d_xy, d_yx, rtol=1e-5, atol=1e-7)
    assert torch.all(d_xy > 0)


def test_distance_equals_the_taming_formula_computed_per_image_and_layer(lpips_random):
    x, y = _images(5), _images(6)
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    lins = torch.load(lin_weights_path(), map_location="cpu", weights_only=True)

    def features(img: torch.Tensor) -> list[torch.Tensor]:
        h, outs = (img - shift) / scale, []
        for k in range(1, 6):
            h = getattr(lpips_random.net, f"slice{k}")(h)
            outs.append(h)
        return outs

    with torch.no_grad():
        expected = 0
        for i, (a, b) in enumerate(zip(features(x), features(y))):
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            expected = expected + F.conv2d((a - b) ** 2, lins[f"lin{i}.model.1.weight"]).mean([2, 3], keepdim=True)
        torch.testing.assert_close(lpips_random(x, y), expected, rtol=1e-5, atol=1e-7)


def test_vgg_slices_cut_features_at_the_original_indices():
    net = VGG16Features()
    convs = {k: [n for n, m in getattr(net, f"slice{k}").named_children() if isinstance(m, torch.nn.Conv2d)]
             for k in range(1, 6)}
    assert convs == {1: ["0", "2"], 2: ["5", "7"], 3: ["10", "12", "14"], 4: ["17", "19", "21"],
                     5: ["24", "26", "28"]}
    outs = net(torch.zeros(1, 3, 32, 32))
    assert [tuple(o.shape[1:]) for o in outs] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 2, 2)]


def test_random_backbone_is_announced_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="ldm.modules.losses.lpips"):
        LPIPS(backbone="random")
    assert any(r.levelno == logging.WARNING and "RANDOM" in r.getMessage() for r in caplog.records)


def test_missing_backbone_file_raises_an_explanatory_error(tmp_path):
    with pytest.raises(PerceptualWeightsError, match="no VGG16 weights file") as err:
        LPIPS(backbone=tmp_path / "missing.pth")
    for hint in ("perceptual_backbone", "random", "perceptual_weight: 0", "vgg16-397923af.pth"):
        assert hint in str(err.value)


def test_unavailable_download_raises_an_explanatory_error(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(PerceptualWeightsError, match="could not get them") as err:
        LPIPS()
    assert "perceptual_backbone" in str(err.value) and "perceptual_weight: 0" in str(err.value)


def _torchvision_style_state_dict(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = VGG16Features()
    return {f"features.{k.split('.', 1)[1]}": v for k, v in net.state_dict().items()}


def test_pretrained_reads_the_torch_hub_cache(tmp_path, monkeypatch):
    state = _torchvision_style_state_dict(1)
    (tmp_path / "checkpoints").mkdir()
    torch.save(state, tmp_path / "checkpoints" / VGG16_URL.rsplit("/", 1)[1])
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def no_download(*args, **kwargs):
        raise AssertionError("the cached file must be used; nothing may be downloaded")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    module = LPIPS()
    assert torch.equal(module.net.state_dict()["slice5.28.weight"], state["features.28.weight"])
    assert torch.equal(module.net.state_dict()["slice1.0.bias"], state["features.0.bias"])


def test_backbone_from_a_local_file(tmp_path):
    state = _torchvision_style_state_dict(2)
    state["classifier.6.bias"] = torch.zeros(1000)  # a full torchvision dict: the classifier is ignored
    torch.save(state, tmp_path / "vgg16.pth")
    module = LPIPS(backbone=tmp_path / "vgg16.pth")
    assert torch.equal(module.net.state_dict()["slice3.12.weight"], state["features.12.weight"])

    torch.save({"features.0.weight": state["features.0.weight"]}, tmp_path / "partial.pth")
    with pytest.raises(PerceptualWeightsError, match="not a VGG16 state dict"):
        LPIPS(backbone=tmp_path / "partial.pth")


@pytest.mark.slow
def test_matches_the_lpips_package(lpips_random):
    lpips = pytest.importorskip("lpips")
    reference = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)
    missing, unexpected = reference.load_state_dict(lpips_random.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("lins.") for k in missing)  # the package's duplicate aliases
    x, y = _images(7, size=64), _images(8, size=64)
    with torch.no_grad():
        torch.testing.assert_close(lpips_random(x, y), reference(x, y), rtol=1e-5, atol=1e-7)


def test_use_dropout_is_the_original_first_parameter(lpips_random):
    """taming: ``LPIPS(use_dropout=True)``, ``NetLinLayer(chn_in, chn_out=1, use_dropout=False)``."""
    from ldm.modules.losses.lpips import NetLinLayer

    assert list(NetLinLayer(64).state_dict()) == ["model.0.weight"]
    assert list(NetLinLayer(64, use_dropout=True).state_dict()) == ["model.1.weight"]
    torch.manual_seed(0)
    plain = LPIPS(False, backbone="random")
    assert "lin0.model.0.weight" in plain.state_dict() and "lin0.model.1.weight" not in plain.state_dict()
    plain.net.load_state_dict(lpips_random.net.state_dict())
    x, y = _images(1), _images(2)
    torch.testing.assert_close(plain(x, y), lpips_random(x, y))  # same lin weights, dropout off in eval anyway


def test_from_pretrained_and_load_from_pretrained_give_the_vgg_lpips_lins(lpips_random):
    torch.manual_seed(0)
    model = LPIPS.from_pretrained("vgg_lpips", backbone="random")
    shipped = torch.load(lin_weights_path(), map_location="cpu", weights_only=True)
    with torch.no_grad():
        model.lin0.model[1].weight.zero_()
    model.load_from_pretrained()
    torch.testing.assert_close(model.lin0.model[1].weight, shipped["lin0.model.1.weight"])
    with pytest.raises(ValueError, match="unknown"):
        model.load_from_pretrained("alex_lpips")
