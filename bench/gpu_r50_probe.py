"""Where the ResNet-50's FP16 time goes on the CUDA EP at batch 32 and 256, and what cuDNN can do there.

A probe for issue 16's 2x goal (run it like gpu.py, on the GPU machine). Sessions are made with ORT directly
(not through onnxq bench) so that options onnxq does not expose can be tried; every session uses IO binding
with device-resident input and output, 10 warm-up runs, then ``--runs`` timed runs; it prints the p50 per
variant and batch, then ORT's profile of onnxq's recipe at the largest batch (time per op type), then the same
network in torch (cuDNN, FP16, channels-last, ``cudnn.benchmark``, a CUDA graph) as the reference of what the
GPU's convolution libraries reach. Random weights: latency only.

    python bench/gpu_r50_probe.py [--batches 32,256] [--runs 50] > probe.txt
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def session(path: Path, opts: dict, profile: str | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = profile
    return ort.InferenceSession(str(path), so, providers=[("CUDAExecutionProvider", opts)])


def timed(sess, x: np.ndarray, runs: int, graph: bool) -> float:
    """p50 ms of ``runs`` runs with the input and output bound in device memory."""
    import onnxruntime as ort

    inp = sess.get_inputs()[0]
    dtype = np.float16 if "float16" in inp.type else np.float32
    x_dev = ort.OrtValue.ortvalue_from_numpy(x.astype(dtype), "cuda", 0)
    out = sess.get_outputs()[0]
    out_dtype = np.float16 if "float16" in out.type else np.float32
    y_dev = ort.OrtValue.ortvalue_from_shape_and_type((x.shape[0], 1000), out_dtype, "cuda", 0)
    io = sess.io_binding()
    io.bind_ortvalue_input(inp.name, x_dev)
    io.bind_ortvalue_output(out.name, y_dev)
    ro = ort.RunOptions()
    for _ in range(10):
        sess.run_with_iobinding(io, ro)
    times = []
    for _ in range(runs):
        io.synchronize_inputs()
        t = time.perf_counter()
        sess.run_with_iobinding(io, ro)
        io.synchronize_outputs()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def models(work: Path) -> dict[str, Path]:
    import resnet50 as builder

    from onnxq.model import lower_ir_version_for_ort, save_model
    from onnxq.passes.fp16 import FP16Config, convert_to_fp16
    from onnxq.passes.prepare import prepare_model

    f32 = work / "r50.onnx"
    onnx.save(builder.build(), f32)
    ours = convert_to_fp16(prepare_model(onnx.load(f32)).model).model
    lower_ir_version_for_ort(ours)
    half_io = convert_to_fp16(prepare_model(onnx.load(f32)).model, FP16Config(keep_io_types=False)).model
    lower_ir_version_for_ort(half_io)
    return {"float32": f32, "fp16": save_model(ours, work / "r50.fp16.onnx"),
            "fp16-io": save_model(half_io, work / "r50.fp16io.onnx")}  # fmt: skip


VARIANTS = (  # label, file, CUDA EP options, CUDA graph
    ("float32 default", "float32", {}, False),
    ("fp16 nhwc+graph (onnxq)", "fp16", {"prefer_nhwc": "1", "enable_cuda_graph": "1"}, True),
    ("fp16 nhwc+graph fuse_conv_bias", "fp16", {"prefer_nhwc": "1", "enable_cuda_graph": "1",
                                                "fuse_conv_bias": "1"}, True),
    ("fp16 nhwc+graph algo DEFAULT", "fp16", {"prefer_nhwc": "1", "enable_cuda_graph": "1",
                                              "cudnn_conv_algo_search": "DEFAULT"}, True),
    ("fp16 nhwc+graph fp16 io", "fp16-io", {"prefer_nhwc": "1", "enable_cuda_graph": "1"}, True),
    ("fp16 nchw+graph", "fp16", {"prefer_nhwc": "0", "enable_cuda_graph": "1"}, True),
    ("fp16 nhwc+graph fuse_conv_bias fp16 io", "fp16-io", {"prefer_nhwc": "1", "enable_cuda_graph": "1",
                                                           "fuse_conv_bias": "1"}, True),
    ("float32 graph", "float32", {"enable_cuda_graph": "1"}, True),
)


def ort_rows(files: dict[str, Path], batches: list[int], runs: int) -> list[dict]:
    rows = []
    for batch in batches:
        x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
        for rep in range(2):
            for label, key, opts, graph in VARIANTS if rep == 0 else reversed(VARIANTS):
                try:
                    ms = timed(session(files[key], opts), x, runs, graph)
                except Exception as exc:  # noqa: BLE001 - a probe: record and go on
                    ms, label = None, f"{label} FAILED {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                rows.append({"batch": batch, "variant": label, "p50_ms": ms, "round": rep})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def profile(files: dict[str, Path], batch: int, work: Path) -> None:
    """ORT's node profile of fp16 NHWC (no graph: a graph hides its nodes) at ``batch``: ms per op type."""
    sess = session(files["fp16"], {"prefer_nhwc": "1"}, profile=str(work / "prof"))
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    timed(sess, x, 10, False)
    trace = json.loads(Path(sess.end_profiling()).read_text())
    per_op: Counter = Counter()
    count: Counter = Counter()
    for ev in trace:
        if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
            op = ev.get("args", {}).get("op_name", "?")
            per_op[op] += ev["dur"] / 1e3
            count[op] += 1
    runs = 20  # 10 warm-up + 10 timed
    total = sum(per_op.values()) / runs
    print(f"profile fp16 nhwc batch {batch}: {total:.2f} ms of kernels per run (host-side timing of each node)")
    for op, ms in per_op.most_common(12):
        print(f"  {op}: {ms / runs:.2f} ms per run, {count[op] // runs} nodes")


def torch_resnet50():
    """torchvision's resnet50 when it is installed, else the same network written here with BatchNorm folded
    into biased convolutions (as bench/resnet50.py builds it)."""
    import torch
    from torch import nn

    try:
        import torchvision

        return torchvision.models.resnet50(), f"torchvision {torchvision.__version__} resnet50 (BatchNorm kept)"
    except ImportError:
        pass

    class Bottleneck(nn.Module):
        def __init__(self, cin: int, width: int, stride: int) -> None:
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(cin, width, 1), nn.Conv2d(width, width, 3, stride, 1)
            self.c3 = nn.Conv2d(width, 4 * width, 1)
            self.proj = nn.Conv2d(cin, 4 * width, 1, stride) if stride != 1 or cin != 4 * width else None

        def forward(self, x):
            y = self.c3(torch.relu(self.c2(torch.relu(self.c1(x)))))
            return torch.relu(y + (self.proj(x) if self.proj is not None else x))

    layers, cin = [nn.Conv2d(3, 64, 7, 2, 3), nn.ReLU(), nn.MaxPool2d(3, 2, 1)], 64
    for i, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3))):
        for b in range(blocks):
            layers.append(Bottleneck(cin, width, 2 if b == 0 and i > 0 else 1))
            cin = 4 * width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000)]
    return nn.Sequential(*layers), "a ResNet-50 in torch (BatchNorm folded into biased convs)"


def torch_reference(batches: list[int], runs: int) -> None:
    try:
        import torch
    except ImportError as exc:
        print(f"torch reference skipped: {exc}")
        return
    torch.backends.cudnn.benchmark = True
    net, what = torch_resnet50()
    net = net.eval().cuda().half().to(memory_format=torch.channels_last)
    for batch in batches:
        x = torch.randn(batch, 3, 224, 224, device="cuda").half().to(memory_format=torch.channels_last)
        with torch.inference_mode():
            for _ in range(10):
                net(x)
            torch.cuda.synchronize()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                net(x)
            times = []
            for _ in range(runs):
                torch.cuda.synchronize()
                t = time.perf_counter()
                g.replay()
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
        print(json.dumps({"batch": batch, "variant": f"torch {torch.__version__}, {what}, fp16 channels-last, "
                          "cudnn.benchmark, CUDA graph", "p50_ms": 1e3 * statistics.median(times)}), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="32,256", type=lambda s: [int(b) for b in s.split(",")])
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args()
    import onnxruntime as ort

    ort.preload_dlls()
    with tempfile.TemporaryDirectory() as tmp:
        files = models(Path(tmp))
        ort_rows(files, args.batches, args.runs)
        profile(files, max(args.batches), Path(tmp))
    torch_reference(args.batches, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
