"""Train a small stateful LSTM on scikit-learn's digits and export it to ONNX (opset 17) with per-sample feeds.

Build-time dependencies only (onnxq never imports torch): torch==2.13.0 (CPU), scikit-learn, onnx, onnxruntime,
numpy. Run it in a virtual environment of its own so that the project's stays free of torch:

    python3.11 -m venv /tmp/buildenv && . /tmp/buildenv/bin/activate
    pip install torch==2.13.0 scikit-learn onnx onnxruntime numpy
    python sample_models/stateful/build.py

Each 8x8 digit (values / 16) is a sequence of 8 time steps (its rows, top to bottom) of 8 features (the pixels of
that row). The model is sequence-first, so its batch axis is 1, not 0:

    x      float32 [8, N, 8]   time, batch, features
    state  float32 [2, N, 32]  h0 and c0 stacked on axis 0 (like Silero VAD's "state")
    scale  float32 []          rank 0; multiplies the input features (feed 1.0)
    -> logits float32 [N, 10], state_out float32 [2, N, 32] (h and c after the last step)

Writes, next to this file: lstm_digits.onnx, calib/test_data_set_{0..63}/ (input_0.pb x, input_1.pb state,
input_2.pb scale), test/test_data_set_{0..99}/ (the same plus output_0.pb, onnxruntime's float logits),
test/labels.npy (int64 [100], labels[i] belongs to test_data_set_i) and README.md. The export is checked
(onnx.checker full check, graph input/output shapes, onnxruntime against torch at batch 100 and batch 1, with
zero and random states); after writing, every feed is read back from disk and run, and output_0.pb must be
reproduced exactly. Any failure stops the build.
"""

from __future__ import annotations

import io
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import sklearn
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

HERE = Path(__file__).resolve().parent
MODEL_FILE = "lstm_digits.onnx"
SEED = 0
OPSET = 17
STEPS, FEATURES, HIDDEN, CLASSES = 8, 8, 32, 10
N_TEST, N_CALIB = 100, 64
EPOCHS, BATCH, LR = 20, 32, 1e-2
EXPORT_ATOL = 1e-4  # logits are O(10); ORT's and torch's LSTM kernels differ by a few 1e-6
INPUTS = {"x": [STEPS, "N", FEATURES], "state": [2, "N", HIDDEN], "scale": []}
OUTPUTS = {"logits": ["N", CLASSES], "state_out": [2, "N", HIDDEN]}


class StatefulLstm(torch.nn.Module):
    """One LSTM layer (hidden 32, sequence-first) whose (h0, c0) come in, and (h, c) go out, as one tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(FEATURES, HIDDEN, num_layers=1)
        self.head = torch.nn.Linear(HIDDEN, CLASSES)

    def forward(self, x: torch.Tensor, state: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, (h, c) = self.lstm(x * scale, (state[0:1], state[1:2]))
        return self.head(h[0]), torch.cat([h, c], dim=0)


# --- data --------------------------------------------------------------------------------------


def split_digits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Stratified, disjoint train / calib / test splits; x is [samples, time, features] float32 in [0, 1]."""
    digits = load_digits()
    x = (digits.data.reshape(-1, STEPS, FEATURES) / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=N_TEST, stratify=y, random_state=SEED)
    x_train, x_calib, y_train, y_calib = train_test_split(
        x_rest, y_rest, test_size=N_CALIB, stratify=y_rest, random_state=SEED
    )
    return {"train": (x_train, y_train), "calib": (x_calib, y_calib), "test": (x_test, y_test)}


def sequence_first(x: np.ndarray) -> np.ndarray:
    """[samples, time, features] -> [time, samples, features], the model's layout."""
    return np.ascontiguousarray(x.transpose(1, 0, 2))


def zero_state(n: int) -> np.ndarray:
    return np.zeros((2, n, HIDDEN), dtype=np.float32)


def feeds(x_seq_first: np.ndarray, state: np.ndarray, scale: float = 1.0) -> dict[str, np.ndarray]:
    return {"x": x_seq_first, "state": state, "scale": np.array(scale, dtype=np.float32)}


# --- training ----------------------------------------------------------------------------------


def train(x: np.ndarray, y: np.ndarray) -> StatefulLstm:
    """Adam with a cosine-decayed learning rate, zero initial state, scale 1; seeded."""
    torch.manual_seed(SEED)
    model = StatefulLstm()
    xt, yt = torch.from_numpy(sequence_first(x)), torch.from_numpy(y)
    n = xt.shape[1]
    steps = EPOCHS * ((n + BATCH - 1) // BATCH)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    gen = torch.Generator().manual_seed(SEED)
    one = torch.tensor(1.0)
    model.train()
    for _ in range(EPOCHS):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, BATCH):
            idx = order[start : start + BATCH]
            logits, _ = model(xt[:, idx], torch.zeros(2, len(idx), HIDDEN), one)
            loss = F.cross_entropy(logits, yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


# --- export and checks -------------------------------------------------------------------------


def export(model: StatefulLstm) -> onnx.ModelProto:
    """Legacy TorchScript export; batch N is dynamic on axis 1 of x, state and state_out, axis 0 of logits."""
    example = (torch.zeros(STEPS, 3, FEATURES), torch.zeros(2, 3, HIDDEN), torch.tensor(1.0))
    buf = io.BytesIO()
    torch.onnx.export(
        model,
        example,
        buf,
        dynamo=False,
        opset_version=OPSET,
        input_names=list(INPUTS),
        output_names=list(OUTPUTS),
        dynamic_axes={"x": {1: "N"}, "state": {1: "N"}, "logits": {0: "N"}, "state_out": {1: "N"}},
    )
    proto = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(proto, full_check=True)
    check_signature(proto)
    return proto


def dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def check_signature(proto: onnx.ModelProto) -> None:
    """Graph inputs and outputs are exactly INPUTS and OUTPUTS, all float32, in that order."""
    for kind, found, expected in (("input", proto.graph.input, INPUTS), ("output", proto.graph.output, OUTPUTS)):
        got = {v.name: dims(v) for v in found}
        if got != expected or list(got) != list(expected):
            raise RuntimeError(f"graph {kind}s are {got}, expected {expected}")
        for v in found:
            if v.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
                raise RuntimeError(f"graph {kind} {v.name!r} is not float32")


def session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # one thread: the same logits on every run, so output_0.pb is reproducible
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def check_against_torch(proto: onnx.ModelProto, model: StatefulLstm, x_test: np.ndarray) -> float:
    """Largest |ORT - torch| over both outputs: zero state and scale 1 (the shipped feeds), then a random
    state and scale 0.75 (so that the state and scale wiring is checked too), at batch 100 and batch 1."""
    sess = session(proto)
    x = sequence_first(x_test)
    rng = np.random.default_rng(SEED)
    cases = [(zero_state(len(x_test)), 1.0), (rng.normal(0, 0.5, (2, len(x_test), HIDDEN)).astype(np.float32), 0.75)]
    err = 0.0
    for state, scale in cases:
        with torch.no_grad():
            expected = [t.numpy() for t in model(*(torch.from_numpy(a) for a in feeds(x, state, scale).values()))]
        full = sess.run(list(OUTPUTS), feeds(x, state, scale))
        singles = [sess.run(list(OUTPUTS), feeds(x[:, i : i + 1], state[:, i : i + 1], scale)) for i in range(8)]
        single = [np.concatenate([s[0] for s in singles], axis=0), np.concatenate([s[1] for s in singles], axis=1)]
        err = max(
            err,
            *(float(np.abs(a - b).max()) for a, b in zip(full, expected, strict=True)),
            float(np.abs(single[0] - expected[0][:8]).max()),
            float(np.abs(single[1] - expected[1][:, :8]).max()),
        )
    if not err <= EXPORT_ATOL:
        raise RuntimeError(f"ORT and torch disagree by {err:.3g} (> {EXPORT_ATOL}); the export is wrong")
    return err


# --- test data ---------------------------------------------------------------------------------


def write_tensor(path: Path, array: np.ndarray, name: str) -> None:
    tensor = numpy_helper.from_array(array, name=name)  # not np.ascontiguousarray: it makes rank 0 rank 1
    path.write_bytes(tensor.SerializeToString())


def read_tensor(path: Path) -> tuple[str, np.ndarray]:
    tensor = onnx.TensorProto()
    tensor.ParseFromString(path.read_bytes())
    return tensor.name, numpy_helper.to_array(tensor)


def write_sets(folder: Path, x: np.ndarray, sess: ort.InferenceSession | None) -> None:
    """One test_data_set_i per sample: input_0.pb x [8,1,8], input_1.pb state [2,1,32] (zeros), input_2.pb
    scale [] (1.0); with ``sess``, also output_0.pb, the logits [1,10] that onnxruntime gives for that feed."""
    if folder.exists():
        shutil.rmtree(folder)  # no stale sets from an earlier build with more samples
    seq = sequence_first(x)
    for i in range(len(x)):
        case = folder / f"test_data_set_{i}"
        case.mkdir(parents=True)
        feed = feeds(seq[:, i : i + 1], zero_state(1))
        for k, (name, array) in enumerate(feed.items()):
            write_tensor(case / f"input_{k}.pb", array, name)
        if sess is not None:
            write_tensor(case / "output_0.pb", sess.run(["logits"], feed)[0], "logits")


def read_sets(folder: Path) -> list[Path]:
    """The test_data_set_i folders in order of i (numeric: test_data_set_10 comes after test_data_set_9)."""
    return sorted(folder.glob("test_data_set_*"), key=lambda p: int(p.name.rsplit("_", 1)[1]))


def verify_on_disk(model_path: Path, labels: np.ndarray) -> float:
    """Reload the model (full check) and every feed from disk, run each one, require output_0.pb bit for bit;
    return the test accuracy of the per-sample runs against test/labels.npy."""
    onnx.checker.check_model(str(model_path), full_check=True)
    sess = session(model_path)
    correct = 0
    for split, count in (("calib", N_CALIB), ("test", N_TEST)):
        sets = read_sets(HERE / split)
        if [p.name for p in sets] != [f"test_data_set_{i}" for i in range(count)]:
            raise RuntimeError(f"{split}/ holds {len(sets)} sets, expected test_data_set_0..{count - 1}")
        for i, case in enumerate(sets):
            feed = dict(read_tensor(case / f"input_{k}.pb") for k in range(len(INPUTS)))
            shapes = {name: [1 if d == "N" else d for d in shape] for name, shape in INPUTS.items()}
            if {name: list(a.shape) for name, a in feed.items()} != shapes or list(feed) != list(INPUTS):
                raise RuntimeError(f"{case}: tensors {[(n, a.shape) for n, a in feed.items()]}, expected {shapes}")
            logits, state_out = sess.run(list(OUTPUTS), feed)
            if state_out.shape != (2, 1, HIDDEN) or not np.isfinite(state_out).all():
                raise RuntimeError(f"{case}: state_out {state_out.shape} is not a finite [2, 1, {HIDDEN}]")
            if split == "test":
                name, expected = read_tensor(case / "output_0.pb")
                if name != "logits" or not np.array_equal(logits, expected):
                    raise RuntimeError(f"{case}: onnxruntime does not reproduce output_0.pb")
                correct += int(logits[0].argmax() == labels[i])
    return correct / N_TEST


# --- README ------------------------------------------------------------------------------------


def folder_bytes(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    return sum(p.stat().st_size for p in files), len(files)


def library_versions() -> str:
    libs = {"torch": torch, "onnx": onnx, "onnxruntime": ort, "numpy": np, "scikit-learn": sklearn}
    return ", ".join(f"{name} {mod.__version__}" for name, mod in libs.items())


def readme_text(accuracy: float, batch_accuracy: float, err: float, params: int, ops: str) -> str:
    sizes = {name: folder_bytes(HERE / name) for name in (MODEL_FILE, "calib", "test")}
    total = sum(b for b, _ in sizes.values())
    return README.format(
        accuracy=accuracy,
        batch_accuracy=batch_accuracy,
        err=err,
        params=params,
        ops=ops,
        model_kib=sizes[MODEL_FILE][0] / 1024,
        calib_kib=sizes["calib"][0] / 1024,
        calib_files=sizes["calib"][1],
        test_kib=sizes["test"][0] / 1024,
        test_files=sizes["test"][1],
        total_kib=total / 1024,
        versions=library_versions(),
        epochs=EPOCHS,
        batch=BATCH,
        lr=LR,
        n_train=1797 - N_TEST - N_CALIB,
    )


README = """# Stateful LSTM sample model

`lstm_digits.onnx`: a one-layer LSTM (hidden size 32) trained on scikit-learn's digits, with a recurrent state
input and output, a rank-0 input, and its **batch axis at 1, not 0** on the sequence and state tensors. It is
here to show that onnxq calibrates and evaluates a model with a recurrent state input from per-sample feeds.
Written, with its data and this README, by `build.py` (torch at build time only).

## Model
Each 8x8 digit, divided by 16 (values in [0, 1]), is read row by row as a sequence of 8 time steps of 8
features (step t = row t, top to bottom). The graph (ONNX opset 17, legacy TorchScript exporter of torch 2.13):
`x * scale` -> `LSTM` (initial h and c sliced from `state`) -> the last hidden state `Y_h` -> `Gemm` head;
`state_out` is `Concat(Y_h, Y_c)`. Ops: {ops}. {params:,} parameters.

| | name | dtype | shape | batch axis |
| --- | --- | --- | --- | --- |
| input 0 | `x` | float32 | `[8, N, 8]` (time, batch, features) | 1 |
| input 1 | `state` | float32 | `[2, N, 32]` (h0 = `state[0]`, c0 = `state[1]`) | 1 |
| input 2 | `scale` | float32 | `[]` (rank 0; multiplies the input features; feed 1.0) | none |
| output 0 | `logits` | float32 | `[N, 10]` | 0 |
| output 1 | `state_out` | float32 | `[2, N, 32]` (h and c after step 8) | 1 |

N is the dynamic dimension `"N"`; the time length is fixed at 8. Feeding `state_out` back as `state` continues
the recurrence (a stream); for classification, every sample starts from a zero state.

- Test accuracy (onnxruntime CPU, the 100 per-sample feeds in `test/`, zero state, scale 1): **{accuracy:.2%}**
  (the same 100 samples in one batch of 100: {batch_accuracy:.2%}).
- Largest |onnxruntime - torch| over `logits` and `state_out`, at batch 100 and batch 1, with a zero state and
  scale 1 and with a random state and scale 0.75: {err:.1e} (the build fails above 1e-4).

## Data (ONNX's test-data layout)
`load_digits()` (1797 images) is split with `train_test_split`, stratified by class, `random_state=0`, into three
disjoint parts: 100 test samples, 64 calibration samples and {n_train} training samples (not stored). The model
never saw the calibration or test samples.

    calib/test_data_set_0 ... calib/test_data_set_63/   input_0.pb  input_1.pb  input_2.pb
    test/test_data_set_0 ... test/test_data_set_99/     input_0.pb  input_1.pb  input_2.pb  output_0.pb
    test/labels.npy                                     int64 [100]

- One sample per set: `input_0.pb` is `x` `[8, 1, 8]`, `input_1.pb` is `state` `[2, 1, 32]` (zeros),
  `input_2.pb` is `scale` `[]` (1.0). Each file is a serialized `onnx.TensorProto`
  (`onnx.numpy_helper.from_array(...).SerializeToString()`) whose `name` is the model input's name; read it
  back with `TensorProto.ParseFromString` and `numpy_helper.to_array`. The build checks every stored shape
  itself: onnxruntime 1.32 runs a `[1]` tensor fed as the rank-0 `scale` without an error.
- `test/.../output_0.pb` is `logits` `[1, 10]` (tensor name `logits`): what onnxruntime (CPU, one thread) gives
  for that set's inputs with the float model. `state_out` is not stored.
- `test/labels.npy`: `labels[i]` is the true digit of `test/test_data_set_i`. The index is the number in the
  folder name; sort the folders numerically (`test_data_set_10` comes after `test_data_set_9`, not after
  `test_data_set_1`).

## Sizes
| what | bytes |
| --- | --- |
| `lstm_digits.onnx` | {model_kib:.1f} KiB |
| `calib/` ({calib_files} files) | {calib_kib:.1f} KiB |
| `test/` ({test_files} files) | {test_kib:.1f} KiB |
| model and data | {total_kib:.1f} KiB |

These are file contents; on a file system with 4 KiB blocks the many small files take more room on disk.

## Rebuild
In a virtual environment of its own, so that the project's stays free of torch:

    pip install torch==2.13.0 scikit-learn onnx onnxruntime numpy
    python sample_models/stateful/build.py

Training: Adam, learning rate {lr:g} with cosine decay, {epochs} epochs of batches of {batch}, zero initial state,
scale 1, seed 0, one thread, deterministic algorithms; a few seconds on one CPU core. After export, the script
checks the graph (onnx.checker full check, the input and output names and shapes above) and onnxruntime against
torch; after writing, it reloads every calibration and test set from disk, runs it, and requires `output_0.pb`
to be reproduced exactly. Built with: {versions}.
"""


def main() -> int:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    splits = split_digits()
    (x_train, y_train), (x_calib, _), (x_test, y_test) = splits["train"], splits["calib"], splits["test"]
    model = train(x_train, y_train)
    proto = export(model)
    err = check_against_torch(proto, model, x_test)
    model_path = HERE / MODEL_FILE
    onnx.save_model(proto, str(model_path))
    sess = session(model_path)
    write_sets(HERE / "calib", x_calib, None)
    write_sets(HERE / "test", x_test, sess)
    np.save(HERE / "test" / "labels.npy", y_test)
    batch_logits = sess.run(["logits"], feeds(sequence_first(x_test), zero_state(N_TEST)))[0]
    batch_accuracy = float((batch_logits.argmax(axis=1) == y_test).mean())
    accuracy = verify_on_disk(model_path, np.load(HERE / "test" / "labels.npy"))
    if accuracy < 0.9:
        raise RuntimeError(f"test accuracy {accuracy:.2%} is below 90%; train longer")
    ops = ", ".join(f"{op} {n}" for op, n in sorted(Counter(n.op_type for n in proto.graph.node).items()))
    params = sum(p.numel() for p in model.parameters())
    text = readme_text(accuracy, batch_accuracy, err, params, ops)
    (HERE / "README.md").write_text(text)
    print(f"{MODEL_FILE}: test accuracy {accuracy:.2%} (batch {batch_accuracy:.2%}), |ORT-torch| {err:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
