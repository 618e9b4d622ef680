"""Execution providers as data: one row per EP, read by the CLI's choices, sessions, bench, eval and reports.

A row gives the short name users type, ORT's provider name, the providers listed after it (ORT places on
them what the EP rejects), how to install it, whether it runs on a GPU (device buffers for IO binding, GPU
memory, CUDA library preload), whether its INT8 QDQ runs as dequantize + float kernels (a warning), the
option names only it takes, and its colour in the report plots. Adding an EP is adding a row here and, if
it takes options, their mapping in :func:`provider_options`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from onnxq.runtime.session import SessionSpec


@dataclass(frozen=True)
class ExecutionProvider:
    name: str  # what --ep takes
    provider: str  # ORT's name
    then: tuple[str, ...]  # the EPs listed after it, in order, for the nodes it does not take
    install_hint: str
    gpu: bool
    qdq_as_float: bool = False  # INT8 QDQ runs there as dequantize + float kernels (not faster than float)
    own_options: tuple[str, ...] = ()  # SessionSpec fields only this EP takes
    color: str = "#888888"


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
            color="#54a24b",
        ),
        ExecutionProvider(
            name="tensorrt",
            provider="TensorrtExecutionProvider",
            then=("cuda", "cpu"),
            install_hint="pip install 'onnxq[gpu]' and install TensorRT so that libnvinfer (e.g. libnvinfer.so.10) "
            "is on LD_LIBRARY_PATH (pip install tensorrt, or NVIDIA's libnvinfer packages)",
            gpu=True,
            own_options=("trt_fp16", "trt_int8", "trt_engine_cache_dir", "trt_workspace_bytes"),
            color="#f58518",
        ),
    )
}
EP_NAMES = tuple(EPS)
EP_PROVIDERS = {ep.name: ep.provider for ep in EPS.values()}
INSTALL_HINTS = {ep.name: ep.install_hint for ep in EPS.values()}


def provider_options(name: str, spec: SessionSpec) -> dict[str, str]:
    """The provider options ORT gets for EP ``name``; values are strings (ORT's Python binding wants
    booleans spelled "True"/"False")."""
    if name == "cpu":
        return {}
    opts = {"device_id": str(spec.device_id)}
    if name == "tensorrt":
        opts.update(trt_fp16_enable=str(spec.trt_fp16), trt_int8_enable=str(spec.trt_int8))
        if spec.trt_engine_cache_dir:
            opts.update(trt_engine_cache_enable="True", trt_engine_cache_path=str(spec.trt_engine_cache_dir))
        if spec.trt_workspace_bytes:
            opts["trt_max_workspace_size"] = str(spec.trt_workspace_bytes)
    return opts


def provider_chain(spec: SessionSpec) -> list[tuple[str, dict[str, str]]]:
    """The (provider, options) list handed to ORT for ``spec.ep``, highest priority first."""
    names = (spec.ep, *EPS[spec.ep].then)
    return [(EPS[n].provider, provider_options(n, spec)) for n in names]
