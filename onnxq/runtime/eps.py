"""Execution providers as data: one row per EP, read by the CLI's choices, sessions, bench, eval and reports.

A row gives the short name users type, ORT's provider name, the providers listed after it (ORT places on
them what the EP rejects), how to install it, whether it runs on a GPU (device buffers for IO binding, GPU
memory, CUDA library preload), whether its INT8 QDQ runs as dequantize + float kernels (a warning), the
options only it takes, and its colour in the report plots. Each option is an :class:`EPOption` row: the
SessionSpec field, the CLI flag, and the provider options ORT gets for it. Adding an EP or an option is
adding a row here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from onnxq.runtime.session import SessionSpec


def _switch(key: str) -> Callable[[Any], dict[str, str]]:
    return lambda value: {key: "1" if value else "0"}


def _true_false(key: str) -> Callable[[Any], dict[str, str]]:
    return lambda value: {key: str(bool(value))}  # ORT's Python binding spells TensorRT's booleans True/False


@dataclass(frozen=True)
class EPOption:
    """One option only one EP takes.

    ``field`` names the SessionSpec (and BenchConfig) field; ``flag`` the CLI flag ("--nhwc/--no-nhwc" for an
    on/off switch whose absence means automatic or ORT's default); ``to_ort`` turns a value into ORT's provider
    options; ``unset`` is the value that means "not given" (nothing is passed unless ``always``).
    """

    field: str
    flag: str
    help: str
    to_ort: Callable[[Any], dict[str, str]]
    kind: str = "switch"  # switch (True/False/None), flag (True or not given), choice, int, path
    choices: tuple[str, ...] = ()
    unset: Any = None
    always: bool = False  # passed to ORT even when unset (TensorRT's precision switches: explicitly off)
    metavar: str | None = None

    def given(self, value: Any) -> bool:
        return value != self.unset


CUDA_CONV_ALGO_SEARCH = ("exhaustive", "heuristic", "default")  # ORT: EXHAUSTIVE (its default), HEURISTIC, DEFAULT

CUDA_OPTIONS = (
    EPOption(
        "cuda_nhwc",
        "--nhwc/--no-nhwc",
        "CUDA: channels-last (NHWC) convolution kernels, ORT's prefer_nhwc (default: on for FP16 conv models).",
        _switch("prefer_nhwc"),
    ),
    EPOption(
        "cuda_graph",
        "--cuda-graph/--no-cuda-graph",
        "CUDA: capture the run once as a CUDA graph and replay it (enable_cuda_graph); needs --io-binding and "
        "every node on CUDA (default: on with --io-binding).",
        _switch("enable_cuda_graph"),
    ),
    EPOption(
        "cuda_conv_algo_search",
        "--conv-algo-search",
        "CUDA: how cuDNN picks convolution algorithms (cudnn_conv_algo_search; ORT's default: exhaustive).",
        lambda value: {"cudnn_conv_algo_search": str(value).upper()},
        kind="choice",
        choices=CUDA_CONV_ALGO_SEARCH,
    ),
    EPOption(
        "cuda_fuse_conv_bias",
        "--fuse-conv-bias/--no-fuse-conv-bias",
        "CUDA: cuDNN's fused convolution + bias kernels (fuse_conv_bias; default: on for FP16 conv models).",
        _switch("fuse_conv_bias"),
    ),
    EPOption(
        "cuda_tf32",
        "--tf32/--no-tf32",
        "CUDA: TF32 tensor cores for float32 convolutions and GEMMs (use_tf32; ORT's default: on).",
        _switch("use_tf32"),
    ),
)

TENSORRT_OPTIONS = (
    EPOption("trt_fp16", "--trt-fp16", "TensorRT: allow FP16 kernels.", _true_false("trt_fp16_enable"),
             kind="flag", unset=False, always=True),  # fmt: skip
    EPOption("trt_int8", "--trt-int8", "TensorRT: allow INT8 kernels (QDQ models).", _true_false("trt_int8_enable"),
             kind="flag", unset=False, always=True),  # fmt: skip
    EPOption(
        "trt_engine_cache_dir",
        "--trt-engine-cache",
        "TensorRT: engine cache folder.",
        lambda value: {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(value)},
        kind="path",
        metavar="DIR",
    ),
    EPOption(
        "trt_workspace_bytes",
        "--trt-workspace",
        "TensorRT: max workspace size in bytes.",
        lambda value: {"trt_max_workspace_size": str(value)},
        kind="int",
        metavar="BYTES",
    ),
)


@dataclass(frozen=True)
class ExecutionProvider:
    name: str  # what --ep takes
    provider: str  # ORT's name
    then: tuple[str, ...]  # the EPs listed after it, in order, for the nodes it does not take
    install_hint: str
    gpu: bool
    qdq_as_float: bool = False  # INT8 QDQ runs there as dequantize + float kernels (not faster than float)
    options: tuple[EPOption, ...] = ()  # the options only this EP takes
    color: str = "#888888"

    @property
    def own_options(self) -> tuple[str, ...]:
        """The SessionSpec fields only this EP takes."""
        return tuple(o.field for o in self.options)


EPS: dict[str, ExecutionProvider] = {
    ep.name: ep
    for ep in (
        ExecutionProvider(
            name="cpu",
            provider="CPUExecutionProvider",
            then=(),
            install_hint="reinstall onnxruntime: pip install --force-reinstall onnxruntime",
            gpu=False,
            color="#4c78a8",
        ),
        ExecutionProvider(
            name="cuda",
            provider="CUDAExecutionProvider",
            then=("cpu",),
            install_hint="pip install 'onnxq[gpu]' (installs onnxruntime-gpu; uninstall the CPU-only onnxruntime "
            "first), with the CUDA and cuDNN 9 runtime libraries of that build on the library path or installed "
            "as nvidia-* pip packages (pip install 'onnxruntime-gpu[cuda,cudnn]')",
            gpu=True,
            qdq_as_float=True,
            options=CUDA_OPTIONS,
            color="#54a24b",
        ),
        ExecutionProvider(
            name="tensorrt",
            provider="TensorrtExecutionProvider",
            then=("cuda", "cpu"),
            install_hint="pip install 'onnxq[gpu]' and install TensorRT so that libnvinfer (e.g. libnvinfer.so.10) "
            "is on LD_LIBRARY_PATH (pip install tensorrt, or NVIDIA's libnvinfer packages)",
            gpu=True,
            options=TENSORRT_OPTIONS,
            color="#f58518",
        ),
    )
}
EP_NAMES = tuple(EPS)
EP_PROVIDERS = {ep.name: ep.provider for ep in EPS.values()}
INSTALL_HINTS = {ep.name: ep.install_hint for ep in EPS.values()}
EP_OPTIONS: dict[str, EPOption] = {o.field: o for ep in EPS.values() for o in ep.options}


def option_owner(field: str) -> ExecutionProvider:
    """The EP that takes option ``field``."""
    return next(ep for ep in EPS.values() if field in ep.own_options)


def provider_options(name: str, spec: SessionSpec) -> dict[str, str]:
    """The provider options ORT gets for EP ``name``: device_id for a GPU EP, then each option row's."""
    ep = EPS[name]
    opts = {"device_id": str(spec.device_id)} if ep.gpu else {}
    if name != spec.ep:
        return opts  # an EP listed after the requested one (CUDA under TensorRT) runs with its defaults
    for option in ep.options:
        value = getattr(spec, option.field)
        if option.given(value) or option.always:
            opts.update(option.to_ort(value))
    return opts


def provider_chain(spec: SessionSpec) -> list[tuple[str, dict[str, str]]]:
    """The (provider, options) list handed to ORT for ``spec.ep``, highest priority first."""
    names = (spec.ep, *EPS[spec.ep].then)
    return [(EPS[n].provider, provider_options(n, spec)) for n in names]
