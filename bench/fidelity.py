"""Running a model on held-out data and comparing it with the float model, for the benchmark scripts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from onnxq.model import load_model


def session_outputs(path: Path, feeds: dict[str, np.ndarray], logits: str) -> tuple[np.ndarray, np.ndarray]:
    """(first graph output, logits) of ``path`` on ``feeds``, in batches of the graph's fixed batch (or 32)."""
    model = load_model(path)
    if logits not in {o.name for o in model.graph.output}:
        model.graph.output.add().name = logits
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    first = sess.get_outputs()[0].name
    name, arr = next(iter(feeds.items()))
    dim0 = sess.get_inputs()[0].shape[0]
    bs = dim0 if isinstance(dim0, int) and dim0 > 0 else 32
    outs, logs = [], []
    for start in range(0, len(arr), bs):
        o, lg = sess.run([first, logits], {name: arr[start : start + bs]})
        outs.append(o)
        logs.append(lg)
    return np.concatenate(outs), np.concatenate(logs)


def fidelity_metrics(out, logits, ref_out, ref_logits, labels) -> dict:
    pred = out.reshape(len(out), -1).argmax(1)
    ref_pred = ref_out.reshape(len(ref_out), -1).argmax(1)
    err = float(np.square(logits.astype(np.float64) - ref_logits.reshape(logits.shape)).sum())
    sig = float(np.square(ref_logits.astype(np.float64)).sum())
    return {
        "accuracy": None if labels is None else float((pred == labels).mean()),
        "agreement": float((pred == ref_pred).mean()),
        "sqnr_db": float("inf") if err == 0 else 10 * np.log10(sig / err),
    }
