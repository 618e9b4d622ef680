"""The sweep spec parser and the CLI's refusals: every mistake is a ConfigError that names the spec and the key,
before any model is loaded or any executor (or Ray) starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SAMPLE_MODELS
from onnxq.cli import main
from onnxq.errors import ConfigError
from onnxq.sweep.spec import load_spec, spec_from_mapping

MLP = str(SAMPLE_MODELS / "mlp_digits.onnx")
CALIB = str(SAMPLE_MODELS / "calib.npz")
TEST = str(SAMPLE_MODELS / "test.npz")


def _spec(**changes) -> dict:
    base = {"models": [MLP], "calib": CALIB, "data": TEST, "recipes": {"minmax": {}}}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def test_a_glob_expands_to_named_models_with_the_top_level_data():
    spec = spec_from_mapping(_spec(models=["*_digits.onnx"]), base=SAMPLE_MODELS)
    assert [m.name for m in spec.models] == sorted(p.stem for p in Path(CALIB).parent.glob("*_digits.onnx"))
    assert len(spec.models) >= 4
    assert all(m.calib == Path(CALIB) and m.data == Path(TEST) for m in spec.models)
    assert spec.eps == ("cpu",) and spec.batches == (None,) and spec.metrics == ("accuracy", "fidelity", "latency")


def test_a_model_file_called_model_onnx_takes_its_folders_name(tmp_path):
    folder = tmp_path / "squeezenet1.1"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(Path(MLP).read_bytes())
    spec = spec_from_mapping(_spec(models=[{"path": "squeezenet1.1/model.onnx"}]), base=tmp_path)
    assert spec.models[0].name == "squeezenet1.1"


def test_recipes_are_parsed_by_the_quantize_recipe_with_defaults_filled_in(tmp_path):
    (tmp_path / "mine.json").write_text(json.dumps({"method": "entropy"}))
    spec = spec_from_mapping(_spec(recipes={"pt": {"per-channel": False}, "mine": "mine.json"}), base=tmp_path)
    pt, mine = spec.recipes
    assert pt.options == {"per-channel": False} and pt.canonical["per_channel"] is False
    assert pt.canonical["activation_type"] == "uint8"  # the ort target's default, filled in for the cache key
    assert mine.canonical["method"] == "entropy"


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"modles": [MLP]}, r"spec: unknown key 'modles'"),
        ({"models": []}, r"spec: models: required"),
        ({"models": ["nothing_*.onnx"]}, r"models\[0\]\.path: 'nothing_\*\.onnx' matches no file"),
        ({"models": [{"path": MLP, "calib": "missing.npz"}]}, r"models\[0\]\.calib: .*missing\.npz does not exist"),
        ({"models": [{"path": MLP, "nmae": "x"}]}, r"models\[0\]: unknown option 'nmae'"),
        ({"models": ["*_digits.onnx"], "calib": None, "data": None}, None),  # filled below: no calib
        ({"recipes": {"bad": {"methd": "entropy"}}}, r"recipes\.bad: unknown option 'methd'"),
        ({"recipes": {"bad": {"method": "median"}}}, r"median"),
        ({"recipes": {"float": {}}}, r"recipes\.float: .*other than 'float'"),
        ({"recipes": {"a": {}, "b": {"per_channel": True}}}, r"recipes\.b: the same recipe as recipes\.a"),
        ({"eps": ["gpu"]}, r"eps\[0\]: unknown execution provider 'gpu'"),
        ({"batches": [0]}, r"batches: batch sizes are positive integers"),
        ({"metrics": ["speed"]}, r"metrics: unknown metric 'speed'"),
        ({"bench": {"runz": 3}}, r"bench: unknown option 'runz'"),
        ({"target": {"min_sqnr_db": 30}, "metrics": ["latency"]}, r"target\.min_sqnr_db needs the fidelity metric"),
        ({"target": {"optimize": "speed"}}, r"target: optimize must be one of"),
        ({"data": None}, r"models\[0\] \(mlp_digits\): no data"),
        ({"version": 2}, r"version: this onnxq reads sweep specs of version 1"),
    ],
)
def test_each_mistake_is_a_config_error_naming_the_key(changes, match):
    if match is None:
        changes, match = {"calib": None}, r"models\[0\] \(mlp_digits\): no calib, which recipe 'minmax' needs"
    with pytest.raises(ConfigError, match=match) as info:
        spec_from_mapping(_spec(**changes), base=SAMPLE_MODELS)
    assert info.value.message.startswith("spec: ")


def test_two_models_with_one_name_are_refused_with_a_hint(tmp_path):
    with pytest.raises(ConfigError, match="two models are named 'mlp_digits'") as info:
        spec_from_mapping(_spec(models=[MLP, {"path": MLP}]))
    assert "name" in info.value.hint


def test_a_dynamic_recipe_needs_no_calibration_data():
    spec = spec_from_mapping(_spec(calib=None, recipes={"dyn": {"dynamic": True}}))
    assert spec.models[0].calib is None and spec.recipes[0].dynamic


def test_a_yaml_spec_resolves_paths_against_its_own_folder(tmp_path):
    pytest.importorskip("yaml")
    (tmp_path / "spec.yaml").write_text(
        f"models:\n  - path: {MLP}\ncalib: {CALIB}\ndata: {TEST}\nrecipes:\n  minmax: {{}}\n  pt: pt.json\n"
        "eps: [cpu]\nbatches: [1, 4]\n"
    )
    (tmp_path / "pt.json").write_text('{"per_channel": false}')
    spec = load_spec(tmp_path / "spec.yaml")
    assert [r.name for r in spec.recipes] == ["minmax", "pt"] and spec.batches == (1, 4)
    assert spec.source.endswith("spec.yaml")


def test_the_cli_refuses_a_bad_spec_with_error_and_hint_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "spec.json"
    bad.write_text(json.dumps(_spec(recipes={"r": {"iteratons": 3}})))
    assert main(["sweep", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: ") and "recipes.r: unknown option 'iteratons'" in err[0]
    assert err[1].startswith("hint: valid options:")
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_asking_for_ray_without_ray_is_an_error_with_the_install_hint(tmp_path, capsys, monkeypatch):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(_spec()))
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out"), "--ray"]) == 2
    err = capsys.readouterr().err
    assert "Ray is not installed" in err and "hint: pip install 'onnxq[sweep]'" in err


def test_help_and_the_sweep_modules_do_not_import_ray():
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from onnxq.cli import main\n"
        "import onnxq.sweep, onnxq.cli.sweep\n"
        "assert main(['--help']) == 0 and main(['sweep', '--help']) == 0\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "sweep" in out and "--address" in out
