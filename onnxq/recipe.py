"""The quantization recipe: every option of ``onnxq quantize`` as one typed, frozen config.

A recipe file (JSON, or YAML when PyYAML is installed) holds the same keys as the CLI flags, with
dashes or underscores. Unknown keys are refused, so a misspelled option never passes silently.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from onnxq.errors import ConfigError

METHODS = ("minmax", "percentile", "entropy", "mse")
KNOWN_PASSES = ("cle", "bias-correction", "adaround")


@dataclass(frozen=True)
class QuantizeRecipe:
    target: str = "ort"
    activation_type: str = "uint8"
    weight_type: str = "int8"
    per_channel: bool = True
    symmetric_activations: bool | None = None
    symmetric_weights: bool = True
    method: str = "minmax"
    percentile: float = 99.99
    calib_samples: int | None = None
    batch_size: int | None = None
    exclude_nodes: tuple[str, ...] = ()
    exclude_op_types: tuple[str, ...] = ()
    avoid_float_boundaries: bool = False  # leave float the Conv/GlobalAveragePool nodes next to a float node
    passes: tuple[str, ...] = field(default_factory=tuple)
    opset: int | None = None
    # options of the extra passes, checked by each pass's own config (unknown keys are refused there)
    cle: dict[str, Any] = field(default_factory=dict)
    bias_correction: dict[str, Any] = field(default_factory=dict)
    adaround: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(
                f"unknown calibration method {self.method!r}", hint=f"choose one of {', '.join(METHODS)}"
            )
        if not 0 < self.percentile <= 100:
            raise ConfigError(f"percentile must be in (0, 100], got {self.percentile}")
        if self.calib_samples is not None and self.calib_samples < 1:
            raise ConfigError(f"calib_samples must be at least 1, got {self.calib_samples}")
        unknown = [p for p in self.passes if p not in KNOWN_PASSES]
        if unknown:
            raise ConfigError(f"unknown pass(es) {unknown}", hint=f"known passes: {', '.join(KNOWN_PASSES)}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "recipe") -> QuantizeRecipe:
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: a recipe must be a mapping of option names to values")
        names = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            name = str(key).replace("-", "_")
            if name not in names:
                raise ConfigError(
                    f"{where}: unknown option {key!r}", hint=f"valid options: {', '.join(sorted(names))}"
                )
            kwargs[name] = _coerce(name, value, where)
        return cls(**kwargs)

    @classmethod
    def from_file(cls, path: str | Path) -> QuantizeRecipe:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe file {path} does not exist")
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as exc:
                raise ConfigError(
                    f"{path} is YAML, and PyYAML is not installed",
                    hint="pip install 'onnxq[yaml]', or write the recipe as JSON",
                ) from exc
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno}") from exc
        return cls.from_dict(data or {}, where=str(path))

    def replace(self, **changes: Any) -> QuantizeRecipe:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)
        }

    def __hash__(self) -> int:  # dict fields make the generated hash fail; recipes are compared, not hashed
        return hash(json.dumps(self.to_dict(), sort_keys=True, default=str))


def _coerce(name: str, value: Any, where: str) -> Any:
    if name in ("cle", "bias_correction", "adaround"):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {name} must be a mapping of that pass's options")
        return {str(k).replace("-", "_"): v for k, v in value.items()}
    tuple_fields = ("exclude_nodes", "exclude_op_types", "passes")
    if name in tuple_fields:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: {name} must be a list of strings")
        return tuple(value)
    bool_fields = ("per_channel", "symmetric_weights", "avoid_float_boundaries")
    if name in bool_fields and not isinstance(value, bool):
        raise ConfigError(f"{where}: {name} must be true or false, got {value!r}")
    if name == "symmetric_activations" and value is not None and not isinstance(value, bool):
        raise ConfigError(f"{where}: {name} must be true, false or null, got {value!r}")
    if (
        name in ("calib_samples", "batch_size", "opset")
        and value is not None
        and (not isinstance(value, int) or isinstance(value, bool))
    ):
        raise ConfigError(f"{where}: {name} must be an integer, got {value!r}")
    if name == "percentile" and (not isinstance(value, (int, float)) or isinstance(value, bool)):
        raise ConfigError(f"{where}: percentile must be a number, got {value!r}")
    if name in ("target", "activation_type", "weight_type", "method") and not isinstance(value, str):
        raise ConfigError(f"{where}: {name} must be a string, got {value!r}")
    return value
