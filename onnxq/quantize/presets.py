"""Recipe presets: what a kind of model needs on top of the defaults, chosen from the graph or by name.

``transformer`` adds the SmoothQuant pass (activation outliers of the LayerNormalization outputs migrate into
the weights; a group keeps ``s = 1`` where no migration lowers the error, so it never makes a model worse on
its calibration data). With ``preset`` auto (the default), static quantization of a model with attention
blocks takes it: on paraphrase-MiniLM-L3 it lifts the embedding SQNR from 20.3 to 23.7 dB at the same
agreement (bench/results/transformers.md). The rest of what transformers need is in every recipe: the
attention mask's sentinels and padded positions are kept out of the ranges, Softmax has its placement rule.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import onnx

from onnxq.errors import ConfigError

PRESETS: dict[str, tuple[str, ...]] = {"transformer": ("smoothquant",)}  # preset -> the passes it adds
CHOICES = ("auto", "none", *PRESETS)
_BETWEEN = ("Add", "Mul", "Div", "Sub", "Where", "Cast")  # scale, mask or cast between Q.K^T and Softmax


def attention_blocks(model: onnx.ModelProto) -> int:
    """Softmax nodes whose input comes, through at most a few elementwise ops, from a MatMul of two activations
    (Q.K^T): one per attention block."""
    graph = model.graph
    consts = {t.name for t in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    producer = {o: n for n in graph.node for o in n.output}
    count = 0
    for softmax in (n for n in graph.node if n.op_type == "Softmax"):
        frontier = [producer.get(softmax.input[0])]
        for _ in range(5):  # MatMul -> (Div|Mul) -> Add(mask) -> ... -> Softmax: a few steps back
            if any(n is not None and n.op_type == "MatMul" and not set(n.input) & consts for n in frontier):
                count += 1
                break
            frontier = [producer.get(i) for n in frontier if n is not None and n.op_type in _BETWEEN
                        for i in n.input if i not in consts]  # fmt: skip
    return count


def apply_preset(model: onnx.ModelProto, recipe: Any, *, has_data: bool = True) -> tuple[Any, str]:
    """``recipe`` with its preset's passes added, and a line saying what was chosen and why ("" for none). Auto
    chooses nothing without calibration data (dynamic, or static from a range cache alone): SmoothQuant reads
    data."""
    name = recipe.preset
    weight_only = getattr(recipe, "weight_only", None) is not None
    if name == "none" or (name == "auto" and (recipe.dynamic or weight_only or not has_data)):
        return recipe, ""
    if name == "auto":
        blocks = attention_blocks(model)
        if not blocks:
            return recipe, ""
        name, why = "transformer", f"auto: {blocks} attention block(s)"
    else:
        if weight_only:
            raise ConfigError(f"--preset {name} is for static W8A8; --weight-only leaves activations float",
                              hint="drop --preset")  # fmt: skip
        if recipe.dynamic:
            raise ConfigError(f"--preset {name} contradicts --dynamic: its passes need calibration data",
                              hint="drop --preset, or quantize statically with --calib DATA")  # fmt: skip
        why = "asked for"
    added = tuple(p for p in PRESETS[name] if p not in recipe.passes)
    chosen = dataclasses.replace(recipe, passes=(*recipe.passes, *added)) if added else recipe
    return chosen, f"{name} ({why}): " + (", ".join(added) + " added" if added else "its passes were chosen already")
