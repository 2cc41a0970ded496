"""ldm.modules.encoders.modules (+ x_transformer): class embedder, offline CLIP text encoder, from-scratch encoder."""

from __future__ import annotations

import logging
import math
import time

import pytest
import torch
from transformers import CLIPTextConfig

import ldm.modules.encoders.hub as hub
import ldm.modules.encoders.modules as encoders
from ldm.modules.encoders.clip_tokenizer import offline_clip_tokenizer
from ldm.modules.encoders.modules import BERTEmbedder, BERTTokenizer, ClassEmbedder, FrozenCLIPEmbedder
from ldm.modules.x_transformer import Attention, Encoder, TransformerWrapper
from ldm.util import ConfigError
from tests.helpers import load_manifest, state_dict_manifest

PROMPT = "a photograph of an astronaut riding a horse"
PROMPT_IDS = [49406, 320, 8853, 539, 550, 18376, 6765, 320, 4558, 49407]
POSITION_IDS = "transformer.text_model.embeddings.position_ids"


def _no_probe() -> bool:
    raise AssertionError("offline mode is set: the hub must not be probed")


def _not_cached(*args, **kwargs) -> None:
    """``load_pretrained`` as on a machine whose Hugging Face cache is empty."""


@pytest.fixture
def tiny_clip(monkeypatch: pytest.MonkeyPatch):
    """A factory of FrozenCLIPEmbedders whose offline fallback tower is tiny (same code path, same key layout)."""
    tiny = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
    )
    monkeypatch.setattr(encoders, "vit_l14_text_config", lambda: tiny)
    monkeypatch.setattr(encoders, "load_pretrained", _not_cached)
    return FrozenCLIPEmbedder


# ---------------------------------------------------------------- ClassEmbedder


def test_class_embedder_rows_and_shape():
    torch.manual_seed(0)
    embedder = ClassEmbedder(embed_dim=8, n_classes=5, key="label")
    labels = torch.tensor([4, 0, 4])
    c = embedder({"label": labels})
    assert c.shape == (3, 1, 8)
    torch.testing.assert_close(c[:, 0], embedder.embedding.weight[labels], rtol=0, atol=0)
    assert list(embedder.state_dict()) == ["embedding.weight"]
    torch.testing.assert_close(embedder({"other": labels}, key="other"), c)
    with pytest.raises(KeyError, match="'label'"):
        embedder({"class": labels})


def test_class_embedder_matches_original_reference(refdata):
    ref = torch.load(refdata / "vectors" / "ldm_tiny.pt", weights_only=True)["latent_diffusion"]
    embedder = ClassEmbedder(embed_dim=64, n_classes=11, key="class_label")
    embedder.load_state_dict({"embedding.weight": ref["state_dict"]["cond_stage_model.embedding.weight"]})
    for labels, expected in (("class_label", "c"), ("uc_class_label", "uc")):
        out = embedder({"class_label": ref["inputs"][labels]})
        torch.testing.assert_close(out, ref["outputs"][expected], rtol=0, atol=0)


# ---------------------------------------------------------------- CLIP tokenizer and FrozenCLIPEmbedder


def test_offline_clip_tokenizer_ids():
    tokenizer = offline_clip_tokenizer()
    assert len(tokenizer) == 49408 and tokenizer.pad_token_id == 49407 and tokenizer.model_max_length == 77
    ids = tokenizer(PROMPT, truncation=True, max_length=77, padding="max_length")["input_ids"]
    assert ids == PROMPT_IDS + [49407] * (77 - len(PROMPT_IDS))
    long_ids = tokenizer(" ".join(["horse"] * 100), truncation=True, max_length=77)["input_ids"]
    assert len(long_ids) == 77 and long_ids[0] == 49406 and long_ids[-1] == 49407


def test_clip_embedder_meta_matches_sd_v1_manifest():
    with torch.device("meta"):
        embedder = FrozenCLIPEmbedder()
    expected = {k.removeprefix("cond_stage_model."): v for k, v in load_manifest("sd-v1.cond_stage.tsv").items()}
    assert len(expected) == 196
    assert state_dict_manifest(embedder) == expected
    assert sum(p.numel() for p in embedder.parameters()) == 123_060_480
    assert embedder([PROMPT, "a cat"]).shape == (2, 77, 768)  # shapes only: meta tensors hold no data


def test_clip_embedder_meta_build_warns_only_about_the_tokenizer(caplog, monkeypatch):
    monkeypatch.setattr(encoders, "load_pretrained", _not_cached)
    with caplog.at_level(logging.WARNING, logger="ldm.modules.encoders.modules"), torch.device("meta"):
        FrozenCLIPEmbedder()
    assert "RANDOM weights" not in caplog.text  # a meta build has no weights to warn about
    assert "shipped with ldm" in caplog.text


def test_clip_embedder_is_frozen_and_deterministic(tiny_clip):
    embedder = tiny_clip()
    assert not embedder.transformer.training and not any(p.requires_grad for p in embedder.parameters())
    first = embedder.encode([PROMPT, ""])
    second = embedder([PROMPT, ""])
    assert first.shape == (2, 77, 32) and first.dtype == torch.float32 and first.grad_fn is None
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    # causal attention: position 0 sees only <|startoftext|>, identical for both captions
    torch.testing.assert_close(first[0, 0], first[1, 0], rtol=0, atol=0)
    assert not torch.allclose(first[0, 1], first[1, 1])


@pytest.mark.slow
def test_full_size_clip_embedder_on_cpu_offline(monkeypatch):
    monkeypatch.setattr(hub, "hub_reachable", _no_probe)
    start = time.perf_counter()
    embedder = FrozenCLIPEmbedder()
    assert time.perf_counter() - start < 20
    first, second = embedder([PROMPT, ""]), embedder.encode([PROMPT, ""])
    assert first.shape == (2, 77, 768)
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_clip_embedder_warns_about_random_weights(tiny_clip, caplog):
    with caplog.at_level(logging.WARNING, logger="ldm.modules.encoders.modules"):
        tiny_clip()
    assert "RANDOM weights" in caplog.text


def test_clip_embedder_unknown_version_offline_names_fix(monkeypatch):
    monkeypatch.setattr(hub, "hub_reachable", _no_probe)
    with pytest.raises(OSError, match="openai/clip-vit-large-patch14"):
        FrozenCLIPEmbedder(version="someone/unknown-clip")


def test_sd_layout_state_dict_loads_strictly_with_legacy_position_ids(tiny_clip):
    torch.manual_seed(0)
    source = tiny_clip()
    torch.manual_seed(1)
    target = tiny_clip()
    state = source.state_dict()
    assert all(k.startswith("transformer.text_model.") for k in state) and POSITION_IDS not in state
    state[POSITION_IDS] = torch.arange(77)[None]
    assert not torch.equal(source([PROMPT]), target([PROMPT]))
    target.load_state_dict(state, strict=True)
    torch.testing.assert_close(target([PROMPT, "a cat"]), source([PROMPT, "a cat"]), rtol=0, atol=0)


def test_nested_checkpoint_keys_load_strictly(tiny_clip):
    """As inside LatentDiffusion: ``cond_stage_model.transformer.text_model.*`` (+ position_ids) load strictly."""
    parent = torch.nn.Module()
    parent.cond_stage_model = tiny_clip()
    state = {f"cond_stage_model.{k}": v for k, v in parent.cond_stage_model.state_dict().items()}
    state[f"cond_stage_model.{POSITION_IDS}"] = torch.arange(77)[None]
    parent.load_state_dict(state, strict=True)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        parent.load_state_dict({**state, "cond_stage_model.transformer.text_model.extra": torch.zeros(1)})


def test_text_encoder_keys_without_text_model_load_strictly(tiny_clip):
    """Checkpoints converted from diffusers under transformers 5 name the text encoder ``transformer.embeddings.*``
    (no ``text_model.``): they load strictly into the same weights."""
    torch.manual_seed(0)
    source = tiny_clip()
    torch.manual_seed(1)
    parent = torch.nn.Module()
    parent.cond_stage_model = tiny_clip()
    flat = {f"cond_stage_model.{k.replace('transformer.text_model.', 'transformer.')}": v
            for k, v in source.state_dict().items()}
    assert "cond_stage_model.transformer.embeddings.token_embedding.weight" in flat
    parent.load_state_dict(flat, strict=True)
    torch.testing.assert_close(parent.cond_stage_model([PROMPT]), source([PROMPT]), rtol=0, atol=0)


def test_hub_probe_is_one_quick_connection(monkeypatch):
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # loopback discard port: refused at once
    start = time.perf_counter()
    assert hub.hub_reachable() is False
    assert time.perf_counter() - start < 2
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert hub.hub_reachable() is True


def test_hub_download_skipped_when_unreachable(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "hub_reachable", lambda: False)
    assert hub.load_pretrained(encoders.CLIPTokenizer, "someone/unknown-clip", accept=hub.has_vocabulary) is None


# ---------------------------------------------------------------- x_transformer and BERTEmbedder


def test_attention_matches_plain_softmax():
    torch.manual_seed(0)
    attn = Attention(dim=32, heads=8, dim_head=64)
    x = torch.randn(2, 5, 32)
    q, k, v = (f(x).view(2, 5, 8, 64).transpose(1, 2) for f in (attn.to_q, attn.to_k, attn.to_v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(64), dim=-1)
    expected = attn.to_out((weights @ v).transpose(1, 2).reshape(2, 5, 512))
    torch.testing.assert_close(attn(x)[0], expected, rtol=1e-5, atol=1e-6)  # (out, maps) as in the original


def test_transformer_wrapper_is_prenorm_residual():
    torch.manual_seed(0)
    wrapper = TransformerWrapper(num_tokens=20, max_seq_len=6, attn_layers=Encoder(dim=16, depth=1)).eval()
    ids = torch.tensor([[1, 5, 19, 0], [3, 3, 3, 3]])
    (norm_a, attn, _), (norm_f, ff, _) = wrapper.attn_layers.layers  # [norm, block, residual] as in the original
    h = wrapper.token_emb.weight[ids] + wrapper.pos_emb.emb.weight[:4]
    h = h + attn(norm_a(h))[0]
    h = h + ff(norm_f(h))
    embeddings = wrapper(ids, return_embeddings=True)
    torch.testing.assert_close(embeddings, wrapper.norm(h))
    torch.testing.assert_close(wrapper(ids), wrapper.to_logits(embeddings))
    with pytest.raises(ValueError, match="max_seq_len"):
        wrapper(torch.zeros(1, 7, dtype=torch.long))


def test_bert_embedder_original_keys_and_shapes():
    with torch.device("meta"):
        embedder = BERTEmbedder(n_embed=32, n_layer=2, use_tokenizer=False)
    manifest = state_dict_manifest(embedder)
    attn = {"0.weight": (32,), "0.bias": (32,), "1.to_q.weight": (512, 32), "1.to_k.weight": (512, 32),
            "1.to_v.weight": (512, 32), "1.to_out.weight": (32, 512), "1.to_out.bias": (32,)}  # fmt: skip
    ff = {"0.weight": (32,), "0.bias": (32,), "1.net.0.0.weight": (128, 32), "1.net.0.0.bias": (128,),
          "1.net.2.weight": (32, 128), "1.net.2.bias": (32,)}  # fmt: skip
    expected = {
        "transformer.token_emb.weight": (30522, 32),
        "transformer.pos_emb.emb.weight": (77, 32),
        "transformer.norm.weight": (32,),
        "transformer.norm.bias": (32,),
        "transformer.to_logits.weight": (30522, 32),
        "transformer.to_logits.bias": (30522,),
    }
    for i in range(4):
        for key, shape in (attn if i % 2 == 0 else ff).items():
            expected[f"transformer.attn_layers.layers.{i}.{key}"] = shape
    assert {k: shape for k, (shape, _) in manifest.items()} == expected


def test_bert_embedder_offline_tokenizer_forward_and_gradients():
    torch.manual_seed(0)
    embedder = BERTEmbedder(n_embed=32, n_layer=2, vocab_size=49408, tokenizer="clip")
    tokens = embedder.tknz_fn([PROMPT, "a horse"])
    assert tokens.shape == (2, 77) and tokens[0, :10].tolist() == PROMPT_IDS
    z = embedder.encode([PROMPT, "a horse"])
    assert z.shape == (2, 77, 32)
    torch.testing.assert_close(z, embedder.transformer(tokens, return_embeddings=True))
    z.pow(2).mean().backward()
    grads = {name: p.grad for name, p in embedder.named_parameters()}
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if not n.startswith("transformer.to_l"))
    used = torch.zeros(49408, dtype=torch.bool)
    used[tokens.unique()] = True
    row_grads = embedder.transformer.token_emb.weight.grad.abs().sum(-1)
    assert row_grads[used].gt(0).all() and row_grads[~used].eq(0).all()


def test_bert_tokenizer_vq_interface_and_errors():
    tokenizer = BERTTokenizer(tokenizer="clip", max_length=12)
    tokens = tokenizer("a horse")
    assert tokens.tolist() == [[49406, 320, 4558] + [49407] * 9]
    assert tokenizer.encode("a horse")[2][2].tolist() == tokens.tolist()


def test_bert_tokenizer_without_cached_vocab_uses_the_shipped_one(monkeypatch):
    monkeypatch.setattr(encoders, "load_pretrained", _not_cached)
    assert BERTTokenizer(max_length=6)("a horse").tolist() == [[101, 1037, 3586, 102, 0, 0]]
    with pytest.raises(ConfigError, match="vocab_size: 49408"):
        BERTEmbedder(n_embed=8, n_layer=1, tokenizer="clip")
    with pytest.raises(ConfigError, match="'bert' .* 'clip'"):
        BERTTokenizer(tokenizer="wordpiece")


def test_spatial_rescaler_resizes_then_maps_channels() -> None:
    """The original's SpatialRescaler (configs of the super-resolution / semantic-synthesis LDMs)."""
    torch.manual_seed(0)
    rescaler = encoders.SpatialRescaler(n_stages=2, method="bilinear", multiplier=0.5, in_channels=3,
                                        out_channels=5)
    assert list(rescaler.state_dict()) == ["channel_mapper.weight"]  # bias=False by default
    x = torch.randn(2, 3, 16, 16)
    half = torch.nn.functional.interpolate(x, scale_factor=0.5, mode="bilinear")
    expected = rescaler.channel_mapper(torch.nn.functional.interpolate(half, scale_factor=0.5, mode="bilinear"))
    torch.testing.assert_close(rescaler(x), expected)
    torch.testing.assert_close(rescaler.encode(x), expected)
    assert torch.equal(encoders.SpatialRescaler(n_stages=0)(x), x)
    with pytest.raises(ValueError, match="method"):
        encoders.SpatialRescaler(method="lanczos")


def test_device_is_the_originals_assignable_attribute(tiny_clip):
    """Forks set ``cond_stage_model.device = "cpu"`` (the original's default is "cuda"): the attribute takes the value
    and keeps it, and the token ids still go where the weights are, whatever it says."""
    embedder = tiny_clip()
    assert embedder.device == "cuda"
    before = embedder([PROMPT])
    embedder.device = "cpu"
    assert embedder.device == "cpu"
    torch.testing.assert_close(embedder([PROMPT]), before, rtol=0, atol=0)
    bert = BERTEmbedder(n_embed=16, n_layer=1, vocab_size=49408, max_seq_len=8, tokenizer="clip", device="cpu")
    bert.device = "mps"
    assert bert.device == "mps" and bert(["a cat"]).shape == (1, 8, 16)
    tokenizer = BERTTokenizer(vq_interface=False, max_length=8, tokenizer="clip")
    tokenizer.device = "cpu"
    assert tokenizer(["a cat"]).device == torch.device("cpu")


def test_clip_text_model_takes_every_forward_argument(tiny_clip):
    """ControlNet-style CLIP skip: ``transformer(input_ids=..., output_hidden_states=True)`` gives every layer;
    the last hidden state equals the embedder's output."""
    embedder = tiny_clip()
    ids = embedder.tokenizer([PROMPT], truncation=True, max_length=77, padding="max_length", return_tensors="pt")
    out = embedder.transformer(input_ids=ids["input_ids"], output_hidden_states=True)
    layers = embedder.transformer.text_model.config.num_hidden_layers
    assert len(out.hidden_states) == layers + 1
    torch.testing.assert_close(out.last_hidden_state, embedder([PROMPT]), rtol=0, atol=0)


def test_sd2_layer_options_pick_the_output(tiny_clip):
    """SD 2.x ``layer``: last hidden state, the pooled output as one token, or ``hidden_states[layer_idx]``."""
    torch.manual_seed(0)
    last = tiny_clip()
    state = last.state_dict()
    pooled, hidden = tiny_clip(layer="pooled"), tiny_clip(layer="hidden", layer_idx=-2)
    pooled.load_state_dict(state)
    hidden.load_state_dict(state)
    ids = last.tokenizer([PROMPT], truncation=True, max_length=77, padding="max_length", return_tensors="pt")
    out = last.transformer(input_ids=ids["input_ids"], output_hidden_states=True)
    torch.testing.assert_close(pooled([PROMPT]), out.pooler_output[:, None, :], rtol=0, atol=0)
    torch.testing.assert_close(hidden([PROMPT]), out.hidden_states[-2], rtol=0, atol=0)
    assert not torch.equal(hidden([PROMPT]), last([PROMPT]))
    assert any(p.requires_grad for p in tiny_clip(freeze=False).parameters())
    with pytest.raises(ConfigError, match="layer_idx"):
        tiny_clip(layer="hidden")
    with pytest.raises(ConfigError, match="'penultimate' is unknown"):
        tiny_clip(layer="penultimate")
