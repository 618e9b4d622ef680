"""The registry of passes: every module of ``onnxq.passes`` that declares a ``SPEC``, plus the driver's own steps.

Adding a pass is adding a module with a :class:`~onnxq.quantize.pipeline.PassSpec` named ``SPEC``: the
recipe's keys, ``--passes``, its help, ``onnxq passes`` and the pipeline's order all come from here.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil

from onnxq.errors import ConfigError
from onnxq.quantize.options import config_to_dict, describe_type, field_types
from onnxq.quantize.pipeline import PassSpec

_EXTRA: dict[str, PassSpec] = {}  # passes registered at run time (plugins, tests) with register_pass


def all_passes() -> dict[str, PassSpec]:
    """{name: spec} of every registered pass, in pipeline order (phase, then declared ``after``)."""
    specs = {**_discovered(), **_EXTRA}
    return {s.name: s for s in _ordered(list(specs.values()))}


@functools.cache
def _discovered() -> dict[str, PassSpec]:
    import onnxq.passes as package
    from onnxq.quantize.calibration import CALIBRATE, PLAN

    specs = [PLAN, CALIBRATE]
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_"):
            continue
        spec = getattr(importlib.import_module(f"{package.__name__}.{info.name}"), "SPEC", None)
        if isinstance(spec, PassSpec):
            specs.append(spec)
    return {s.name: s for s in specs}


def register_pass(spec: PassSpec) -> None:
    """Add a pass defined outside ``onnxq.passes`` (a plugin); its name must be new."""
    if spec.name in all_passes():
        raise ConfigError(f"a pass named {spec.name!r} is already registered", hint="choose another name")
    if any(s.option_key == spec.option_key for s in all_passes().values()):
        raise ConfigError(
            f"the recipe key {spec.option_key!r} of pass {spec.name!r} is already taken",
            hint="choose a pass name whose underscored form no other pass uses",
        )
    _EXTRA[spec.name] = spec


def unregister_pass(name: str) -> None:
    """Remove a pass added with :func:`register_pass`."""
    _EXTRA.pop(name, None)


def _ordered(specs: list[PassSpec]) -> list[PassSpec]:
    """Sort by phase; within a phase, a pass comes after the passes its ``after`` names (stable otherwise)."""
    out: list[PassSpec] = []
    for phase in sorted({s.phase for s in specs}):
        pending = sorted((s for s in specs if s.phase == phase), key=lambda s: (s.optional, s.name))
        while pending:
            names = {s.name for s in pending}
            ready = next((s for s in pending if not (set(s.after) & names)), None)
            if ready is None:
                cycle = ", ".join(f"{s.name} after {'/'.join(s.after)}" for s in pending)
                raise ConfigError(
                    f"the passes' order constraints form a cycle: {cycle}",
                    hint="pass developer: drop one of the `after` constraints listed",
                )
            out.append(ready)
            pending.remove(ready)
    return out


def optional_passes() -> dict[str, PassSpec]:
    """The passes a recipe can choose (``--passes``), by name."""
    return {name: spec for name, spec in all_passes().items() if spec.optional}


def get_pass(name: str) -> PassSpec:
    specs = optional_passes()
    if name not in specs:
        raise ConfigError(f"unknown pass {name!r}", hint=f"known passes: {', '.join(specs)} (see `onnxq passes`)")
    return specs[name]


def pass_by_option_key(key: str) -> PassSpec | None:
    """The optional pass whose options live under recipe key ``key`` (dashes or underscores), or None."""
    key = str(key).replace("-", "_")
    return next((s for s in optional_passes().values() if s.option_key == key), None)


def describe_pass(spec: PassSpec) -> dict:
    """A JSON-ready description of a pass: phase, options with types and defaults, needs and provides."""
    defaults = config_to_dict(spec.config())
    options = {
        name: {"type": describe_type(annotation), "default": defaults[name]}
        for name, annotation in field_types(spec.config).items()
    }
    return {
        "name": spec.name,
        "phase": spec.phase.label,
        "optional": spec.optional,
        "summary": spec.summary,
        "recipe_key": spec.option_key if spec.optional else None,
        "needs": list(spec.needs),
        "provides": list(spec.provides),
        "after": list(spec.after),
        "options": options,
        "aliases": dict(spec.aliases),
    }
