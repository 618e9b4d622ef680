"""A seeded sample of ONNX's backend node models through inspect, quantize and eval, in process.

Each model must end every command in success or in onnxq's clean error (exit code 2, an ``error:`` line and a
``hint:`` line, nothing else on stderr, and never "this is an onnxq bug"); a quantized model must load in ONNX
Runtime and keep the float model's output shapes and dtypes on the test inputs. The models come from the onnx
1.22.0 wheel (``tests/backend_node_data.py``); without them the test skips. ``bench/backend_suite.py`` runs all of
them, each command in its own process; this sample keeps the crash classes it found from coming back.
"""

from __future__ import annotations

import random
from pathlib import Path

import backend_node_data
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxq.cli import main
from onnxq.data import open_dataset
from onnxq.model import lower_ir_version_for_ort

SEED, SAMPLED = 20261202, 185
# the crash classes found so far, one model or more each: rank-0 inputs, no inputs, zero-size tensors, int4, float8
# and bfloat16, shape-[1] hard-swish constants, AveragePool dilations, If with optionals (graphsurgeon), sequence
# and optional inputs and outputs, broadcast operands of fixed shapes, string inputs, Constant-only models
KNOWN = (
    "test_clip", "test_clip_default_inbounds", "test_constant", "test_split_zero_size_splits_opset13",
    "test_triu_zero", "test_cast_INT4_to_FLOAT", "test_cast_FLOAT8E4M3FN_to_FLOAT", "test_cast_BFLOAT16_to_FLOAT",
    "test_cast_FLOAT_to_INT4", "test_attention_3d_softcap_expanded", "test_averagepool_2d_dilations",
    "test_averagepool_3d_dilations_small", "test_if_opt", "test_identity_opt", "test_optional_get_element_sequence",
    "test_split_to_sequence_2", "test_sequence_insert_at_back", "test_add_bcast", "test_equal_string",
    "test_attention_3d_causal_expanded", "test_attention_4d_diff_heads_mask4d_padded_kv", "test_gru_batchwise",
)  # fmt: skip


def _sample() -> list[str]:
    root = backend_node_data.node_models_root()
    if root is None:
        return []
    names = [d.name for d in backend_node_data.model_dirs(root)]
    picked = random.Random(SEED).sample(names, min(SAMPLED, len(names)))
    return sorted(set(picked) | {n for n in KNOWN if n in names})


SAMPLE = _sample()


@pytest.fixture(scope="module")
def node_root() -> Path:
    root = backend_node_data.node_models_root(download=False)
    if root is None:
        pytest.skip(backend_node_data.LAST_FAILURE or "no backend node models")
    return root


def _outcome(argv: list[str], capfd: pytest.CaptureFixture) -> int:
    capfd.readouterr()
    rc = main(argv)
    err = capfd.readouterr().err  # at the file-descriptor level: ORT's native log lines count too
    assert rc in (0, 2), f"onnxq {argv[0]} exited {rc}: {err[-1500:]}"
    if rc == 2:
        lines = err.splitlines()
        assert len(lines) == 2 and lines[0].startswith("error:") and lines[1].startswith("hint:"), err[-1500:]
        assert "onnxq bug" not in err, err
    return rc


def _outputs(model: bytes | str, feeds: dict[str, np.ndarray]) -> list[tuple[tuple[int, ...], str]]:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return [(np.shape(o), str(np.asarray(o).dtype)) for o in session.run(None, feeds)]


@pytest.mark.skipif(not SAMPLE, reason=backend_node_data.LAST_FAILURE or "no backend node models")
@pytest.mark.parametrize("name", SAMPLE)
def test_backend_model_ends_in_success_or_one_clean_error(name, node_root, tmp_path, capfd, monkeypatch):
    monkeypatch.delenv("ONNXQ_DEBUG", raising=False)
    folder = node_root / name
    model, out = str(folder / "model.onnx"), str(tmp_path / "q.onnx")
    _outcome(["inspect", model], capfd)
    quantized = _outcome(["quantize", model, "-o", out, "--calib", str(folder), "--no-progress"], capfd) == 0
    _outcome(["eval", model, "--data", str(folder)], capfd)
    if quantized:
        float_model = onnx.load(model)
        feeds = next(open_dataset(str(folder), float_model).batches())
        lower_ir_version_for_ort(float_model)
        assert _outputs(out, feeds) == _outputs(float_model.SerializeToString(), feeds)
