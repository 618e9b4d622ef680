"""A/A probe on the CUDA EP: four byte-identical copies of a sample model measured together, in creation
order and reversed, to see whether the first-created session is slower. Run it like gpu.py (bench/README.md)."""
import shutil
import tempfile
from pathlib import Path

from onnxq.bench import BenchConfig, bench_models

tmp = Path(tempfile.mkdtemp())
for name in ("resnet_digits", "transformer_digits"):
    src = Path(f"sample_models/{name}.onnx")
    copies = [tmp / f"{name}_{i}.onnx" for i in range(4)]
    for c in copies:
        shutil.copyfile(src, c)

    def run(models, label, io=True, batch=32):
        cfg = BenchConfig(eps=("cuda",), batches=(batch,), runs=300, warmup_runs=30, io_binding=io)
        es = bench_models(models, cfg)
        print(name, label, " ".join(f"{e['model'][-1]}:{e['latency_ms']['p50'] * 1000:.1f}" for e in es), flush=True)

    for _ in range(2):
        run(copies, "fwd      ")
        run(copies[::-1], "rev      ")
        run(copies, "fwd nobind", io=False)
