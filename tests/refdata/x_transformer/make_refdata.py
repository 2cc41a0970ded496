"""Writes ``reference.pt`` beside this file by running the ORIGINAL ``ldm.modules.x_transformer``.

Run from a folder where our ``ldm`` package is not importable, with the original tree on the path::

    cd /tmp && PYTHONPATH=/work/ref/CompVis+stable-diffusion /work/main/.venv/bin/python \
        /work/main/tests/refdata/x_transformer/make_refdata.py

Each case: the constructor keywords, the seed it was built under, its ``state_dict`` after a seeded perturbation
(so that norms are not exactly 1 and ReZero gates not 0), its ``layer_types``, the inputs and the outputs;
and the signatures of the module's public classes (constructor, ``forward``) and functions.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import torch

import ldm.modules.x_transformer as xt

if "/work/main" in xt.__file__:
    sys.exit("this must import the original module: run it from /tmp with the original tree on PYTHONPATH")

DIM, HEADS, DIM_HEAD = 16, 2, 8
SMALL = {"dim": DIM, "heads": HEADS, "attn_dim_head": DIM_HEAD}

LAYER_CASES = {
    "encoder_prenorm": ("Encoder", {**SMALL, "depth": 2}, {"mask": True}),
    "postnorm": ("AttentionLayers", {**SMALL, "depth": 2, "pre_norm": False}, {"mask": True}),
    "rmsnorm_gated_causal": ("AttentionLayers", {**SMALL, "depth": 2, "use_rmsnorm": True, "gate_residual": True,
                                                 "causal": True}, {}),
    "cross_masks": ("AttentionLayers", {**SMALL, "depth": 2, "cross_attend": True, "causal": True},
                    {"mask": True, "context": True, "context_mask": True}),
    "only_cross_scalenorm_glu": ("AttentionLayers", {**SMALL, "depth": 2, "cross_attend": True, "only_cross": True,
                                                     "use_scalenorm": True, "ff_glu": True, "ff_mult": 2},
                                 {"context": True}),
    "attention_options": ("AttentionLayers", {**SMALL, "depth": 2, "attn_talking_heads": True, "attn_sparse_topk": 3,
                                              "attn_num_mem_kv": 2, "attn_on_attn": True, "residual_attn": True,
                                              "position_infused_attn": True, "causal": True},
                          {"mask": True}),
    "cross_residual_talking": ("AttentionLayers", {**SMALL, "depth": 2, "cross_attend": True, "residual_attn": True,
                                                   "cross_residual_attn": True, "attn_talking_heads": True},
                               {"context": True, "context_mask": True}),
    "rezero_sandwich": ("AttentionLayers", {**SMALL, "depth": 3, "use_rezero": True, "sandwich_coef": 1}, {}),
    "par_ratio": ("AttentionLayers", {**SMALL, "depth": 3, "par_ratio": 2}, {}),
    "custom_layers": ("AttentionLayers", {**SMALL, "depth": 1, "cross_attend": True,
                                          "custom_layers": ("a", "f", "f", "c", "a")},
                      {"context": True, "mask": True}),
    "mem_kv_padding": ("Encoder", {**SMALL, "depth": 1, "attn_num_mem_kv": 3}, {"mask": True}),
    "layer_mems": ("AttentionLayers", {**SMALL, "depth": 2, "causal": True}, {"mems": True}),
}
#: Built (keys, layer types, seeded weights) but not run: the original's macaron feed-forward sits in ``Scale``,
#: which unpacks the block output as a tuple, so its forward raises ``TypeError``.
BUILD_ONLY_CASES = {
    "macaron_cross": ("AttentionLayers", {**SMALL, "depth": 2, "macaron": True, "cross_attend": True}, {}),
}

WRAPPER_CASES = {
    "wrapper_default_heads": ("Encoder", {"dim": DIM, "depth": 1}, {}, {}),
    "wrapper_masked": ("Encoder", {**SMALL, "depth": 2}, {"emb_dim": 12}, {"mask": True}),
    "wrapper_memory_tokens": ("AttentionLayers", {**SMALL, "depth": 2, "causal": True},
                              {"num_memory_tokens": 2, "max_mem_len": 4}, {"mask": True}),
    "wrapper_tied_pia": ("AttentionLayers", {**SMALL, "depth": 1, "position_infused_attn": True},
                         {"tie_embedding": True}, {}),
}
NUM_TOKENS, MAX_SEQ_LEN = 20, 8


def perturb(module: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))


def inputs(seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(2, 5, DIM, generator=generator),
        "ids": torch.randint(0, NUM_TOKENS, (2, 5), generator=generator),
        "mask": torch.tensor([[True] * 5, [True, True, True, False, False]]),
        "context": torch.randn(2, 3, DIM, generator=generator),
        "context_mask": torch.tensor([[True, True, True], [True, False, False]]),
        "mems": [torch.randn(2, 2, DIM, generator=generator) for _ in range(2)],
    }


def maps(intermediates) -> dict:
    return {
        "hiddens": list(intermediates.hiddens),
        "pre_softmax_attn": [i.pre_softmax_attn for i in intermediates.attn_intermediates],
        "post_softmax_attn": [i.post_softmax_attn for i in intermediates.attn_intermediates],
    }


def layer_case(seed: int, cls: str, kwargs: dict, call: dict, run: bool = True) -> dict:
    torch.manual_seed(seed)
    layers = getattr(xt, cls)(**kwargs).eval()
    perturb(layers, seed + 100)
    data = inputs(seed + 200)
    if not run:
        return {"class": cls, "kwargs": kwargs, "seed": seed, "state_dict": layers.state_dict(),
                "layer_types": list(layers.layer_types)}
    call_kwargs = {name: data[name] for name in call}
    with torch.no_grad():
        out, intermediates = layers(data["x"], return_hiddens=True, **call_kwargs)
    return {"class": cls, "kwargs": kwargs, "call": sorted(call), "seed": seed, "state_dict": layers.state_dict(),
            "layer_types": list(layers.layer_types), "inputs": data, "out": out, **maps(intermediates)}


def wrapper_case(seed: int, cls: str, layer_kwargs: dict, wrapper_kwargs: dict, call: dict) -> dict:
    torch.manual_seed(seed)
    wrapper = xt.TransformerWrapper(num_tokens=NUM_TOKENS, max_seq_len=MAX_SEQ_LEN,
                                    attn_layers=getattr(xt, cls)(**layer_kwargs), **wrapper_kwargs).eval()
    perturb(wrapper, seed + 100)
    data = inputs(seed + 200)
    call_kwargs = {name: data[name] for name in call}
    outputs = {}
    with torch.no_grad():
        outputs["logits"] = wrapper(data["ids"], **call_kwargs)
        outputs["embeddings"] = wrapper(data["ids"], return_embeddings=True, **call_kwargs)
        outputs["attn_logits"], outputs["attn_maps"] = wrapper(data["ids"], return_attn=True, **call_kwargs)
        if wrapper_kwargs.get("max_mem_len"):
            outputs["mems_out"], mems = wrapper(data["ids"], return_mems=True, **call_kwargs)
            outputs["mems_first"] = mems
            second = {name: value for name, value in call_kwargs.items() if name != "mask"}
            outputs["mems_out_second"], outputs["mems_second"] = wrapper(data["ids"], return_mems=True, mems=mems,
                                                                         **second)
    return {"class": cls, "kwargs": layer_kwargs, "wrapper_kwargs": wrapper_kwargs, "call": sorted(call),
            "seed": seed, "state_dict": wrapper.state_dict(), "inputs": data, **outputs}


def signature_rows(target) -> list[tuple[str, str, str]]:
    """``(name, kind, repr(default))`` of each parameter; ``"-"`` for no default."""
    rows = []
    for parameter in inspect.signature(target).parameters.values():
        default = "-" if parameter.default is inspect.Parameter.empty else repr(parameter.default)
        rows.append((parameter.name, parameter.kind.name, default))
    return rows


def signatures() -> dict[str, list[tuple[str, str, str]]]:
    """Constructor and ``forward`` signatures of every public class, signatures of the public functions."""
    table = {}
    for name, value in vars(xt).items():
        if name.startswith("_") or getattr(value, "__module__", None) != xt.__name__:
            continue
        if inspect.isclass(value):
            table[name] = signature_rows(value)
            if "forward" in vars(value):
                table[f"{name}.forward"] = signature_rows(value.forward)
        elif inspect.isfunction(value):
            table[name] = signature_rows(value)
    return table


def main() -> None:
    torch.set_num_threads(2)
    cases = {}
    for seed, (name, spec) in enumerate(LAYER_CASES.items()):
        cases[name] = layer_case(seed, *spec)
    for seed, (name, spec) in enumerate(BUILD_ONLY_CASES.items(), start=30):
        cases[name] = layer_case(seed, *spec, run=False)
    for seed, (name, spec) in enumerate(WRAPPER_CASES.items(), start=50):
        cases[name] = wrapper_case(seed, *spec)
    target = Path(__file__).with_name("reference.pt")
    torch.save({"torch": str(torch.__version__), "cases": cases, "signatures": signatures()}, target)
    print(f"wrote {target} ({target.stat().st_size} bytes, {len(cases)} cases)")


if __name__ == "__main__":
    main()
