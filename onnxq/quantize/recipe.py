"""The quantization recipe: every option of ``onnxq quantize`` as one typed, frozen config.

A recipe file (JSON, or YAML when PyYAML is installed) holds the same keys as the CLI flags, with dashes or
underscores, and each chosen pass's options under its own key (``"cle": {...}``). Everything is parsed into
typed configs when the recipe is read, through :func:`onnxq.quantize.options.parse_config`: an unknown or
misspelled key, a value of the wrong type, or options of a pass that is not chosen are refused at once,
before any model is loaded. Options left open (``activation_type``, ``weight_type``, symmetric
activations) take the target's defaults (:mod:`onnxq.quantize.targets`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from onnxq.errors import ConfigError
from onnxq.quantize.calibration import METHODS, CalibrationConfig, PlanConfig
from onnxq.quantize.options import coerce, config_to_dict, field_types, parse_config
from onnxq.quantize.registry import get_pass, optional_passes, pass_by_option_key
from onnxq.quantize.targets import check_choices, check_format, default_weight_type, get_target

__all__ = ["METHODS", "QuantizeRecipe", "load_recipe_mapping"]

ALGORITHMS = ("rtn", "gptq", "awq")  # --weight-only's algorithms; gptq and awq are passes of their own
NODE_LISTS = ("exclude_nodes", "exclude_op_types", "include_nodes", "include_op_types")


@dataclass(frozen=True)
class QuantizeRecipe:
    target: str = "ort"
    activation_type: str | None = None  # None: the target's default
    weight_type: str | None = None
    per_channel: bool = True
    symmetric_activations: bool | None = None
    symmetric_weights: bool = True
    reduce_range: bool = False  # 8-bit weights on 7 bits: ORT's u8s8 kernels cannot saturate (CPUs without VNNI)
    method: str = "minmax"
    percentile: float = 99.99
    calib_samples: int | None = None
    batch_size: int | None = None
    exclude_nodes: tuple[str, ...] = ()
    exclude_op_types: tuple[str, ...] = ()
    include_nodes: tuple[str, ...] = ()  # non-empty (or include_op_types): quantize only these; exclusion wins
    include_op_types: tuple[str, ...] = ()
    avoid_float_boundaries: bool = False  # leave float the Conv/GlobalAveragePool nodes next to a float node
    dynamic: bool = False  # int8 weights, activations quantized at run time, no calibration data
    quantize_embeddings: bool = True  # Gather tables of 64K+ values as int8 rows (weight-only)
    weight_only: str | None = None  # int4/uint4/int8/uint8: block-wise weight-only MatMul weights (LLMs)
    block_size: int = 128  # --weight-only: weights per scale along the input dimension
    algorithm: str = "rtn"  # --weight-only: rtn, gptq or awq (the last two read --calib)
    weight_format: str = "matmulnbits"  # --weight-only: matmulnbits (ORT) or qdq (DequantizeLinear block_size)
    accuracy_level: int = 0  # --weight-only matmulnbits: the CPU kernel's compute type (0 unset ... 4 int8)
    passes: tuple[str, ...] = ()
    format: str = "qdq"  # qoperator: the qoperator pass runs after qdq (its --passes name selects it too)
    target_sqnr: float | None = None  # mixed precision: nodes left float until the outputs reach this SQNR (dB)
    preset: str = "auto"  # auto: the transformer preset for models with attention blocks; none; transformer
    target_data: str | None = None  # held-out inputs --target-sqnr is measured on (mixed_precision.data)
    opset: int | None = None
    load_ranges: str | None = None  # a range cache (--save-ranges) read instead of calibrating
    save_ranges: str | None = None  # where to write the calibrated ranges as a range cache
    # pass name -> its typed config; every chosen pass has one (its defaults unless the recipe gave options)
    pass_options: dict[str, Any] = field(default_factory=dict, compare=True)

    def __post_init__(self) -> None:
        target = get_target(self.target)
        check_choices(
            target,
            activation_type=self.activation_type or target.activation_type,
            weight_type=self.weights(),
            symmetric_activations=self.act_symmetric,
            symmetric_weights=self.symmetric_weights,
        )
        CalibrationConfig(self.method, self.percentile, self.batch_size)  # checks method, percentile, batch
        if self.reduce_range and (self.weight_only is not None or self.weights() not in ("int8", "uint8")):
            raise ConfigError("--reduce-range puts 8-bit W8A8 or --dynamic weights on 7 bits; these weights are "
                              f"{self.weight_only or self.weights()}", hint="drop --reduce-range")  # fmt: skip
        if self.dynamic:
            self._check_dynamic()
        if self.weight_only is not None:
            self._settle_weight_only()
        elif self.algorithm != "rtn" or any(p in ALGORITHMS for p in self.passes):
            raise ConfigError("--algorithm, gptq and awq quantize weights block-wise, for --weight-only",
                              hint="add --weight-only int4 (or uint4, int8, uint8)")  # fmt: skip
        if self.calib_samples is not None and self.calib_samples < 1:
            raise ConfigError(
                f"calib_samples must be at least 1, got {self.calib_samples}",
                hint="give --calib-samples 1 or more, or leave it out to use every sample",
            )
        for name in self.passes:
            get_pass(name)
        self._settle_format(target)
        self._settle_mixed(target)
        from onnxq.quantize.presets import CHOICES

        if self.preset not in CHOICES:
            raise ConfigError(f"unknown preset {self.preset!r}", hint=f"choose one of {', '.join(CHOICES)}")
        stray = [name for name in self.pass_options if name not in self.passes]
        if stray:
            raise ConfigError(
                f"options were given for {', '.join(stray)}, which is not among the passes",
                hint=f"add it to the passes (--passes {','.join([*self.passes, *stray])}), or drop its options",
            )
        options = {}
        for name in self.passes:  # a mapping (from Python) is parsed like a recipe's
            spec = get_pass(name)
            options[name] = parse_config(
                spec.config, self.pass_options.get(name), where=spec.option_key, aliases=spec.aliases
            )
        object.__setattr__(self, "pass_options", options)

    def _settle_format(self, target: Any) -> None:
        """``format`` and the qoperator pass say one thing: either one selects the other."""
        fmt = "qoperator" if "qoperator" in self.passes else self.format
        check_format(target, fmt)
        if fmt == "qoperator" and self.dynamic:
            raise ConfigError("--format qoperator contradicts --dynamic, whose output is integer ops already "
                              "(DynamicQuantizeLinear, MatMulInteger)", hint="drop --format qoperator")  # fmt: skip
        object.__setattr__(self, "format", fmt)
        if fmt == "qoperator" and "qoperator" not in self.passes:
            object.__setattr__(self, "passes", (*self.passes, "qoperator"))

    def _settle_mixed(self, target: Any) -> None:
        """``target_sqnr`` selects the mixed-precision pass and is its ``target_sqnr_db``; raising to int16 needs
        8-bit activations, and a target that takes their 16-bit type."""
        if self.target_sqnr is None and "mixed-precision" not in self.passes:
            if self.target_data is not None:
                raise ConfigError("--target-data is the data --target-sqnr is measured on, and no --target-sqnr "
                                  "was given", hint="add --target-sqnr DB, or drop --target-data")  # fmt: skip
            return
        if self.dynamic:
            raise ConfigError("mixed precision (--target-sqnr) contradicts --dynamic: it measures calibrated "
                              "models", hint="drop one of them")  # fmt: skip
        given = self.pass_options.get("mixed-precision")
        given = dict(given) if isinstance(given, dict) else config_to_dict(given) if given is not None else {}
        if given.get("raise_to") == "int16":
            self._check_int16(target)
        if self.target_sqnr is None:
            return
        if given.get("target_sqnr_db", self.target_sqnr) != self.target_sqnr:
            raise ConfigError(f"--target-sqnr {self.target_sqnr:g} contradicts mixed-precision's target_sqnr_db "
                              f"{given['target_sqnr_db']:g}", hint="give the target once")  # fmt: skip
        data = {"data": self.target_data} if self.target_data is not None else {}
        object.__setattr__(self, "pass_options", {**self.pass_options,
                           "mixed-precision": {**given, "target_sqnr_db": self.target_sqnr, **data}})  # fmt: skip
        if "mixed-precision" not in self.passes:
            object.__setattr__(self, "passes", (*self.passes, "mixed-precision"))

    def _check_int16(self, target: Any) -> None:
        from onnxq.passes.qdq import WIDE_TYPES

        acts = self.activation_type or target.activation_type
        if acts not in WIDE_TYPES:
            raise ConfigError(f"mixed precision raise_to int16 raises 8-bit activations to 16 bits; these are "
                              f"{acts} already", hint="use raise_to float, or 8-bit activations")  # fmt: skip
        check_choices(target, activation_type=WIDE_TYPES[acts], weight_type=self.weights(),
                      symmetric_activations=self.act_symmetric, symmetric_weights=self.symmetric_weights)  # fmt: skip

    def _check_dynamic(self) -> None:
        """Dynamic quantization has one form here: uint8 activations at run time, symmetric 8-bit weights
        (int8, or uint8 with zero point 128 where this machine's kernels saturate uint8 x int8), ORT."""
        wrong = [(flag, value) for flag, value, ok in (
            ("--target", self.target, ("ort",)), ("--activation-type", self.activation_type, ("uint8",)),
            ("--weight-type", self.weight_type, ("int8", "uint8"))) if value not in (None, *ok)]  # fmt: skip
        if self.symmetric_activations or not self.symmetric_weights:
            wrong.append(("--symmetric-activations/--asymmetric-weights", "given"))
        if wrong:
            flag, value = wrong[0]
            raise ConfigError(f"{flag} {value} contradicts --dynamic (uint8 activations quantized at run time, "
                              "symmetric 8-bit weights, ONNX Runtime's integer kernels)",
                              hint=f"drop {flag}, or quantize statically with calibration data")  # fmt: skip

    def _settle_weight_only(self) -> None:
        """Weight-only quantization: no activation options, no static-only passes; --algorithm selects its pass."""
        self.weight_only_config()  # checks the type, block size, format and accuracy level
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"unknown --algorithm {self.algorithm!r}", hint=f"choose {', '.join(ALGORITHMS)}")
        clash = [flag for flag, on in (("--dynamic", self.dynamic), ("--target-sqnr", self.target_sqnr is not None),
                                       ("--format qoperator", self.format == "qoperator"),
                                       ("--load-ranges/--save-ranges", self.load_ranges or self.save_ranges))
                 if on]  # fmt: skip
        if clash:
            raise ConfigError(f"{clash[0]} contradicts --weight-only {self.weight_only} (weights only; activations "
                              "stay float and are not calibrated)", hint=f"drop {clash[0]}")  # fmt: skip
        static_only = [p for p in self.passes if p not in ALGORITHMS and get_pass(p).phase.name != "FLOAT"]
        if static_only:
            raise ConfigError(f"pass {static_only[0]} works on statically quantized models, not with --weight-only",
                              hint="drop it from --passes")  # fmt: skip
        chosen = [p for p in self.passes if p in ("gptq", "awq")]
        if len(chosen) > 1 or (chosen and self.algorithm not in ("rtn", chosen[0])):
            raise ConfigError(f"--algorithm {self.algorithm} and --passes {','.join(chosen)} name different weight "
                              "algorithms", hint="give one of them")  # fmt: skip
        if chosen:
            object.__setattr__(self, "algorithm", chosen[0])
        elif self.algorithm != "rtn":
            object.__setattr__(self, "passes", (*self.passes, self.algorithm))

    def weight_only_config(self) -> Any:
        from onnxq.passes.weight_only import WeightOnlyConfig

        return WeightOnlyConfig(weight_type=self.weight_only, block_size=self.block_size, format=self.weight_format,
                                accuracy_level=self.accuracy_level, embeddings=self.quantize_embeddings)  # fmt: skip

    def dynamic_config(self) -> Any:
        from onnxq.passes.dynamic import DynamicConfig

        return DynamicConfig(per_channel=self.per_channel, embeddings=self.quantize_embeddings,
                             weight_type=self.weights(), reduce_range=self.reduce_range)

    def weights(self) -> str:
        """The weight type: the recipe's, else its target's default for its activations (uint8 on ORT's CPU EP
        where this machine's kernels saturate uint8 x int8 products: :func:`default_weight_type`)."""
        target = get_target(self.target)
        acts = self.activation_type or target.activation_type
        return self.weight_type or default_weight_type(target, acts, reduce_range=self.reduce_range)

    @property
    def act_symmetric(self) -> bool:
        if self.symmetric_activations is None:
            return get_target(self.target).symmetric_activations
        return self.symmetric_activations

    def resolved(self) -> QuantizeRecipe:
        """The recipe with the target's defaults filled in (what the summary reports)."""
        target = get_target(self.target)
        return dataclasses.replace(
            self,
            activation_type=self.activation_type or target.activation_type,
            weight_type=self.weights(),
            symmetric_activations=self.act_symmetric,
        )

    def calibration(self) -> CalibrationConfig:
        return CalibrationConfig(self.method, self.percentile, self.batch_size, self.load_ranges, self.save_ranges)

    def node_lists(self) -> dict[str, tuple[str, ...]]:
        """The include and exclude lists, by field name."""
        return {name: getattr(self, name) for name in NODE_LISTS}

    def calibration_needs_data(self) -> bool:
        """Whether this recipe needs calibration data: static quantization, unless the ranges come from a
        cache and no chosen pass reads the data itself (AdaRound, bias correction, CLE's absorption...)."""
        if self.dynamic:
            return False
        if self.weight_only is not None:
            return any("calib" in get_pass(name).needs for name in self.passes)
        return not self.load_ranges or any("calib" in get_pass(name).needs for name in self.passes)

    def plan(self) -> PlanConfig:
        return PlanConfig(avoid_float_boundaries=self.avoid_float_boundaries)

    def qdq(self) -> Any:
        """The QDQ pass's config."""
        from onnxq.passes.qdq import QDQConfig

        r = self.resolved()
        return QDQConfig(
            target=r.target,
            activation_type=r.activation_type,
            weight_type=r.weight_type,
            per_channel=r.per_channel,
            symmetric_activations=r.symmetric_activations,
            symmetric_weights=r.symmetric_weights,
            exclude_nodes=r.exclude_nodes,
            exclude_op_types=r.exclude_op_types,
            include_nodes=r.include_nodes,
            include_op_types=r.include_op_types,
            quantize_embeddings=r.quantize_embeddings,
            reduce_range=r.reduce_range,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "recipe") -> QuantizeRecipe:
        """A recipe from a mapping of option names (dashes or underscores) to values; ConfigError on any bad key."""
        if not isinstance(data, dict):
            raise ConfigError(
                f"{where}: a recipe must be a mapping of option names to values",
                hint='write it as {"method": "entropy", ...}; `onnxq quantize --help` lists the options',
            )
        types = {n: t for n, t in field_types(cls).items() if n != "pass_options"}
        kwargs: dict[str, Any] = {}
        raw_options: dict[str, Any] = {}
        for key, value in data.items():
            name = str(key).replace("-", "_")
            spec = pass_by_option_key(name)
            if spec is not None:
                raw_options[spec.name] = value
            elif name in types:
                kwargs[name] = coerce(value, types[name], f"{where}: {name}")
            else:
                keys = sorted([*types, *(s.option_key for s in optional_passes().values())])
                raise ConfigError(f"{where}: unknown option {key!r}", hint=f"valid options: {', '.join(keys)}")
        if kwargs.get("target_sqnr") is not None and isinstance(raw_options.get("mixed-precision"), dict):
            raw = raw_options["mixed-precision"]
            if raw.get("target_sqnr_db", kwargs["target_sqnr"]) != kwargs["target_sqnr"]:
                raise ConfigError(f"{where}: target_sqnr {kwargs['target_sqnr']} contradicts mixed_precision's "
                                  f"target_sqnr_db {raw['target_sqnr_db']}", hint="give the target once")  # fmt: skip
            raw_options["mixed-precision"] = {**raw, "target_sqnr_db": kwargs["target_sqnr"]}
        options = {
            name: parse_config(
                get_pass(name).config,
                value,
                where=f"{where}: {get_pass(name).option_key}",
                aliases=get_pass(name).aliases,
            )
            for name, value in raw_options.items()
        }
        return cls(**kwargs, pass_options=options)

    @classmethod
    def from_file(cls, path: str | Path) -> QuantizeRecipe:
        return cls.from_dict(load_recipe_mapping(path), where=str(path))

    def replace(self, **changes: Any) -> QuantizeRecipe:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """Plain values; each chosen pass's full config under its recipe key (``from_dict`` reads it back)."""
        out = {
            f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
            for f in fields(self)
            if f.name != "pass_options"
        }
        for name, config in self.pass_options.items():
            out[get_pass(name).option_key] = config_to_dict(config)
        return out

    def __hash__(self) -> int:  # dict fields make the generated hash fail; recipes are compared, not hashed
        return hash(json.dumps(self.to_dict(), sort_keys=True, default=str))


def load_recipe_mapping(path: str | Path, *, what: str = "recipe") -> dict[str, Any]:
    """The mapping in a JSON or YAML file (a recipe, or another ``what``: a sweep spec), with keys as written."""
    path = Path(path)
    if not path.is_file():  # a FIFO or a device is refused too: reading it could block forever
        state = "is not a regular file" if path.exists() else "does not exist"
        raise ConfigError(f"{what} file {path} {state}", hint="pass a .json or .yaml file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read the {what} file {path}: {exc}", hint="pass a UTF-8 .json or .yaml file"
        ) from exc
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:
            raise ConfigError(
                f"{path} is YAML, and PyYAML is not installed",
                hint=f"pip install 'onnxq[yaml]', or write the {what} as JSON",
            ) from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}", hint="fix the YAML syntax where it says") from exc
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{path}: not valid JSON: {exc.msg} at line {exc.lineno}",
                hint="fix the JSON syntax there (keys in double quotes, no trailing commas)",
            ) from exc
    if data is not None and not isinstance(data, dict):
        raise ConfigError(
            f"{path}: a {what} must be a mapping of option names to values",
            hint='write it as {"method": "entropy", ...}; `onnxq quantize --help` lists the options',
        )
    return data or {}
