"""ldm.modules.x_transformer: attention against the formula by hand, fused = explicit evaluation, the original's
layer plans, state-dict keys, initial weights and outputs (tests/refdata/x_transformer, made by the original)."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F

import ldm.modules.x_transformer as xt
from ldm.modules.x_transformer import (
    Attention,
    AttentionLayers,
    Encoder,
    FixedPositionalEmbedding,
    TransformerWrapper,
)
from ldm.modules.x_transformer_layers import layer_plan
from tests.helpers import REFDATA

REFERENCE = torch.load(REFDATA / "x_transformer" / "reference.pt", weights_only=True)
CASES = REFERENCE["cases"]
RUN_CASES = sorted(name for name, case in CASES.items() if "out" in case)
WRAPPER_CASES = sorted(name for name, case in CASES.items() if "logits" in case)


# ---- attention by hand -------------------------------------------------------------------------------------------


def _per_head(linear: torch.nn.Linear, x: torch.Tensor, heads: int) -> torch.Tensor:
    """``x (N, dim)`` → ``(heads, N, dim_head)`` through a bias-free projection."""
    return (x @ linear.weight.T).reshape(x.shape[0], heads, -1).transpose(0, 1)


def _softmax_rows(scores: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Row-wise softmax over the visible entries; a row with none visible is uniform over all (the −max fill)."""
    weights = torch.zeros_like(scores)
    for i in range(scores.shape[0]):
        if visible[i].any():
            e = scores[i, visible[i]].exp()
            weights[i, visible[i]] = e / e.sum()
        else:
            weights[i] = 1.0 / scores.shape[1]
    return weights


def _by_hand(attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor):
    """``o_h = softmax(q_h k_hᵀ / sqrt(d)) v_h`` per head, heads concatenated, then ``to_out``; ``(N, dim)``."""
    outs = [_softmax_rows(q[h] @ k[h].T / math.sqrt(q.shape[-1]), visible) @ v[h] for h in range(q.shape[0])]
    return attn.to_out(torch.cat(outs, dim=-1))


def _both_paths(attn: Attention, *args, **kwargs) -> torch.Tensor:
    explicit, maps = attn(*args, **kwargs)
    fused, none = attn(*args, need_weights=False, **kwargs)
    assert maps.post_softmax_attn is not None and none.post_softmax_attn is None
    torch.testing.assert_close(fused, explicit, atol=1e-10, rtol=1e-10)
    return explicit


@pytest.fixture
def seeded():
    torch.manual_seed(0)


def test_causal_attention_by_hand(seeded):
    attn = Attention(4, dim_head=3, heads=2, causal=True).double()
    x = torch.randn(1, 3, 4, dtype=torch.float64)
    q, k, v = (_per_head(f, x[0], 2) for f in (attn.to_q, attn.to_k, attn.to_v))
    lower = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)  # query i sees keys 0..i
    torch.testing.assert_close(_both_paths(attn, x)[0], _by_hand(attn, q, k, v, lower))


def test_padding_mask_by_hand(seeded):
    attn = Attention(4, dim_head=3, heads=2).double()
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    out = _both_paths(attn, x, mask=mask)
    for b in range(2):
        q, k, v = (_per_head(f, x[b], 2) for f in (attn.to_q, attn.to_k, attn.to_v))
        visible = mask[b][:, None] & mask[b][None, :]  # a padded query row sees nothing: uniform over all keys
        torch.testing.assert_close(out[b], _by_hand(attn, q, k, v, visible))
    values = _per_head(attn.to_v, x[1], 2)  # (heads, N, dim_head)
    torch.testing.assert_close(out[1, 2], attn.to_out(values.mean(dim=1).reshape(-1)))


def test_cross_attention_with_context_mask_by_hand(seeded):
    attn = Attention(4, dim_head=3, heads=2).double()
    x, context = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, 4, 4, dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    context_mask = torch.tensor([[True, False, True, True], [True, True, False, False]])
    out = _both_paths(attn, x, context=context, mask=mask, context_mask=context_mask)
    for b in range(2):
        q = _per_head(attn.to_q, x[b], 2)
        k, v = _per_head(attn.to_k, context[b], 2), _per_head(attn.to_v, context[b], 2)
        torch.testing.assert_close(out[b], _by_hand(attn, q, k, v, mask[b][:, None] & context_mask[b][None]))
    # the query mask alone still masks the query rows; the context keys are then all visible
    only_rows = _both_paths(attn, x, context=context, mask=mask)
    q, k, v = _per_head(attn.to_q, x[0], 2), _per_head(attn.to_k, context[0], 2), _per_head(attn.to_v, context[0], 2)
    torch.testing.assert_close(only_rows[0], _by_hand(attn, q, k, v, mask[0][:, None].expand(3, 4)))


def test_learned_memory_key_values_by_hand(seeded):
    attn = Attention(4, dim_head=3, heads=2, num_mem_kv=2).double()
    x = torch.randn(1, 3, 4, dtype=torch.float64)
    mask = torch.tensor([[True, False, True]])
    out = _both_paths(attn, x, mask=mask)
    q = _per_head(attn.to_q, x[0], 2)
    k = torch.cat((attn.mem_k, _per_head(attn.to_k, x[0], 2)), dim=1)  # memory keys first, not projected
    v = torch.cat((attn.mem_v, _per_head(attn.to_v, x[0], 2)), dim=1)
    visible = torch.cat((torch.ones(3, 2, dtype=torch.bool), mask[0][:, None] & mask[0][None]), dim=1)
    torch.testing.assert_close(out[0], _by_hand(attn, q, k, v, visible))  # the padded row sees only the memory


def test_talking_heads_by_hand(seeded):
    attn = Attention(4, dim_head=3, heads=2, talking_heads=True).double()
    x = torch.randn(1, 3, 4, dtype=torch.float64)
    out, maps = attn(x, need_weights=False)  # the scores are needed: maps come back anyway
    q, k, v = (_per_head(f, x[0], 2) for f in (attn.to_q, attn.to_k, attn.to_v))
    scores = torch.stack([q[h] @ k[h].T for h in range(2)]) / math.sqrt(3)
    pre, post = attn.pre_softmax_proj, attn.post_softmax_proj
    mixed = [pre[0, g] * scores[0] + pre[1, g] * scores[1] for g in range(2)]
    softmaxed = [torch.softmax(s, dim=-1) for s in mixed]
    remixed = [post[0, g] * softmaxed[0] + post[1, g] * softmaxed[1] for g in range(2)]
    expected = attn.to_out(torch.cat([remixed[g] @ v[g] for g in range(2)], dim=-1))
    torch.testing.assert_close(out[0], expected)
    torch.testing.assert_close(maps.pre_softmax_attn[0], scores)  # recorded before the mixing
    torch.testing.assert_close(maps.post_softmax_attn[0], torch.stack(softmaxed))


def test_sparse_topk_by_hand(seeded):
    attn = Attention(4, dim_head=3, heads=1, sparse_topk=2).double()
    x = torch.randn(1, 4, 4, dtype=torch.float64)
    out, maps = attn(x, need_weights=False)
    q, k, v = (_per_head(f, x[0], 1) for f in (attn.to_q, attn.to_k, attn.to_v))
    scores = q[0] @ k[0].T / math.sqrt(3)
    kept = torch.zeros(4, 4, dtype=torch.bool)
    for i in range(4):
        kept[i, scores[i].argsort(descending=True)[:2]] = True
    torch.testing.assert_close(out[0], _by_hand(attn, q, k, v, kept))
    assert (maps.post_softmax_attn[0, 0] > 0).sum(-1).tolist() == [2, 2, 2, 2]


def test_attention_on_attention_gates_the_output(seeded):
    attn = Attention(4, dim_head=3, heads=2, on_attn=True).double()
    x = torch.randn(1, 2, 4, dtype=torch.float64)
    out = _both_paths(attn, x)
    q, k, v = (_per_head(f, x[0], 2) for f in (attn.to_q, attn.to_k, attn.to_v))
    heads = torch.cat([torch.softmax(q[h] @ k[h].T / math.sqrt(3), -1) @ v[h] for h in range(2)], dim=-1)
    value, gate = attn.to_out[0](heads).chunk(2, dim=-1)
    torch.testing.assert_close(out[0], value * torch.sigmoid(gate))


def test_previous_hidden_states_and_sinusoidal_positions(seeded):
    """Keys / values [mem, x]; positions p on the inputs of q (shifted by len(mem)) and k, not of v; causal."""
    attn = Attention(4, dim_head=3, heads=2, causal=True).double()
    pos = FixedPositionalEmbedding(4).double()
    x, mem = torch.randn(1, 2, 4, dtype=torch.float64), torch.randn(1, 3, 4, dtype=torch.float64)
    out = _both_paths(attn, x, mem=mem, sinusoidal_emb=pos)
    p = pos(torch.zeros(1, 5, 4))[0].double()
    sources = torch.cat((mem[0], x[0]))
    q = _per_head(attn.to_q, x[0] + p[3:], 2)
    k, v = _per_head(attn.to_k, sources + p, 2), _per_head(attn.to_v, sources, 2)
    visible = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    torch.testing.assert_close(out[0], _by_hand(attn, q, k, v, visible))


def test_previous_scores_are_added_before_the_softmax(seeded):
    attn = Attention(4, dim_head=3, heads=2).double()
    x, prev = torch.randn(1, 3, 4, dtype=torch.float64), torch.randn(1, 2, 3, 3, dtype=torch.float64)
    _, plain = attn(x)
    out, maps = attn(x, prev_attn=prev, need_weights=False)
    torch.testing.assert_close(maps.pre_softmax_attn, plain.pre_softmax_attn + prev)
    torch.testing.assert_close(maps.post_softmax_attn, torch.softmax(plain.pre_softmax_attn + prev, dim=-1))


# ---- fused kernel = explicit scores ------------------------------------------------------------------------------


@pytest.fixture
def sdpa_calls(monkeypatch) -> list:
    calls, real = [], F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


FUSABLE = {
    "plain": ({}, {}),
    "causal": ({"causal": True}, {}),
    "mask": ({}, {"mask": True}),
    "context_masks": ({}, {"context": True, "mask": True, "context_mask": True}),
    "mem_kv_mask_causal": ({"num_mem_kv": 2, "causal": True}, {"mask": True}),
    "mem_sinusoidal": ({"causal": True}, {"mem": True, "sinusoidal_emb": True}),
}


@pytest.mark.parametrize("name", sorted(FUSABLE))
def test_fused_kernel_equals_explicit_scores(name, seeded, sdpa_calls):
    options, call = FUSABLE[name]
    attn = Attention(8, dim_head=4, heads=2, **options)
    available = {"mask": torch.tensor([[True] * 4, [True, False, True, False]]), "context": torch.randn(2, 3, 8),
                 "context_mask": torch.tensor([[False] * 3, [True, False, True]]), "mem": torch.randn(2, 2, 8),
                 "sinusoidal_emb": FixedPositionalEmbedding(8)}
    kwargs = {key: available[key] for key in call}
    x = torch.randn(2, 4, 8)
    explicit, _ = attn(x, **kwargs)
    assert sdpa_calls == []
    fused, maps = attn(x, need_weights=False, **kwargs)
    assert sdpa_calls == [1] and maps == (None, None)
    torch.testing.assert_close(fused, explicit, atol=1e-6, rtol=1e-5)


def test_fused_kernel_in_bfloat16_and_explicit_in_float16(seeded, sdpa_calls):
    attn = Attention(8, dim_head=4, heads=2, causal=True)
    x, mask = torch.randn(2, 4, 8), torch.tensor([[True] * 4, [True, True, False, False]])
    reference, _ = attn(x, mask=mask)
    fused, _ = attn.bfloat16()(x.bfloat16(), mask=mask, need_weights=False)
    assert sdpa_calls == [1]
    torch.testing.assert_close(fused.float(), reference, atol=3e-2, rtol=3e-2)
    attn.half()(x.half(), mask=mask, need_weights=False)  # −65504 + s is not the fill: explicit scores
    assert sdpa_calls == [1]


def test_options_that_need_scores_skip_the_fused_kernel(seeded, sdpa_calls):
    x = torch.randn(1, 5, 8)
    for options in ({"talking_heads": True}, {"sparse_topk": 2}):
        _, maps = Attention(8, dim_head=4, heads=2, **options)(x, need_weights=False)
        assert maps.pre_softmax_attn is not None
    Attention(8, dim_head=4, heads=2, sparse_topk=5)(x, need_weights=False)  # k ≥ keys: no sparsity
    assert sdpa_calls == [1]
    layers = Encoder(dim=8, depth=2, heads=2, attn_dim_head=4)
    layers(x)
    assert sdpa_calls == [1, 1, 1]
    layers(x, return_hiddens=True)
    AttentionLayers(dim=8, depth=2, heads=2, attn_dim_head=4, residual_attn=True)(x)
    assert sdpa_calls == [1, 1, 1]


def test_errors_name_the_option():
    with pytest.raises(NotImplementedError, match="entmax"):
        Attention(8, use_entmax15=True)
    with pytest.raises(ValueError, match="causal"):
        Encoder(dim=8, depth=1, causal=True)
    with pytest.raises(TypeError, match="attn_layers"):
        TransformerWrapper(num_tokens=5, max_seq_len=4, attn_layers=torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="rel_pos_num_buckets"):
        AttentionLayers(dim=8, depth=1, rel_pos_num_buckets=64, rel_pos_max_distance=32)
    with pytest.raises(ValueError, match="'x'"):
        AttentionLayers(dim=8, depth=1, custom_layers=("a", "x"))
    with pytest.raises(ValueError, match="mems"):
        AttentionLayers(dim=8, depth=2, heads=1)(torch.randn(1, 2, 8), mems=[torch.randn(1, 1, 8)])
    with pytest.warns(UserWarning, match="use_flash"):
        AttentionLayers(dim=8, depth=1, use_flash=True)


# ---- layer plans -------------------------------------------------------------------------------------------------


def test_layer_plans_closed_forms():
    assert layer_plan(3) == ("a", "f") * 3
    assert layer_plan(2, cross_attend=True) == ("a", "c", "f") * 2
    assert layer_plan(2, cross_attend=True, only_cross=True) == ("c", "f") * 2
    assert layer_plan(2, only_cross=True) == ("a", "f") * 2  # only_cross needs cross_attend
    assert layer_plan(2, macaron=True) == ("f", "a", "f") * 2
    assert layer_plan(4, sandwich_coef=2) == ("a", "a") + ("a", "f") * 2 + ("f", "f")
    assert layer_plan(2, custom_layers=["f", "a"], sandwich_coef=1) == ["f", "a"]  # custom first, as given
    # PAR: L = 12 layers, G = 12 // 4 = 3 groups over the first 2L/3 = 8, width (8 + 8 // 3) // 3 = 3
    assert layer_plan(6, par_ratio=4) == ("a", "f", "f") * 3 + ("f",) * 3
    # L = 9, G = 3, width (6 + 2) // 3 = 2: the attention part (a, c) fills each group
    assert layer_plan(3, cross_attend=True, par_ratio=3) == ("a", "c") * 3 + ("f",) * 3
    for bad in ({"par_ratio": 1}, {"par_ratio": 13}, {"sandwich_coef": 0}, {"sandwich_coef": 5}):
        with pytest.raises(ValueError):
            layer_plan(4, cross_attend=True, **bad)
    with pytest.raises(ValueError, match="fewer than"):  # L = 12, G = 6, width (8 + 1) // 6 = 1 < 2
        layer_plan(4, cross_attend=True, par_ratio=2)


def test_macaron_halves_the_feed_forwards(seeded):
    layers = AttentionLayers(dim=8, depth=1, heads=2, attn_dim_head=4, macaron=True).eval()
    x = torch.randn(2, 3, 8)
    (n0, ff0, _), (n1, attn, _), (n2, ff1, _) = layers.layers
    h = x + 0.5 * ff0.fn(n0(x))
    h = h + attn(n1(h))[0]
    torch.testing.assert_close(layers(x), h + 0.5 * ff1.fn(n2(h)))


# ---- against the original ----------------------------------------------------------------------------------------


def _perturb(module: torch.nn.Module, seed: int) -> None:
    """The generator's deterministic perturbation (tests/refdata/x_transformer/make_refdata.py)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))


def _build(case: dict) -> torch.nn.Module:
    layers = getattr(xt, case["class"])(**case["kwargs"])
    if "wrapper_kwargs" not in case:
        return layers.eval()
    return TransformerWrapper(num_tokens=20, max_seq_len=8, attn_layers=layers, **case["wrapper_kwargs"]).eval()


@pytest.mark.parametrize("name", sorted(CASES))
def test_keys_types_and_seeded_weights_equal_the_originals(name):
    case = CASES[name]
    torch.manual_seed(case["seed"])
    model = _build(case)
    _perturb(model, case["seed"] + 100)
    ours = model.state_dict()
    assert list(ours) == list(case["state_dict"])
    for key, value in case["state_dict"].items():
        assert torch.equal(ours[key], value), key
    if "layer_types" in case:
        assert list(model.layer_types) == case["layer_types"]


def _call(case: dict) -> dict:
    return {key: case["inputs"][key] for key in case["call"]}


@pytest.mark.parametrize("name", RUN_CASES)
def test_layer_outputs_equal_the_originals(name):
    case = CASES[name]
    layers = _build(case)
    layers.load_state_dict(case["state_dict"])
    x = case["inputs"]["x"]
    with torch.no_grad():
        out, intermediates = layers(x, return_hiddens=True, **_call(case))
        fused = layers(x, **_call(case))
    torch.testing.assert_close(out, case["out"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(fused, case["out"], atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(intermediates.hiddens, case["hiddens"], atol=1e-6, rtol=1e-5)
    maps = intermediates.attn_intermediates
    torch.testing.assert_close([m.pre_softmax_attn for m in maps], case["pre_softmax_attn"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close([m.post_softmax_attn for m in maps], case["post_softmax_attn"], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", WRAPPER_CASES)
def test_wrapper_outputs_equal_the_originals(name):
    case = CASES[name]
    wrapper = _build(case)
    wrapper.load_state_dict(case["state_dict"])
    ids, call = case["inputs"]["ids"], _call(case)
    close = dict(atol=2e-6, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(wrapper(ids, **call), case["logits"], **close)
        torch.testing.assert_close(wrapper(ids, return_embeddings=True, **call), case["embeddings"], **close)
        logits, maps = wrapper(ids, return_attn=True, **call)
        torch.testing.assert_close(maps, case["attn_maps"], **close)
        if "mems_first" in case:
            _, mems = wrapper(ids, return_mems=True, **call)
            torch.testing.assert_close(mems, case["mems_first"], **close)
            unmasked = {key: value for key, value in call.items() if key != "mask"}
            out, mems = wrapper(ids, return_mems=True, mems=mems, **unmasked)
            torch.testing.assert_close(out, case["mems_out_second"], **close)
            torch.testing.assert_close(mems, case["mems_second"], **close)
            assert [m.shape[1] for m in mems] == [4, 4]  # max_mem_len


def _rows(target) -> list[tuple[str, str, str]]:
    return [(p.name, p.kind.name, "-" if p.default is inspect.Parameter.empty else repr(p.default))
            for p in inspect.signature(target).parameters.values()]


@pytest.mark.parametrize("name", sorted(REFERENCE["signatures"]))
def test_signatures_are_the_originals(name):
    """Same parameters, kinds and defaults; ours may add keyword-only options with defaults at the end."""
    owner, _, method = name.partition(".")
    target = getattr(getattr(xt, owner), method) if method else getattr(xt, owner)
    ours, original = _rows(target), [tuple(row) for row in REFERENCE["signatures"][name]]
    assert ours[: len(original)] == original
    assert all(kind == "KEYWORD_ONLY" and default != "-" for _, kind, default in ours[len(original):])


# ---- the wrapper's options ---------------------------------------------------------------------------------------


def test_wrapper_memories_tied_logits_and_projection(seeded):
    layers = AttentionLayers(dim=8, depth=2, heads=2, attn_dim_head=4, causal=True)
    wrapper = TransformerWrapper(num_tokens=11, max_seq_len=4, attn_layers=layers, emb_dim=6, tie_embedding=False)
    assert set(wrapper.state_dict()) >= {"project_emb.weight", "to_logits.weight"}
    tied = TransformerWrapper(num_tokens=11, max_seq_len=4, attn_layers=Encoder(dim=8, depth=1, heads=2),
                              tie_embedding=True, use_pos_emb=False).eval()
    assert not any(key.startswith(("to_logits", "pos_emb")) for key in tied.state_dict())
    ids = torch.randint(0, 11, (2, 6))  # longer than max_seq_len: no learned positions to run out of
    torch.testing.assert_close(tied(ids), tied(ids, return_embeddings=True) @ tied.token_emb.weight.T)
    # max_mem_len = 0 keeps every position (the original's float 0. failed to slice)
    _, mems = wrapper(ids[:, :3], return_mems=True)
    assert [m.shape for m in mems] == [(2, 3, 8)] * 2
    _, longer = wrapper(ids[:, :3], return_mems=True, mems=mems)
    assert [m.shape for m in longer] == [(2, 6, 8)] * 2


def test_padding_mask_with_memories_leaves_the_unpadded_row(seeded):
    """A mask combined with mems (the original could not): memories are never padding."""
    wrapper = TransformerWrapper(num_tokens=11, max_seq_len=4, num_memory_tokens=1,
                                 attn_layers=AttentionLayers(dim=8, depth=1, heads=2, attn_dim_head=4)).eval()
    ids, mems = torch.randint(0, 11, (2, 3)), [torch.randn(2, 2, 8)]
    mask = torch.tensor([[True, True, True], [True, True, False]])
    masked = wrapper(ids, mask=mask, mems=mems)
    torch.testing.assert_close(masked[0], wrapper(ids, mems=mems)[0])
    assert not torch.allclose(masked[1, :2], wrapper(ids, mems=mems)[1, :2])
