"""The sweep spec: models x recipes x EPs x batches, read from YAML or JSON and checked before any work.

A spec names the models (paths or globs, each with its calibration and evaluation data), the recipes (any
``onnxq quantize`` options, by name, or a recipe file), the EPs and batch sizes, the metrics, the benchmark's
settings and an optional target that picks a winning recipe per model, EP and batch::

    models:
      - path: sample_models/*.onnx                 # relative to the spec's folder
        calib: sample_models/calib.npz
        data: sample_models/test.npz               # evaluation data; labels give accuracy
      - path: ../shared/models/squeezenet1.1/model.onnx   # named squeezenet1.1 (a model.onnx takes its folder's name)
        calib: data/squeezenet_calib.npz
        data: data/squeezenet_eval.npz
    recipes:
      minmax: {}
      per-tensor: {per_channel: false}
      cle-bc: {passes: [cle, bias-correction], bias_correction: {inputs: float}}
      mine: my_recipe.json                         # a recipe file
    eps: [cpu]
    batches: [1]
    metrics: [accuracy, fidelity, latency]
    bench: {runs: 100, warmup: 10}
    target: {min_sqnr_db: 30, optimize: latency}

Every key is checked when the spec is read: an unknown key, a value of the wrong type, a glob that matches
nothing, a missing file, a recipe option ``onnxq quantize`` does not take (parsed by
:meth:`~onnxq.quantize.recipe.QuantizeRecipe.from_dict`), a target that needs a metric the spec does not
measure: each is a ConfigError naming the spec file and the key (``spec.yaml: models[1].calib: ...``).
"""

from __future__ import annotations

import functools
import glob
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxq.errors import ConfigError, OnnxqError
from onnxq.quantize.options import parse_config
from onnxq.sweep.hints import SPEC_HINT

SPEC_KEYS = ("version", "models", "calib", "data", "labels", "recipes", "eps", "batches", "metrics", "bench",
             "target", "allow_fallback")  # fmt: skip
METRICS = ("accuracy", "fidelity", "latency")  # size is always recorded: it costs nothing
FLOAT = "float"  # the baseline cell of every model: its float model, evaluated and benchmarked as is
OPTIMIZE = {"latency": "latency", "size": "size", "sqnr": "fidelity", "agreement": "fidelity", "top1": "accuracy"}


@dataclass(frozen=True)
class ModelOptions:
    """One entry of ``models``: a path or a glob, and its data (defaults: the spec's top-level keys)."""

    path: str
    name: str | None = None
    calib: str | None = None
    data: str | None = None
    labels: str | None = None


@dataclass(frozen=True)
class BenchOptions:
    """The benchmark of every cell: ``runs`` timed runs after ``warmup`` (or ``duration_s`` seconds)."""

    runs: int = 100
    warmup: int = 10
    threads: int | None = None
    duration_s: float | None = None

    def __post_init__(self) -> None:
        if self.runs < 1 or self.warmup < 0:
            raise ConfigError(f"runs must be >= 1 and warmup >= 0, got {self.runs} and {self.warmup}", hint=SPEC_HINT)
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}", hint=SPEC_HINT)
        if self.duration_s is not None and self.duration_s <= 0:
            raise ConfigError(f"duration_s must be positive, got {self.duration_s}", hint=SPEC_HINT)


@dataclass(frozen=True)
class Target:
    """Constraints a recipe must meet, and what the winner among those that meet them optimizes.

    Fractions are in [0, 1]; ``max_top1_drop`` is against the float model on the same EP; ``min_speedup``
    is float p50 over the recipe's p50. ``optimize``: latency (lowest p50), size (smallest file), sqnr,
    agreement or top1 (highest).
    """

    min_top1: float | None = None
    max_top1_drop: float | None = None
    min_agreement: float | None = None
    min_sqnr_db: float | None = None
    max_latency_ms: float | None = None
    min_speedup: float | None = None
    max_size_bytes: int | None = None
    optimize: str = "latency"

    def __post_init__(self) -> None:
        if self.optimize not in OPTIMIZE:
            raise ConfigError(f"optimize must be one of {', '.join(OPTIMIZE)}, got {self.optimize!r}", hint=SPEC_HINT)

    def metrics_needed(self) -> dict[str, str]:
        """{target key: the metric that measures it}, for the keys that are set (and ``optimize``)."""
        needs = {"min_top1": "accuracy", "max_top1_drop": "accuracy", "min_agreement": "fidelity",
                 "min_sqnr_db": "fidelity", "max_latency_ms": "latency", "min_speedup": "latency"}  # fmt: skip
        out = {key: metric for key, metric in needs.items() if getattr(self, key) is not None}
        if OPTIMIZE[self.optimize] != "size":
            out["optimize"] = OPTIMIZE[self.optimize]
        return out


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: Path
    calib: Path | None
    data: Path | None
    labels: str | None


@dataclass(frozen=True)
class RecipeEntry:
    name: str
    options: dict[str, Any]  # as written in the spec (or its recipe file)
    canonical: dict[str, Any]  # QuantizeRecipe.resolved().to_dict(): every option, the target's defaults filled in
    dynamic: bool


@dataclass(frozen=True)
class SweepSpec:
    models: tuple[ModelEntry, ...]
    recipes: tuple[RecipeEntry, ...]
    eps: tuple[str, ...] = ("cpu",)
    batches: tuple[int | None, ...] = (None,)
    metrics: tuple[str, ...] = METRICS
    bench: BenchOptions = field(default_factory=BenchOptions)
    target: Target | None = None
    allow_fallback: bool = False
    source: str = "spec"

    def to_dict(self) -> dict[str, Any]:
        """The spec as read, paths resolved: what the report records."""
        return {
            "source": self.source,
            "models": [
                {"name": m.name, "path": str(m.path), "calib": _str(m.calib), "data": _str(m.data), "labels": m.labels}
                for m in self.models
            ],  # fmt: skip
            "recipes": {r.name: r.options for r in self.recipes},
            "eps": list(self.eps),
            "batches": list(self.batches),
            "metrics": list(self.metrics),
            "bench": dict(self.bench.__dict__),
            "target": None if self.target is None else dict(self.target.__dict__),
            "allow_fallback": self.allow_fallback,
        }


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def load_spec(path: str | os.PathLike) -> SweepSpec:
    """The spec in a JSON or YAML file; relative paths in it are relative to its folder."""
    from onnxq.quantize.recipe import load_recipe_mapping

    path = Path(path)
    data = load_recipe_mapping(path, what="sweep spec")
    return spec_from_mapping(data, base=path.resolve().parent, where=str(path))


def spec_from_mapping(data: dict[str, Any], *, base: str | os.PathLike = ".", where: str = "spec") -> SweepSpec:
    """A spec from a mapping (keys as in a spec file); ConfigError naming ``where`` and the key on any problem."""
    base = Path(base)
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a sweep spec must be a mapping of keys to values", hint=SPEC_HINT)
    unknown = [k for k in data if k not in SPEC_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}", hint=f"valid keys: {', '.join(SPEC_KEYS)}")
    if data.get("version", 1) != 1:
        raise ConfigError(
            f"{where}: version: this onnxq reads sweep specs of version 1, got {data['version']!r}", hint=SPEC_HINT
        )
    for key in ("models", "recipes"):
        if not data.get(key):
            raise ConfigError(f"{where}: {key}: required, and must not be empty",
                              hint="see the `onnxq sweep` section of the README for an example")  # fmt: skip
    metrics = _metrics(data.get("metrics", list(METRICS)), f"{where}: metrics")
    recipes = _recipes(data["recipes"], base, where)
    defaults = {k: data.get(k) for k in ("calib", "data", "labels")}
    _check_strings(defaults, where)
    models = _models(data["models"], defaults, base, where)
    spec = SweepSpec(
        models=models,
        recipes=recipes,
        eps=_eps(data.get("eps", ["cpu"]), f"{where}: eps"),
        batches=_batches(data.get("batches", [None]), f"{where}: batches"),
        metrics=metrics,
        bench=_parsed(BenchOptions, data.get("bench"), f"{where}: bench"),
        target=None if data.get("target") is None else _parsed(Target, data["target"], f"{where}: target"),
        allow_fallback=_bool(data.get("allow_fallback", False), f"{where}: allow_fallback"),
        source=where,
    )
    _check_data_needs(spec, where)
    return spec


def _named(where: str, build: Callable[[], Any]) -> Any:
    """``build()``, with ``where`` put before the message of a ConfigError that does not name it yet (checks in
    a config's ``__post_init__`` do not know the key they were given under)."""
    try:
        return build()
    except ConfigError as exc:
        if exc.message.startswith(where):
            raise
        raise ConfigError(f"{where}: {exc.message}", hint=exc.hint) from exc


def _parsed(cls: type, data: Any, where: str) -> Any:
    return _named(where, lambda: parse_config(cls, data, where=where))


def _check_strings(values: dict[str, Any], where: str) -> None:
    for key, value in values.items():
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{where}: {key} must be a path (a string), got {value!r}", hint=SPEC_HINT)


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false, got {value!r}", hint=SPEC_HINT)
    return value


def _list(value: Any, where: str) -> list[Any]:
    if isinstance(value, (str, int)) or value is None:
        value = [value]
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where} must be a non-empty list, got {value!r}", hint=SPEC_HINT)
    return value


def _metrics(value: Any, where: str) -> tuple[str, ...]:
    metrics = _list(value, where)
    for m in metrics:
        if m not in METRICS:
            raise ConfigError(f"{where}: unknown metric {m!r}",
                              hint=f"choose from {', '.join(METRICS)} (size is always recorded)")  # fmt: skip
    return tuple(dict.fromkeys(metrics))


def _eps(value: Any, where: str) -> tuple[str, ...]:
    from onnxq.runtime.session import normalize_ep

    eps = []
    for i, name in enumerate(_list(value, where)):
        try:
            eps.append(normalize_ep(str(name)))
        except OnnxqError as exc:
            raise ConfigError(f"{where}[{i}]: {exc.message}", hint=exc.hint) from exc
    if len(set(eps)) != len(eps):
        raise ConfigError(f"{where}: an EP is listed twice: {eps}", hint=SPEC_HINT)
    return tuple(eps)


def _batches(value: Any, where: str) -> tuple[int | None, ...]:
    batches = _list(value, where)
    for b in batches:
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1):
            raise ConfigError(
                f"{where}: batch sizes are positive integers (or null: the model's own), got {b!r}", hint=SPEC_HINT
            )
    if len(set(batches)) != len(batches):
        raise ConfigError(f"{where}: a batch size is listed twice: {batches}", hint=SPEC_HINT)
    return tuple(batches)


def _recipes(value: Any, base: Path, where: str) -> tuple[RecipeEntry, ...]:
    from onnxq.quantize.recipe import QuantizeRecipe, load_recipe_mapping

    if not isinstance(value, dict):
        raise ConfigError(f"{where}: recipes must be a mapping of recipe names to options",
                          hint="recipes: {minmax: {}, per-tensor: {per_channel: false}}")  # fmt: skip
    out = []
    for name, options in value.items():
        at = f"{where}: recipes.{name}"
        if not isinstance(name, str) or not name.strip() or name == FLOAT:
            raise ConfigError(f"{at}: a recipe name is a non-empty string other than {FLOAT!r} "
                              "(the float baseline every model gets)", hint="rename the recipe")  # fmt: skip
        if isinstance(options, str):
            options = load_recipe_mapping(base / options)
        elif options is None:
            options = {}
        recipe = _named(at, functools.partial(QuantizeRecipe.from_dict, options, where=at))
        entry = RecipeEntry(name, dict(options), recipe.resolved().to_dict(), recipe.dynamic)
        same = next((r.name for r in out if r.canonical == entry.canonical), None)
        if same is not None:
            raise ConfigError(f"{at}: the same recipe as recipes.{same} (every option equal, defaults included)",
                              hint="drop one of them, or make them differ")  # fmt: skip
        out.append(entry)
    return tuple(out)


def _models(value: Any, defaults: dict[str, Any], base: Path, where: str) -> tuple[ModelEntry, ...]:
    entries: list[ModelEntry] = []
    for i, item in enumerate(_list(value, f"{where}: models")):
        at = f"{where}: models[{i}]"
        raw = parse_config(ModelOptions, {"path": item} if isinstance(item, str) else item, where=at)
        paths = _expand(raw.path, base, f"{at}.path")
        if raw.name is not None and len(paths) > 1:
            raise ConfigError(f"{at}.name: a glob matched {len(paths)} models, and one name cannot name them all",
                              hint="drop name (each is named after its file), or list them one by one")  # fmt: skip
        picked = {k: defaults[k] if getattr(raw, k) is None else getattr(raw, k) for k in ("calib", "data", "labels")}
        calib, data = (_existing(picked[k], base, f"{at}.{k}") for k in ("calib", "data"))
        entries += [ModelEntry(raw.name or default_name(p), p, calib, data, picked["labels"]) for p in paths]
    _check_unique_names(entries, where)
    return tuple(entries)


def default_name(path: Path) -> str:
    """The file's stem, or its folder's name for a file called model.onnx (the model-zoo layout)."""
    return path.parent.name if path.name == "model.onnx" and path.parent.name else path.stem


def _expand(pattern: str, base: Path, where: str) -> list[Path]:
    full = pattern if os.path.isabs(pattern) else str(base / pattern)
    if glob.has_magic(pattern):
        found = sorted(Path(p).resolve() for p in glob.glob(full, recursive=True) if Path(p).is_file())
        if not found:
            raise ConfigError(f"{where}: {pattern!r} matches no file (looked in {base})",
                              hint="paths in a spec are relative to the spec's folder")  # fmt: skip
        return found
    path = Path(full)
    if not path.is_file():
        raise ConfigError(f"{where}: model {path} {'is not a file' if path.exists() else 'does not exist'}",
                          hint="paths in a spec are relative to the spec's folder")  # fmt: skip
    return [path.resolve()]


def _existing(value: str | None, base: Path, where: str) -> Path | None:
    if value is None:
        return None
    path = Path(value) if os.path.isabs(value) else base / value
    if not path.exists():
        raise ConfigError(f"{where}: {path} does not exist", hint="paths in a spec are relative to the spec's folder")
    return path.resolve()


def _check_unique_names(entries: list[ModelEntry], where: str) -> None:
    seen: dict[str, Path] = {}
    for e in entries:
        if e.name in seen:
            raise ConfigError(f"{where}: models: two models are named {e.name!r} ({seen[e.name]} and {e.path})",
                              hint="give one of them a name: {path: ..., name: ...}")  # fmt: skip
        if e.name == FLOAT or not e.name.strip():
            raise ConfigError(f"{where}: models: {e.name!r} cannot name a model", hint="give it another name")
        seen[e.name] = e.path


def _check_data_needs(spec: SweepSpec, where: str) -> None:
    """Data every measurement needs, and metrics every target key needs, present before any work starts."""
    for i, m in enumerate(spec.models):
        if m.calib is None and not all(r.dynamic for r in spec.recipes):
            static = next(r.name for r in spec.recipes if not r.dynamic)
            raise ConfigError(f"{where}: models[{i}] ({m.name}): no calib, which recipe {static!r} needs",
                              hint="give calib (for this model, or at the top level for all)")  # fmt: skip
        if m.data is None and {"accuracy", "fidelity"} & set(spec.metrics):
            raise ConfigError(f"{where}: models[{i}] ({m.name}): no data, which accuracy and fidelity need",
                              hint="give data, or measure latency only: metrics: [latency]")  # fmt: skip
    if spec.target is not None:
        for key, metric in spec.target.metrics_needed().items():
            if metric not in spec.metrics:
                raise ConfigError(f"{where}: target.{key} needs the {metric} metric, which metrics leaves out",
                                  hint=f"add {metric} to metrics, or drop target.{key}")  # fmt: skip
