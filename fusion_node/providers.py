"""Which onnxruntime execution provider runs the models, with what session options, and why not another.

``resolve_providers("auto" | "tensorrt" | "cuda" | "cpu")`` builds an explicit provider list, GPU
first and CPU always last. onnxruntime-gpu *lists* CUDA and TensorRT as available even on a
machine where they cannot load (no GPU, missing CUDA/cuDNN/TensorRT libraries), and then quietly
runs on CPU; so a runtime reads ``session.get_providers()`` after creating each session to learn
what is really in use, moves down the chain (TensorRT -> CUDA -> CPU) when a GPU provider raises
or silently did not take, and asks :func:`library_problem` why. :func:`describe_choice` turns
the outcome into the one-line note a runtime reports (``provider_note``).

Session options are chosen for a streaming node that shares its cores with the sensor readers
and the synchroniser: few intra-op threads (default 1), one inter-op thread, sequential
execution, full graph optimisation, and no spin-waiting, so idle onnxruntime threads sleep
instead of burning a core each between frames.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnxruntime as ort

from .paths import cache_dir

__all__ = [
    "PROVIDER_CHOICES",
    "TENSORRT",
    "CUDA",
    "CPU",
    "short_name",
    "default_trt_cache_dir",
    "resolve_providers",
    "session_options",
    "first_line",
    "library_problem",
    "wanted_provider",
    "describe_choice",
]

log = logging.getLogger(__name__)

PROVIDER_CHOICES: tuple[str, ...] = ("auto", "tensorrt", "cuda", "cpu")
TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

_SHORT = {TENSORRT: "TensorRT", CUDA: "CUDA", CPU: "CPU"}
_GPU_CHAIN = {"tensorrt": (TENSORRT, CUDA), "cuda": (CUDA,), "auto": (TENSORRT, CUDA), "cpu": ()}
_PROVIDER_LIBS = {TENSORRT: "onnxruntime_providers_tensorrt", CUDA: "onnxruntime_providers_cuda"}


def short_name(provider: str) -> str:
    """"CUDAExecutionProvider" -> "CUDA" (unknown names unchanged)."""
    return _SHORT.get(provider, provider)


def default_trt_cache_dir() -> Path:
    """Where TensorRT engines and timing caches are kept between node starts."""
    return cache_dir("tensorrt")


def resolve_providers(
    requested: str,
    *,
    trt_cache_dir: str | os.PathLike | None = None,
    trt_fp16: bool = True,
    device_id: int = 0,
) -> list[tuple[str, dict[str, Any]]]:
    """The onnxruntime provider list for ``requested`` ("auto", "tensorrt", "cuda" or "cpu").

    Returns ``[(provider_name, options), ...]`` in priority order, CPU always last as the
    fallback. "tensorrt" and "auto" try TensorRT, then CUDA (TensorRT hands the nodes it cannot
    build to CUDA); "cuda" tries CUDA. GPU providers this onnxruntime build does not offer at all
    are left out. TensorRT gets an engine and timing cache in ``trt_cache_dir`` (default
    :func:`default_trt_cache_dir`) because building engines takes from seconds to minutes and
    would otherwise be repeated at every node start; ``trt_fp16`` allows fp16 kernels. Whether a
    listed GPU provider really works is only known once a session exists.
    """
    if not isinstance(requested, str) or requested.lower() not in PROVIDER_CHOICES:
        raise ValueError(f"provider must be one of {', '.join(PROVIDER_CHOICES)}, got {requested!r}")
    available = set(ort.get_available_providers())
    providers: list[tuple[str, dict[str, Any]]] = []
    for name in _GPU_CHAIN[requested.lower()]:
        if name not in available:
            continue
        if name == TENSORRT:
            opts: dict[str, Any] = {"device_id": int(device_id), "trt_fp16_enable": bool(trt_fp16)}
            cache = Path(trt_cache_dir) if trt_cache_dir is not None else default_trt_cache_dir()
            try:
                cache.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                log.warning("TensorRT engine cache %s unusable (%s); engines will be rebuilt at every start",
                            cache, exc)
            else:
                opts.update(
                    trt_engine_cache_enable=True,
                    trt_engine_cache_path=str(cache),
                    trt_timing_cache_enable=True,
                    trt_timing_cache_path=str(cache),
                )
            providers.append((TENSORRT, opts))
        elif name == CUDA:
            providers.append((CUDA, {"device_id": int(device_id)}))
    providers.append((CPU, {}))
    return providers


def session_options(intra_op_threads: int = 1) -> ort.SessionOptions:
    """onnxruntime session options for streaming inference (see the module docstring)."""
    if isinstance(intra_op_threads, bool) or not isinstance(intra_op_threads, int) or intra_op_threads < 1:
        raise ValueError(f"intra_op_threads must be a positive integer, got {intra_op_threads!r}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = intra_op_threads
    # One model runs at a time per set, and the models are small: parallel branches would only
    # add thread hand-offs.
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning keeps worker threads busy-waiting for the next op; between frames that is a core
    # stolen from the sensor readers for nothing.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    # Provider failures are handled (and logged once) by the runtime; keep onnxruntime's own
    # per-session logging to errors.
    so.log_severity_level = 3
    return so


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one short line (onnxruntime messages are multi-line, with source locations)."""
    text = " ".join(str(exc).split())
    # Drop onnxruntime's "/onnxruntime_src/...cc:123 void ns::Func(args) " source-location prefix.
    text = re.sub(r"^\S+\.(?:cc|cpp|h):\d+ .*?\) ", "", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def library_problem(provider: str) -> str:
    """Best-effort reason a GPU provider did not take: try to load its shared library."""
    lib = _PROVIDER_LIBS.get(provider)
    if lib is None:
        return "provider unavailable"
    capi = Path(ort.__file__).parent / "capi"
    candidates = [p for p in capi.glob(f"*{lib}*") if p.suffix in (".so", ".dll", ".dylib")]
    if not candidates:
        return f"this onnxruntime build has no {lib} library"
    try:
        ctypes.CDLL(str(candidates[0]))
    except OSError as exc:
        # The loader names the missing dependency, e.g. "libcublasLt.so.13: cannot open ...".
        return first_line(exc)
    return "the provider library loads, but no usable GPU/driver was found"


def wanted_provider(requested: str, offered: Sequence[str]) -> tuple[str, list[str]]:
    """The provider ``requested`` really asks for, and why this build cannot give it (if it cannot).

    An explicit "tensorrt"/"cuda" wants that provider even when this onnxruntime build lacks it
    (worth a warning); "auto" wants the best provider the build offers, and a CPU-only build is
    not a failure.
    """
    if requested in ("tensorrt", "cuda"):
        missing = [f"{short_name(p)}: not in this onnxruntime build" for p in _GPU_CHAIN[requested]
                   if p not in offered]
        return _GPU_CHAIN[requested][0], missing
    return offered[0], []


def describe_choice(requested: str, wanted: str, session_providers: Mapping[str, str],
                    problems: Sequence[str]) -> tuple[str, str, bool]:
    """``(provider, note, degraded)`` for a runtime whose sessions ended up on ``session_providers``.

    ``provider`` is the one provider every session uses, or "mixed"; ``note`` says in one line
    what was asked for and what is used, with ``problems`` as the reason when it is not what
    was wanted (``degraded``).
    """
    used = set(session_providers.values())
    provider = next(iter(used)) if len(used) == 1 else "mixed"
    if used != {wanted}:
        what = (f"auto: {short_name(wanted)} unavailable" if requested == "auto"
                else f"{short_name(wanted)} requested but unavailable")
        using = short_name(provider) if provider != "mixed" else "mixed (" + ", ".join(
            f"{k}={short_name(v)}" for k, v in session_providers.items()) + ")"
        return provider, f"{what} ({'; '.join(problems) or 'no reason given'}); using {using}", True
    if requested == "cpu":
        return provider, "CPU requested; using CPU", False
    if wanted == CPU:
        return provider, f"{requested}: this onnxruntime build offers no GPU provider; using CPU", False
    return provider, f"{requested}: using {short_name(wanted)}", False
