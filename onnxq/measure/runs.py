"""One inference as a callable, the unit that bench times: ``session.run`` on numpy feeds, or
``run_with_iobinding`` on device buffers, replayed as a CUDA graph when the session captures one.

Each call object reads its outputs back with :meth:`outputs` (outside the timed window), so the numbers and
the fidelity can come from the same runs. A CUDA graph replays the device addresses it was captured with,
inputs and outputs included, so a graph session never sees a ``session.run`` (whose inputs and outputs live
in temporary buffers: the graph would replay on freed memory) and its outputs are allocated before the first
run, with the shapes that the declared output shapes and the inputs' give (:func:`fixed_output_shapes`).
ORT captures the graph after two regular runs (which grow its memory arena; recent ORT makes them inside one
``Run`` call); :data:`CUDA_GRAPH_RUNS_BEFORE_REPLAY` makes the warm-up cover them either way.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from onnxq.errors import ConfigError
from onnxq.runtime.eps import EPS
from onnxq.runtime.session import RunnerSession

CUDA_GRAPH_RUNS_BEFORE_REPLAY = 3  # two regular runs, then the capture (CUDA EP: min runs before capture = 2)


class PlainRun:
    """``session.run`` on host arrays: ORT copies inputs to the device and outputs back on every run."""

    def __init__(self, runner: RunnerSession, feeds: dict[str, np.ndarray]) -> None:
        self.session, self.feeds = runner.session, feeds
        self.names = [o.name for o in self.session.get_outputs()]
        self.last: list[Any] | None = None

    def __call__(self) -> None:
        self.last = self.session.run(self.names, self.feeds)

    def outputs(self) -> list[Any]:
        return list(self.last if self.last is not None else self.session.run(self.names, self.feeds))


class BoundRun:
    """``run_with_iobinding`` with the inputs copied to the device once and the outputs left there."""

    def __init__(self, runner: RunnerSession, feeds: dict[str, np.ndarray]) -> None:
        import onnxruntime as ort

        self.session = runner.session
        self.device = "cuda" if EPS[runner.spec.ep].gpu else "cpu"
        self.device_id = runner.spec.device_id
        self.binding = self.session.io_binding()
        self.inputs = {n: ort.OrtValue.ortvalue_from_numpy(a, self.device, self.device_id) for n, a in feeds.items()}
        for name, value in self.inputs.items():
            self.binding.bind_ortvalue_input(name, value)
        self.names = [o.name for o in self.session.get_outputs()]
        self.output_values: dict[str, Any] = {}
        if runner.spec.cuda_graph:
            self._bind_fixed_outputs(feeds)
        else:
            for name in self.names:
                self.binding.bind_output(name, self.device, self.device_id)

    def _bind_fixed_outputs(self, feeds: dict[str, np.ndarray]) -> None:
        import onnxruntime as ort

        for name, (shape, dtype) in fixed_output_shapes(self.session, feeds).items():
            value = ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, self.device, self.device_id)
            self.output_values[name] = value  # kept alive here: the captured graph writes into it
            self.binding.bind_ortvalue_output(name, value)

    def __call__(self) -> None:
        self.session.run_with_iobinding(self.binding)

    def outputs(self) -> list[np.ndarray]:
        return self.binding.copy_outputs_to_cpu()


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
              "tensor(bool)": np.bool_}  # fmt: skip


def fixed_output_shapes(session: Any, feeds: dict[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], type]]:
    """Each output's shape and numpy type before any run: its declared dims, the symbolic ones taken from the
    inputs that share the symbol (``N`` of ``x [N, 3, 224, 224]``). ConfigError where a dim is known only once
    the model has run."""
    known: dict[str, int] = {}
    for arg in session.get_inputs():
        if arg.name in feeds:
            known.update((d, n) for d, n in zip(arg.shape, feeds[arg.name].shape, strict=False) if isinstance(d, str))
    shapes = {}
    for arg in session.get_outputs():
        dims = [d if isinstance(d, int) else known.get(d) for d in arg.shape]
        if any(d is None for d in dims) or arg.type not in _ORT_TYPES:
            raise ConfigError(
                f"a CUDA graph needs its output buffers before the first run, and output {arg.name!r} "
                f"({arg.type} {list(arg.shape)}) is known only once the model has run",
                hint="drop --cuda-graph, or declare the output's shape in terms of the inputs' dims",
            )
        shapes[arg.name] = (tuple(dims), _ORT_TYPES[arg.type])
    return shapes


def make_call(runner: RunnerSession, feeds: dict[str, np.ndarray], io_binding: bool) -> PlainRun | BoundRun:
    """The callable bench times for ``runner`` on ``feeds``. A CUDA graph session needs IO binding: after the
    capture ORT replays the graph on the captured input buffers, whatever ``session.run`` was given."""
    if runner.spec.cuda_graph and not io_binding:
        raise ConfigError(
            "a CUDA graph needs IO binding: it replays fixed device buffers, and session.run would silently reuse "
            "the captured inputs",
            hint="add --io-binding, or drop --cuda-graph",
        )
    return BoundRun(runner, feeds) if io_binding else PlainRun(runner, feeds)
