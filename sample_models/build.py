"""Train five real models on scikit-learn's digits and export them to ONNX (opset 17).

Build-time dependencies (not needed by onnxq itself): torch==2.13.0 (CPU) and scikit-learn, plus onnxq's
own numpy, onnx and onnxruntime. The legacy TorchScript exporter is used, so onnxscript is not needed.

    pip install torch==2.13.0 scikit-learn && python sample_models/build.py

Writes, in this folder: resnet_digits.onnx, mobilenetv2_digits.onnx, transformer_digits.onnx,
mlp_digits.onnx, resnet_wide_digits.onnx (the README's demo model), calib.npz ("input" [200,1,16,16]
float32), test.npz ("input" [400,1,16,16] float32, "label" [400] int64) and README.md. Every model is
checked (onnx.checker full check, onnxruntime against torch, fixed batch sizes 1 and 400) before it is
written; any failure stops the build.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import time
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from nets import MlpDigits, MobileNetV2Digits, ResNetDigits, TransformerDigits, WideResNetDigits
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from onnxq.model import load_model, save_model

HERE = Path(__file__).resolve().parent
SEED = 0
OPSET = 17
N_TEST, N_CALIB = 400, 200
# ORT and torch run the same float32 graph with different kernels (summation order, fused BN); logits
# are O(10), so differences of a few 1e-6 are expected and 1e-4 would indicate a wrong export.
EXPORT_ATOL = 1e-4


@dataclass(frozen=True)
class Recipe:
    """How one model is built: its class, training schedule and export mode."""

    file: str
    make: type[torch.nn.Module]
    epochs: int
    lr: float
    weight_decay: float = 0.0
    keep_batchnorm: bool = False  # export BatchNormalization nodes instead of folding them into Conv


RECIPES = (
    Recipe("resnet_digits.onnx", ResNetDigits, epochs=20, lr=3e-3),
    # No weight decay: the depthwise convs keep the uneven per-channel ranges that real MobileNets have.
    Recipe("mobilenetv2_digits.onnx", MobileNetV2Digits, epochs=25, lr=3e-3, keep_batchnorm=True),
    Recipe("transformer_digits.onnx", TransformerDigits, epochs=60, lr=2e-3, weight_decay=0.05),
    Recipe("mlp_digits.onnx", MlpDigits, epochs=40, lr=2e-3),
    # Last, so the four models above (and the golden hashes of their quantized outputs) stay as they were.
    Recipe("resnet_wide_digits.onnx", WideResNetDigits, epochs=12, lr=3e-3),
)


# --- data --------------------------------------------------------------------------------------


def upsample_digits(images_8x8: np.ndarray) -> np.ndarray:
    """[N, 64] digits with values 0..16 -> [N, 1, 16, 16] float32 in [0, 1], bilinear (half-pixel centres)."""
    x = torch.from_numpy(images_8x8.astype(np.float32).reshape(-1, 1, 8, 8) / 16.0)
    up = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    # Bilinear weights are convex, so the range stays inside [0, 1]; clip only float rounding at the ends.
    return np.clip(up.numpy(), 0.0, 1.0).astype(np.float32)


def split_digits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Stratified, disjoint train / calib / test splits of the 1797 digits (fixed seed)."""
    digits = load_digits()
    x, y = upsample_digits(digits.data), digits.target.astype(np.int64)
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=N_TEST, stratify=y, random_state=SEED)
    x_train, x_calib, y_train, y_calib = train_test_split(
        x_rest, y_rest, test_size=N_CALIB, stratify=y_rest, random_state=SEED
    )
    return {"train": (x_train, y_train), "calib": (x_calib, y_calib), "test": (x_test, y_test)}


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an .npz that np.load reads, atomically and byte-for-byte reproducibly (fixed zip timestamps)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for key, array in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.ascontiguousarray(array), allow_pickle=False)
    write_bytes_atomically(path, buf.getvalue())


def write_bytes_atomically(path: Path, payload: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; these are shared, read-only assets
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --- training ----------------------------------------------------------------------------------


def train(recipe: Recipe, x: np.ndarray, y: np.ndarray) -> torch.nn.Module:
    """Train ``recipe.make()`` with Adam(W) and a cosine schedule; seeded, so reruns give the same weights."""
    torch.manual_seed(SEED)
    model = recipe.make()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    batch = 64
    steps = recipe.epochs * ((len(xt) + batch - 1) // batch)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(recipe.epochs):
        order = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), batch):
            idx = order[start : start + batch]
            loss = F.cross_entropy(model(shift_augment(xt[idx], gen)), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def shift_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by up to one pixel in each direction (zero fill): digits are not always centred."""
    padded = F.pad(x, (1, 1, 1, 1))
    offsets = torch.randint(0, 3, (len(x), 2), generator=gen)
    return torch.stack(
        [padded[i, :, dy : dy + 16, dx : dx + 16] for i, (dy, dx) in enumerate(offsets.tolist())]
    )


# --- export and checks -------------------------------------------------------------------------


def export(model: torch.nn.Module, keep_batchnorm: bool) -> onnx.ModelProto:
    """Export with the legacy TorchScript exporter, input "input" [N,1,16,16] and output "logits" [N,10].

    Constant folding folds eval-mode BatchNorm into the Conv weights; with ``keep_batchnorm`` it is turned
    off and TrainingMode.PRESERVE keeps the BatchNormalization nodes (in inference form, training_mode=0).
    """
    buf = io.BytesIO()
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 16, 16),),
        buf,
        dynamo=False,
        opset_version=OPSET,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        do_constant_folding=not keep_batchnorm,
        training=torch.onnx.TrainingMode.PRESERVE if keep_batchnorm else torch.onnx.TrainingMode.EVAL,
    )
    proto = onnx.load_from_string(buf.getvalue())
    inline_shared_initializers(proto)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def inline_shared_initializers(model: onnx.ModelProto) -> None:
    """Replace ``Identity(initializer)`` with a copy of the initializer.

    The exporter deduplicates parameters with equal values and re-creates the second one with an Identity
    node; BatchNormalization and Conv would then read a computed tensor instead of a constant.
    """
    inits = {t.name: t for t in model.graph.initializer}
    keep = []
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[node.input[0]])
            copy.name = node.output[0]
            model.graph.initializer.append(copy)
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)


def check_against_torch(proto: onnx.ModelProto, model: torch.nn.Module, x: np.ndarray) -> float:
    """Largest |ORT - torch| over ``x`` at batch sizes len(x) and 1; raise if above EXPORT_ATOL."""
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    full = sess.run(["logits"], {"input": x})[0]
    single = np.concatenate([sess.run(["logits"], {"input": x[i : i + 1]})[0] for i in range(8)])
    err = max(float(np.abs(full - expected).max()), float(np.abs(single - expected[:8]).max()))
    if not err <= EXPORT_ATOL:
        raise RuntimeError(f"ORT and torch disagree by {err:.3g} (> {EXPORT_ATOL}); the export is wrong")
    return err


def ort_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {"input": x})[0]
    return float((logits.argmax(axis=1) == y).mean())


def depthwise_range_spread(proto: onnx.ModelProto) -> list[float]:
    """For each depthwise Conv followed by BatchNormalization: max/min of the per-channel |w| maxima
    after folding the BN scale gamma / sqrt(var + eps) into the weights (what per-tensor int8 would see)."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    consumers = {name: n for n in proto.graph.node for name in n.input}
    spreads = []
    for node in proto.graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.op_type != "Conv" or group == 1:
            continue
        bn = consumers[node.output[0]]
        eps = next(a.f for a in bn.attribute if a.name == "epsilon")
        gamma, var = inits[bn.input[1]], inits[bn.input[4]]
        w = inits[node.input[1]] * (gamma / np.sqrt(var + eps))[:, None, None, None]
        per_channel = np.abs(w).reshape(len(w), -1).max(axis=1)
        spreads.append(float(per_channel.max() / per_channel.min()))
    return spreads


# --- README ------------------------------------------------------------------------------------


def multiply_adds(model: torch.nn.Module) -> int:
    """Multiply-adds of one 16x16 image through the Conv2d and Linear layers (the work int8 kernels do)."""
    total = 0

    def count(module: torch.nn.Module, _inputs: object, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1]
            total += out.numel() * module.in_channels // module.groups * kernel
        elif isinstance(module, torch.nn.Linear):
            total += out.numel() // out.shape[-1] * module.in_features * module.out_features

    hooks = [m.register_forward_hook(count) for m in model.modules()]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 1, 16, 16))
    finally:
        for hook in hooks:
            hook.remove()
    return total


def describe(path: Path, model: torch.nn.Module, accuracy: float, err: float) -> dict[str, object]:
    proto = onnx.load(str(path))
    ops = Counter(n.op_type for n in proto.graph.node)
    return {
        "file": path.name,
        "accuracy": accuracy,
        "bytes": path.stat().st_size,
        "params": sum(p.numel() for p in model.parameters()),
        "macs": multiply_adds(model),
        "ops": ", ".join(f"{op} {count}" for op, count in sorted(ops.items())),
        "err": err,
    }


def readme_text(rows: list[dict[str, object]], spreads: list[float]) -> str:
    table = [
        "| model | float test accuracy (ORT, 400 images) | file size | parameters "
        "| multiply-adds per image (Conv, Linear) | max abs ORT-torch | ops |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        table.append(
            f"| `{r['file']}` | {r['accuracy']:.2%} | {r['bytes'] / 1024:.1f} KiB | {r['params']:,} | "
            f"{r['macs']:,} | {r['err']:.1e} | {r['ops']} |"
        )
    macs = {r["file"]: r["macs"] / 1e6 for r in rows}
    return README.format(
        table="\n".join(table),
        spreads=", ".join(f"{s:.1f}" for s in spreads),
        macs=f"{macs['resnet_wide_digits.onnx']:.1f}",
        small_macs=f"{macs['resnet_digits.onnx']:.1f}",
        versions=library_versions(),
    )


def library_versions() -> str:
    import sklearn  # only for its version; the data functions are imported at the top

    libs = {"torch": torch, "onnx": onnx, "onnxruntime": ort, "numpy": np, "scikit-learn": sklearn}
    return ", ".join(f"{name} {mod.__version__}" for name, mod in libs.items())


README = """# Sample models

Five models trained on real data (scikit-learn's digits) for onnxq's tests, examples and benchmarks: four
small ones, and `resnet_wide_digits.onnx`, the README's demo, with enough work per image that int8 pays off.
Every model takes `input` float32 `[N, 1, 16, 16]` (N is the dynamic dimension `"N"`) and returns
`logits` float32 `[N, 10]`. ONNX opset 17, exported with torch 2.13's legacy TorchScript exporter.

{table}

The table is written by `build.py`; accuracy is measured with onnxruntime (CPU) on `test.npz`.
Parameters are the torch model's trainable parameters (BatchNorm running statistics not counted).

## Models
- `resnet_digits.onnx`: stem Conv-BN-ReLU, MaxPool, two residual blocks (one identity shortcut, one 1x1
  projection shortcut; residual `Add`), GlobalAveragePool, `Gemm` head. Exported with constant folding,
  so BatchNorm is folded into the Conv weights (no BatchNormalization nodes).
- `mobilenetv2_digits.onnx`: MobileNetV2-style: stem, five inverted residual blocks (1x1 expand, 3x3
  depthwise Conv with `group` = channels, 1x1 linear projection; `Add` where shapes match), 1x1 Conv,
  GlobalAveragePool, `Gemm`. **BatchNormalization nodes are kept** (exported with constant folding off
  and `TrainingMode.PRESERVE` on the eval-mode model, so they are inference BatchNorms, `training_mode=0`);
  ReLU6 is `Clip(0, 6)`. Trained without weight decay. After folding BN into the depthwise weights, the
  ratio of largest to smallest per-channel max |w| in each depthwise Conv is: {spreads}.
- `transformer_digits.onnx`: 4x4 patches via Conv (stride 4) -> 16 tokens of width 48 + learned position
  embedding, 2 pre-norm encoder layers (4-head self-attention written from `MatMul` and `Softmax`,
  `LayerNormalization`, MLP with GELU, exported as Erf-based math), final LayerNorm, mean pooling
  (`ReduceMean`), `Gemm` head. Trained with AdamW, weight decay 0.05.
- `mlp_digits.onnx`: `Flatten` inside the graph, then Gemm(256->128)-ReLU-Gemm(128->64)-ReLU-Gemm(64->10).
- `resnet_wide_digits.onnx` (the README's first command): stem Conv(1->64)-BN-ReLU at 16x16, two residual
  blocks of 64 channels at 16x16 (identity shortcuts), one of 128 channels at 8x8 (stride 2, 1x1 projection
  shortcut), GlobalAveragePool, `Gemm` head; BatchNorm folded as in `resnet_digits.onnx`. No MaxPool, so the
  3x3 convolutions run at full resolution: {macs} million multiply-adds per image (`resnet_digits.onnx`:
  {small_macs} million), enough work for int8 kernels to beat float32 on a CPU (`bench/results/demo.md`);
  the small models run in tens of microseconds, where Q/DQ overhead and timer noise are as large as the
  convolutions.

## Data
scikit-learn's `load_digits()` (1797 8x8 images of handwritten digits, values 0..16, 10 classes), divided
by 16 and upsampled to 16x16 with bilinear interpolation (`torch.nn.functional.interpolate`,
`align_corners=False`), so every value lies in [0, 1]. Split with `train_test_split`, stratified by class,
`random_state=0`, into three disjoint parts:
- `test.npz`: 400 images, keys `input` `[400, 1, 16, 16]` float32 and `label` `[400]` int64.
- `calib.npz`: 200 images, key `input` `[200, 1, 16, 16]` float32, unlabeled. Held out from training:
  the models never saw these images.
- training: the remaining 1197 images (not stored). Training shifts images by up to one pixel.

## Rebuild
    pip install torch==2.13.0 scikit-learn && python sample_models/build.py

About 80 s of CPU time on 2 cores, half of it for `resnet_wide_digits.onnx` (longer on a busy machine).
Training is seeded, single-threaded and uses deterministic algorithms, and the .npz files are written with
fixed zip timestamps. Rebuilding with the same versions gives byte-identical files on the same machine
(checked by rebuilding); another CPU or library version may change the weights in the last bits. Built
with: {versions}.
"""


def main() -> int:
    torch.set_num_threads(1)  # one thread: summation order, and so the trained weights, do not vary
    torch.use_deterministic_algorithms(True)
    splits = split_digits()
    (x_train, y_train), (x_calib, _), (x_test, y_test) = splits["train"], splits["calib"], splits["test"]
    write_npz(HERE / "calib.npz", {"input": x_calib})
    write_npz(HERE / "test.npz", {"input": x_test, "label": y_test})
    rows, spreads = [], []
    for recipe in RECIPES:
        start = time.perf_counter()
        model = train(recipe, x_train, y_train)
        proto = export(model, recipe.keep_batchnorm)
        err = check_against_torch(proto, model, x_test)
        path = save_model(proto, HERE / recipe.file)
        os.chmod(path, 0o644)  # save_model's temporary file is created 0600
        load_model(path)  # onnxq's own loader must accept what we ship
        accuracy = ort_accuracy(path, x_test, y_test)
        if recipe.keep_batchnorm:
            spreads = depthwise_range_spread(proto)
        rows.append(describe(path, model, accuracy, err))
        seconds = time.perf_counter() - start
        print(f"{recipe.file}: test accuracy {accuracy:.2%}, |ORT-torch| {err:.1e}, {seconds:.0f}s")
    text = readme_text(rows, spreads)
    write_bytes_atomically(HERE / "README.md", text.encode())
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
