"""Running a model on held-out data and comparing it with the float model, for the benchmark scripts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


@dataclass
class Reference:
    """A case's float model on its held-out data, and the calibration file the benchmarks quantize with."""

    calib_path: Path
    feeds: dict[str, np.ndarray]
    labels: np.ndarray | None
    out: np.ndarray
    logits: np.ndarray
    logits_name: str

    @classmethod
    def of(cls, case: Any, work: Path) -> Reference:
        """Write ``case.calib`` to ``work`` and run the float ``case.model`` on ``case.evaluation``."""
        calib_path = work / f"{case.name}_calib.npz"
        np.savez(calib_path, **case.calib)
        feeds = {k: v for k, v in case.evaluation.items() if k != "label"}
        out, logits = session_outputs(case.model, feeds, case.logits)
        return cls(calib_path, feeds, case.evaluation.get("label"), out, logits, case.logits)

    def metrics_of(self, path: Path) -> dict:
        """Accuracy, agreement and logit SQNR of the model at ``path`` against this float reference."""
        out, logits = session_outputs(path, self.feeds, self.logits_name)
        return fidelity_metrics(out, logits, self.out, self.logits, self.labels)

    def float_row(self) -> dict:
        return {"row": "float", **fidelity_metrics(self.out, self.logits, self.out, self.logits, self.labels)}

