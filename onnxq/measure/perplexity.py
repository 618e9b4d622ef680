"""Perplexity and next-token agreement of a decoder LLM (``input_ids`` -> logits), measured on a real EP.

The data holds token ids [N, L] (``input_ids``; rows in text order). They are joined into one stream and
scored over sliding windows of ``window`` tokens moved by ``stride``: each window after the first scores only
its last ``stride`` positions, so every scored token has at least ``window - stride`` tokens of context (with
``stride == window`` the windows do not overlap and each scores all of its positions but the first). The
negative log-likelihood of each scored token is taken from the logits in float64; perplexity is
``exp(mean NLL)``. With a reference model (the float one) on the same windows: its perplexity, the top-1
agreement of the next-token predictions, and the mean KL divergence ``KL(reference || model)``.

Key/value cache inputs (``past_key_values.*``) that the data does not give start empty
(:func:`onnxq.data.with_empty_cache`): each window is a prompt with no past.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from onnxq.data import input_specs, with_empty_cache
from onnxq.data_files import read_npz
from onnxq.errors import DataError, ModelValidationError
from onnxq.feeds import batch_axes
from onnxq.model import load_model
from onnxq.runtime.session import SessionSpec, create_session


def token_rows(data: Any) -> np.ndarray:
    """The ``input_ids`` of an .npz (or a mapping), [N, L] (or [L]) int64."""
    arrays = read_npz(Path(data)) if isinstance(data, (str, os.PathLike)) else dict(data)
    if "input_ids" not in arrays:
        raise DataError(f"{data}: no 'input_ids' array (it has {sorted(arrays)})",
                        hint="give token ids [N, L] under the key input_ids")  # fmt: skip
    ids = np.asarray(arrays["input_ids"])
    if ids.dtype.kind not in "iu" or ids.ndim not in (1, 2) or ids.size < 2:
        raise DataError(f"{data}: input_ids must be integer token ids [N, L] with at least 2 tokens, got "
                        f"{ids.dtype} {list(ids.shape)}", hint="write the token windows as int64 [N, L]")  # fmt: skip
    if ids.min() < 0:
        raise DataError(f"{data}: input_ids holds negative token ids", hint="check the tokenizer's output")
    return ids.astype(np.int64)


def windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of each sliding window over ``n_tokens`` tokens."""
    out, scored_to = [], 0
    for begin in range(0, n_tokens - 1, stride):
        end = min(begin + window, n_tokens)
        first = max(scored_to, begin + 1)
        if first < end:
            out.append((begin, end, first))
        scored_to = end
        if end == n_tokens:
            break
    return out


class _Decoder:
    """A session of a decoder model with the feeds of one window of tokens."""

    def __init__(self, path: Any, spec: SessionSpec) -> None:
        model = load_model(path, external_data=False)  # the interface only: the session reads the weights
        self.specs = input_specs(model)
        self.axes = batch_axes(self.specs)
        names = [s.name for s in self.specs]
        if "input_ids" not in names:
            raise ModelValidationError(f"{path} has no input_ids input (its inputs: {names})",
                                       hint="--perplexity evaluates decoder LLMs: input_ids -> logits")  # fmt: skip
        outs = [o.name for o in model.graph.output]
        self.logits = "logits" if "logits" in outs else outs[0]
        self.vocab = _vocab(model, self.logits)
        del model
        self.runner = create_session(path, spec)
        self.path = path

    def logits_for(self, ids: np.ndarray) -> np.ndarray:
        feeds = with_empty_cache({"input_ids": ids[None, :]}, self.specs, self.axes)
        missing = [s.name for s in self.specs if s.name not in feeds]
        if missing:
            raise DataError(f"{self.path}: no values for inputs {missing}: --perplexity feeds input_ids (and empty "
                            "past key/values) only", hint="export the decoder with input_ids as its only "
                            "required input")  # fmt: skip
        (out,) = self.runner.session.run([self.logits], feeds)
        return np.asarray(out)[0]


def _vocab(model: Any, name: str) -> int | None:
    for vi in model.graph.output:
        if vi.name == name and vi.type.tensor_type.shape.dim:
            last = vi.type.tensor_type.shape.dim[-1]
            return int(last.dim_value) if last.HasField("dim_value") else None
    return None


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def perplexity(
    model_path: Any, data: Any, *, reference: Any = None, window: int | None = None, stride: int | None = None,
    ep: str = "cpu", threads: int | None = None, max_tokens: int | None = None,
) -> dict[str, Any]:
    """Perplexity of ``model_path`` over the token windows of ``data`` (see the module docstring)."""
    rows = token_rows(data)
    ids = rows.reshape(-1)
    window = window or rows.shape[-1]
    stride = stride or window
    if not 1 <= stride <= window:
        raise DataError(f"--stride {stride} must be between 1 and --window {window}", hint="use stride <= window")
    if max_tokens:
        ids = ids[:max_tokens]
    spec = SessionSpec(ep=ep, threads=threads)
    model = _Decoder(model_path, spec)
    ref = _Decoder(reference, spec) if reference is not None else None
    nll, ref_nll, agree, kl, scored = 0.0, 0.0, 0, 0.0, 0
    spans = windows(len(ids), window, stride)
    for begin, end, first in spans:
        chunk = ids[begin:end]
        targets = ids[first:end]
        if model.vocab is not None and int(targets.max()) >= model.vocab:
            raise DataError(f"token id {int(targets.max())} is outside the model's vocabulary of {model.vocab}",
                            hint="tokenize with this model's tokenizer")  # fmt: skip
        lp = _log_softmax(model.logits_for(chunk)[first - begin - 1 : end - begin - 1])
        _check_finite(lp, model_path)
        nll -= float(lp[np.arange(len(targets)), targets].sum())
        scored += len(targets)
        if ref is not None:
            rp = _log_softmax(ref.logits_for(chunk)[first - begin - 1 : end - begin - 1])
            ref_nll -= float(rp[np.arange(len(targets)), targets].sum())
            agree += int((lp.argmax(-1) == rp.argmax(-1)).sum())
            kl += float((np.exp(rp) * (rp - lp)).sum())
    out = {"model_path": str(model_path), "ep": spec.ep, "tokens": int(len(ids)), "tokens_scored": scored,
           "windows": len(spans), "window": window, "stride": stride, "nll": nll / scored,
           "perplexity": float(np.exp(nll / scored)), "ep_nodes": dict(model.runner.ep_nodes),
           "warnings": list(model.runner.warnings)}  # fmt: skip
    if ref is not None:
        out.update(reference=str(reference), reference_perplexity=float(np.exp(ref_nll / scored)),
                   top1_agreement=agree / scored, mean_kl=kl / scored,
                   perplexity_increase=out["perplexity"] - float(np.exp(ref_nll / scored)))  # fmt: skip
    return out


def _check_finite(lp: np.ndarray, where: Any) -> None:
    if not np.isfinite(lp).all():
        from onnxq.measure.evaluate import NonFiniteOutputError

        raise NonFiniteOutputError(f"{where} gives NaN/Inf logits on the token data",
                                   hint="the model is broken on this input; compare with the float model")  # fmt: skip
