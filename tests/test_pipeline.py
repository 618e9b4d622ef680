"""The pass contract over every registered pass, and the driver that enforces it.

Every pass in the registry is run on a real sample model inside the real pipeline (all optional passes on,
AdaRound shortened): its input must be left untouched, it must return a PassResult, the driver must log it,
and its config must survive the recipe's round trip. The driver's own checks (mutation, return type, order,
naming the failing pass and the ones before it) are tested with small deliberately broken passes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import SAMPLE_MODELS
from onnxq.errors import ConfigError, DataError, PassError
from onnxq.model import load_model
from onnxq.quantize.driver import new_context, pipeline_steps
from onnxq.quantize.options import config_to_dict, parse_config
from onnxq.quantize.pipeline import (
    NoOptions,
    PassResult,
    PassSpec,
    Phase,
    QuantizeContext,
    Step,
    check_order,
    model_fingerprint,
    run_pipeline,
)
from onnxq.quantize.recipe import ALGORITHMS, QuantizeRecipe
from onnxq.quantize.registry import all_passes, optional_passes, register_pass, unregister_pass

CALIB = SAMPLE_MODELS / "calib.npz"
ALL_OPTIONAL = QuantizeRecipe(  # every optional pass of static quantization (gptq/awq are --weight-only's)
    passes=tuple(p for p in optional_passes() if p not in ALGORITHMS),
    pass_options={"adaround": {"iterations": 20, "samples_per_iteration": 64}},
)


@pytest.fixture(scope="module")
def full_pipeline() -> tuple[onnx.ModelProto, list[Step], QuantizeContext]:
    """The mobilenet sample (BatchNorm, ReLU6, depthwise: every pass has work) with every optional pass."""
    path = SAMPLE_MODELS / "mobilenetv2_digits.onnx"
    if not path.exists():
        pytest.skip("sample models not built")
    model = load_model(path)
    ctx = new_context(model, CALIB, ALL_OPTIONAL.replace(calib_samples=64))
    return model, pipeline_steps(model, ALL_OPTIONAL), ctx


def test_every_registered_pass_is_in_the_static_the_dynamic_or_the_weight_only_pipeline():
    static = {s.spec.name for s in pipeline_steps(onnx.ModelProto(), ALL_OPTIONAL)}
    dynamic = {s.spec.name for s in pipeline_steps(onnx.ModelProto(), QuantizeRecipe(dynamic=True, passes=("cle",)))}
    weight_only = {s.spec.name for a in ALGORITHMS
                   for s in pipeline_steps(onnx.ModelProto(), QuantizeRecipe(weight_only="int4", algorithm=a))}
    assert weight_only == {"weight-only", "gptq", "awq"}  # no prepare: the graph is kept as it is
    assert static | dynamic | weight_only == set(all_passes())
    assert {"prepare", "cle", "plan", "calibrate", "adaround", "bias-correction", "qdq"} <= static
    assert dynamic == {"prepare", "cle", "dynamic"}


def test_the_dynamic_pipeline_keeps_the_contract_and_refuses_passes_that_need_ranges():
    path = SAMPLE_MODELS / "transformer_digits.onnx"
    model = load_model(path)
    recipe = QuantizeRecipe(dynamic=True)
    ctx = new_context(model, None, recipe)
    before = model_fingerprint(model)
    out = run_pipeline(model, pipeline_steps(model, recipe), ctx)
    assert model_fingerprint(model) == before and [e["pass"] for e in ctx.log] == ["prepare", "dynamic"]
    assert ctx.log[1]["matmuls_quantized"] > 0 and any(n.op_type == "MatMulInteger" for n in out.graph.node)
    bad = QuantizeRecipe(dynamic=True, passes=("bias-correction",))
    with pytest.raises(PassError, match="bias-correction needs plan, ranges"):
        run_pipeline(model, pipeline_steps(model, bad), new_context(model, None, bad))


def test_every_pass_keeps_its_input_returns_a_result_and_is_logged(full_pipeline):
    model, steps, ctx = full_pipeline
    seen = []
    for i, step in enumerate(steps):
        if "ranges" in step.spec.provides:  # what the driver does before calibration
            for later in steps[i + 1 :]:
                if later.spec.before_calibration:
                    later.spec.before_calibration(model, ctx, later.config)
        before = model_fingerprint(model)
        result = step.spec.run(model, ctx, step.config)
        assert isinstance(result, PassResult), step.spec.name
        assert model_fingerprint(model) == before, f"{step.spec.name} mutated its input"
        assert isinstance(result.model, onnx.ModelProto) and isinstance(result.details, dict)
        seen.append(step.spec.name)
        model = result.model
    assert seen == [s.spec.name for s in steps]
    onnx.checker.check_model(model, full_check=True)  # the chain ends in a valid QDQ model


def test_the_driver_logs_and_times_every_pass(tmp_path):
    from onnxq.quantize.driver import quantize

    summary = quantize(SAMPLE_MODELS / "resnet_digits.onnx", tmp_path / "q.onnx", CALIB, ALL_OPTIONAL)
    logged = [e["pass"] for e in summary.passes]
    assert logged == [name for name in all_passes() if name not in ("dynamic", "weight-only", *ALGORITHMS)]
    assert all(e["seconds"] >= 0 and isinstance(e["modified"], bool) for e in summary.passes)
    for name in logged:
        assert all_passes()[name].timing_key in summary.timings
    assert summary.timings["total_s"] >= sum(summary.timings[all_passes()[n].timing_key] for n in logged)


@pytest.mark.parametrize("name", sorted(all_passes()))
def test_each_config_round_trips(name):
    spec = all_passes()[name]
    default = spec.config()
    assert parse_config(spec.config, config_to_dict(default), where=name) == default
    if spec.optional:
        recipe = QuantizeRecipe(passes=(name,), weight_only="int4" if name in ALGORITHMS else None)
        again = QuantizeRecipe.from_dict(recipe.to_dict())
        assert again == recipe and again.pass_options[name] == default


def test_recipe_refuses_a_misspelled_pass_option_listing_the_valid_keys():
    with pytest.raises(ConfigError) as info:
        QuantizeRecipe.from_dict({"passes": ["adaround"], "adaround": {"iteratons": 5}})
    assert "iteratons" in info.value.message and "iterations" in info.value.hint and "reg_lambda" in info.value.hint


def test_recipe_refuses_options_of_a_pass_that_is_not_chosen():
    with pytest.raises(ConfigError, match="adaround, which is not among the passes"):
        QuantizeRecipe.from_dict({"adaround": {"iterations": 5}})


def test_recipe_refuses_a_wrongly_typed_option():
    with pytest.raises(ConfigError, match="cle: iterations must be an integer"):
        QuantizeRecipe.from_dict({"passes": "cle", "cle": {"iterations": "10"}})


# --- the driver's checks, with deliberately broken passes ------------------------------------------


def _spec(name, run, phase=Phase.FLOAT, **kw) -> PassSpec:
    return PassSpec(name=name, phase=phase, config=NoOptions, run=run, summary="test", **kw)


def _tiny():
    from conftest import make_tiny_model

    return make_tiny_model()


def test_the_driver_refuses_a_pass_that_mutates_its_input():
    def mutate(model, ctx, cfg):
        model.graph.node[0].name = "changed"
        return PassResult(model, True)

    with pytest.raises(PassError, match="mutate modified its input model") as info:
        run_pipeline(_tiny(), [Step(_spec("mutate", mutate), NoOptions())], QuantizeContext())
    assert "pass developer" in info.value.hint


def test_the_driver_refuses_a_result_that_is_not_a_pass_result():
    with pytest.raises(PassError, match="returned tuple, not a PassResult"):
        run_pipeline(_tiny(), [Step(_spec("bad", lambda m, c, f: (m, True)), NoOptions())], QuantizeContext())


def test_the_driver_names_the_failing_pass_and_the_passes_before_it():
    ok = _spec("first", lambda m, c, f: PassResult(m, False))

    def fail(model, ctx, cfg):
        raise DataError("the data is bad", hint="fix it")

    def crash(model, ctx, cfg):
        raise ZeroDivisionError("boom")

    with pytest.raises(DataError) as info:
        run_pipeline(_tiny(), [Step(ok, NoOptions()), Step(_spec("second", fail), NoOptions())], QuantizeContext())
    assert info.value.message == "the data is bad" and info.value.hint == "fix it [in pass second, after first]"
    with pytest.raises(PassError) as info:
        run_pipeline(_tiny(), [Step(ok, NoOptions()), Step(_spec("third", crash), NoOptions())], QuantizeContext())
    assert "pass third failed: ZeroDivisionError: boom" in info.value.message
    assert "after first" in info.value.hint and "onnxq bug" in info.value.hint


def test_the_driver_refuses_an_impossible_order():
    noop = lambda m, c, f: PassResult(m, False)  # noqa: E731
    needs = _spec("needs-ranges", noop, Phase.WEIGHT, needs=("ranges",))
    gives = _spec("gives-ranges", noop, Phase.CALIBRATE, provides=("ranges",))
    with pytest.raises(PassError, match="needs-ranges needs ranges, which no pass before it provides"):
        check_order([Step(needs, NoOptions()), Step(gives, NoOptions())])
    with pytest.raises(PassError, match="cannot run after"):
        check_order([Step(gives, NoOptions()), Step(_spec("late-float", noop), NoOptions())])
    check_order([Step(gives, NoOptions()), Step(needs, NoOptions())])  # the right order passes


def test_registered_passes_are_listed_and_reachable_from_a_recipe():
    spec = _spec("test-noop", lambda m, c, f: PassResult(m, False, {"ran": True}))
    register_pass(spec)
    try:
        assert "test-noop" in optional_passes()
        with pytest.raises(ConfigError, match="already registered"):
            register_pass(spec)
        recipe = QuantizeRecipe.from_dict({"passes": ["test-noop"], "test_noop": {}})
        assert recipe.pass_options["test-noop"] == NoOptions()
    finally:
        unregister_pass("test-noop")
    with pytest.raises(ConfigError, match="unknown pass 'test-noop'"):
        QuantizeRecipe(passes=("test-noop",))


def test_pass_phases_are_the_documented_ones():
    phases = {name: spec.phase for name, spec in all_passes().items()}
    assert phases["prepare"] == phases["cle"] == Phase.FLOAT
    assert phases["plan"] == phases["calibrate"] == Phase.CALIBRATE
    assert phases["adaround"] == phases["bias-correction"] == Phase.WEIGHT
    assert phases["qdq"] == Phase.FORMAT
    names = list(all_passes())
    assert names.index("adaround") < names.index("bias-correction")  # BC corrects the rounded weights


def test_bias_correction_on_float_inputs_gets_its_means_from_the_calibration_runs(tmp_path):
    from onnxq.quantize.driver import quantize

    recipe = QuantizeRecipe(per_channel=False, passes=("bias-correction",),
                            pass_options={"bias-correction": {"inputs": "float"}})  # fmt: skip
    summary = quantize(SAMPLE_MODELS / "resnet_digits.onnx", tmp_path / "q.onnx", CALIB, recipe)
    entry = next(e for e in summary.passes if e["pass"] == "bias-correction")
    assert entry["means_from"] == "calibration" and entry["layers_corrected"] > 0


def test_model_fingerprint_sees_a_weight_change():
    model = _tiny()
    before = model_fingerprint(model)
    arr = onnx.numpy_helper.to_array(model.graph.initializer[0]).copy()
    arr.flat[0] += np.float32(1e-3)
    model.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(arr, model.graph.initializer[0].name))
    assert model_fingerprint(model) != before


def test_passes_cli_lists_every_pass_with_phase_and_options(capsys):
    import json

    from onnxq.cli import main

    assert main(["passes", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    listed = {p["name"]: p for p in doc["passes"]}
    assert list(listed) == list(all_passes())
    phases = {"prepare": "float", "cle": "float", "bias-correction": "weight", "adaround": "weight", "qdq": "format"}
    assert {n: listed[n]["phase"] for n in phases} == phases
    assert listed["adaround"]["options"]["iterations"] == {"type": "int", "default": 1000}
    assert listed["bias-correction"]["recipe_key"] == "bias_correction"
    assert main(["passes"]) == 0
    assert "adaround  [weight]" in capsys.readouterr().out


def test_misspelled_option_from_the_cli_fails_before_the_model_is_read(tmp_path, capsys, monkeypatch):
    from onnxq.cli import main

    def no_calibration(*a, **k):
        raise AssertionError("calibration ran")

    monkeypatch.setattr("onnxq.quantize.calibrate.collect_ranges", no_calibration)
    recipe = tmp_path / "r.json"
    recipe.write_text('{"passes": ["adaround"], "adaround": {"iteratons": 5}}')
    model = Path(tmp_path / "missing.onnx")  # not even read: the recipe fails first
    code = main(
        ["quantize", str(model), "-o", str(tmp_path / "q.onnx"), "--calib", str(CALIB), "--recipe", str(recipe)]
    )
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and err[0].startswith("error:") and "iteratons" in err[0]
    assert err[1].startswith("hint: valid options:") and "iterations" in err[1]
