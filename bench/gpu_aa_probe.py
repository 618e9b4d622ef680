"""A/A probe on the CUDA EP: four byte-identical copies of a sample model measured together, in creation
order and reversed, to see whether the first-created session is slower. Run it like gpu.py
(bench/README.md); it prints one line per measurement: the copy's index and its p50 in microseconds."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from onnxq.measure.bench import BenchConfig, bench_models

ROOT = Path(__file__).resolve().parents[1]


def measure(name: str, models: list[Path], label: str, io_binding: bool = True, batch: int = 32) -> None:
    cfg = BenchConfig(eps=("cuda",), batches=(batch,), runs=300, warmup_runs=30, io_binding=io_binding)
    entries = bench_models(models, cfg)
    p50s = " ".join(f"{e['model'][-1]}:{e['latency_ms']['p50'] * 1000:.1f}" for e in entries)
    print(name, label, p50s, flush=True)


def main() -> int:
    tmp = Path(tempfile.mkdtemp())
    for name in ("resnet_digits", "transformer_digits"):
        copies = [tmp / f"{name}_{i}.onnx" for i in range(4)]
        for copy in copies:
            shutil.copyfile(ROOT / "sample_models" / f"{name}.onnx", copy)
        for _ in range(2):
            measure(name, copies, "fwd       ")
            measure(name, copies[::-1], "rev       ")
            measure(name, copies, "fwd nobind", io_binding=False)
    shutil.rmtree(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
