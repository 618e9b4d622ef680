"""Targets and execution providers are tables: the recipe, the QDQ pass, the CLI and sessions read them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import SAMPLE_MODELS, SHARED_MODELS
from onnxq.cli import main
from onnxq.errors import ConfigError, ProviderError
from onnxq.passes.placement import POLICIES
from onnxq.quantize.recipe import QuantizeRecipe
from onnxq.quantize.targets import TARGETS, default_weight_type
from onnxq.runtime import eps as eps_module
from onnxq.runtime.cpu_int8 import u8s8_saturates
from onnxq.runtime.eps import EP_NAMES, EPS, ExecutionProvider, provider_chain
from onnxq.runtime.session import SessionSpec, check_available, normalize_ep


def _zero_points(path) -> list[tuple[str, np.ndarray]]:
    model = onnx.load(path)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return [(n.op_type, inits[n.input[2]]) for n in model.graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]  # fmt: skip


def _tensorrt_target_alone_gives_symmetric_int8(model, calib, tmp_path):
    out = tmp_path / "trt.onnx"
    assert main(["quantize", str(model), "-o", str(out), "--calib", str(calib), "--target", "tensorrt"]) == 0
    zps = _zero_points(out)
    activations = [zp for op, zp in zps if op == "QuantizeLinear"]
    assert activations and all(zp.dtype == np.int8 for zp in activations)
    assert all(not zp.any() for _, zp in zps)  # every zero point is 0: weights, activations and biases
    assert {zp.dtype for _, zp in zps} <= {np.dtype(np.int8), np.dtype(np.int32)}


def test_tensorrt_target_alone_gives_symmetric_int8_on_a_sample_model(tmp_path):
    _tensorrt_target_alone_gives_symmetric_int8(SAMPLE_MODELS / "resnet_digits.onnx", SAMPLE_MODELS / "calib.npz",
                                                tmp_path)  # fmt: skip


def test_tensorrt_target_alone_gives_symmetric_int8_on_squeezenet(tmp_path):
    model = SHARED_MODELS / "squeezenet1.1" / "model.onnx"
    if not model.exists():
        pytest.skip("../shared/models is absent")
    _tensorrt_target_alone_gives_symmetric_int8(model, model.parent / "real_inputs" / "inputs.npy", tmp_path)


@pytest.mark.parametrize(
    "flags, named",
    [
        ({"activation_type": "uint8"}, "--activation-type uint8 contradicts --target tensorrt"),
        ({"weight_type": "int4"}, "--weight-type int4 contradicts --target tensorrt"),
        ({"symmetric_activations": False}, "--asymmetric-activations contradicts --target tensorrt"),
        ({"symmetric_weights": False}, "--asymmetric-weights contradicts --target tensorrt"),
    ],
)
def test_a_flag_that_contradicts_the_target_is_an_error_naming_it(flags, named):
    with pytest.raises(ConfigError, match=named):
        QuantizeRecipe(target="tensorrt", **flags)


def test_open_options_take_the_target_defaults():
    for name, target in TARGETS.items():
        r = QuantizeRecipe(target=name).resolved()
        assert (r.activation_type, r.weight_type, r.symmetric_activations) == (
            target.activation_type, default_weight_type(target, target.activation_type),
            target.symmetric_activations)  # fmt: skip
        # the one default that depends on the machine: ORT's, where its CPU kernels saturate uint8 x int8
        assert r.weight_type == ("uint8" if name == "ort" and u8s8_saturates() else target.weight_type)
        assert r.qdq().act_symmetric == target.symmetric_activations


def test_every_target_has_a_placement_policy_and_the_cli_offers_every_target(capsys):
    assert set(TARGETS) == set(POLICIES)
    assert main(["policy", "--target", "tensorrt"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in TARGETS) and "zero point" in out


def test_ep_table_drives_the_provider_chain():
    assert [p for p, _ in provider_chain(SessionSpec(ep="cpu"))] == ["CPUExecutionProvider"]
    assert [p for p, _ in provider_chain(SessionSpec(ep="cuda", device_id=1))] == [
        "CUDAExecutionProvider", "CPUExecutionProvider"]  # fmt: skip
    chain = provider_chain(SessionSpec(ep="tensorrt", trt_fp16=True, trt_engine_cache_dir="/tmp/cache"))
    assert [p for p, _ in chain] == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    trt = chain[0][1]
    assert trt["trt_fp16_enable"] == "True" and trt["trt_int8_enable"] == "False"
    assert trt["trt_engine_cache_enable"] == "True" and trt["trt_engine_cache_path"] == "/tmp/cache"
    assert chain[1][1] == {"device_id": "0"}


def test_an_ep_row_is_all_a_new_provider_needs(monkeypatch):
    fake = ExecutionProvider(name="fake", provider="FakeExecutionProvider", then=("cpu",),
                             install_hint="pip install fake-ep", gpu=False)  # fmt: skip
    monkeypatch.setitem(EPS, "fake", fake)
    monkeypatch.setitem(eps_module.EP_PROVIDERS, "fake", fake.provider)
    monkeypatch.setitem(eps_module.INSTALL_HINTS, "fake", fake.install_hint)
    assert normalize_ep("FakeExecutionProvider") == "fake"
    with pytest.raises(ProviderError) as info:
        check_available("fake", ["CPUExecutionProvider"])
    assert "FakeExecutionProvider" in info.value.message and info.value.hint == "pip install fake-ep"
    assert [p for p, _ in provider_chain(SessionSpec(ep="fake"))] == ["FakeExecutionProvider", "CPUExecutionProvider"]


def test_cli_ep_choices_come_from_the_table(capsys):
    for command in ("eval", "bench", "run"):
        with pytest.raises(SystemExit):
            from onnxq.cli import cli

            cli.main(args=[command, "--help"], prog_name="onnxq")
        text = capsys.readouterr().out
        assert all(name in text for name in EP_NAMES), command
