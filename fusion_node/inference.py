"""Run an exported model bundle: the three encoders and the fusion head, on onnxruntime + numpy.

The node never imports torch. A bundle (written by ``models.export``) is a directory holding one
ONNX file per encoder, the head's ONNX file and ``manifest.json``; :func:`load_manifest`
validates the manifest completely (keys, types, shapes, files present, sha256) before anything
runs, and every problem is a :class:`ModelError` naming the manifest, the key or file at fault
and what to do. The manifest schema is documented in ``models/export.py``.

Execution providers. ``resolve_providers("auto" | "tensorrt" | "cuda" | "cpu")`` builds an
explicit provider list, GPU first and CPU always last. onnxruntime-gpu *lists* CUDA and
TensorRT as available even on a machine where they cannot load (no GPU, missing CUDA/cuDNN/
TensorRT libraries), and then quietly runs on CPU; so after creating each session
:class:`ModelRuntime` reads ``session.get_providers()`` to learn what is really in use. A GPU
provider that raises (at creation or during warm-up) or silently did not take makes it move
down the chain (TensorRT -> CUDA -> CPU); it records why in ``ModelRuntime.provider_note`` and
logs one warning per runtime.

Session options are chosen for a streaming node that shares its cores with the sensor readers
and the synchroniser: few intra-op threads (default 1), one inter-op thread, sequential
execution, full graph optimisation, and no spin-waiting, so idle onnxruntime threads sleep
instead of burning a core each between frames.

``session.run`` is thread-safe and :class:`ModelRuntime` holds no mutable state after
construction, so one runtime can serve several threads.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

import numpy as np
import onnxruntime as ort

from .errors import FusionError
from .preprocess import PREPROCESSORS, AudioPreprocess, CameraPreprocess, RadarPreprocess

__all__ = [
    "MODALITIES",
    "PROVIDER_CHOICES",
    "FORMAT_VERSION",
    "PARITY_TOLERANCE",
    "HEAD_INPUTS",
    "HEAD_OUTPUTS",
    "ModelError",
    "TensorSpec",
    "ModelSpec",
    "EncoderSpec",
    "Manifest",
    "HeadOutput",
    "load_manifest",
    "resolve_providers",
    "session_options",
    "ModelRuntime",
]

log = logging.getLogger(__name__)

# Same order as models.architectures.MODALITIES (duplicated because this package must not import
# torch): the order of present/certainty/weights and of the head's embedding inputs.
MODALITIES: tuple[str, ...] = ("camera", "radar", "audio")
PROVIDER_CHOICES: tuple[str, ...] = ("auto", "tensorrt", "cuda", "cpu")
FORMAT_VERSION = 1
# Largest onnxruntime-vs-torch difference a bundle may record (export refuses anything worse).
PARITY_TOLERANCE = 1e-4

HEAD_INPUTS: tuple[str, ...] = ("camera", "radar", "audio", "present")
HEAD_OUTPUTS: tuple[str, ...] = ("logits", "certainty", "weights", "consistency")

_TRT = "TensorrtExecutionProvider"
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"
_SHORT = {_TRT: "TensorRT", _CUDA: "CUDA", _CPU: "CPU"}
_GPU_CHAIN = {"tensorrt": (_TRT, _CUDA), "cuda": (_CUDA,), "auto": (_TRT, _CUDA), "cpu": ()}
_PROVIDER_LIBS = {_TRT: "onnxruntime_providers_tensorrt", _CUDA: "onnxruntime_providers_cuda"}

_REQUIRED_KEYS = (
    "format_version", "name", "trained", "seed", "data_version", "embedding_dim", "classes",
    "thresholds", "encoders", "head", "parity_max_abs_diff", "sha256",
)
_OPTIONAL_KEYS = ("export", "consistency_threshold")
_ENCODER_KEYS = ("file", "inputs", "outputs", "preprocess")
_HEAD_KEYS = ("file", "inputs", "outputs")
_TENSOR_KEYS = ("name", "shape", "dtype")
_DTYPES = ("float32",)
_ORT_DTYPES = {"float32": "tensor(float)"}
_FIX = "re-export the bundle with models.export (or restore the original files)"


class ModelError(FusionError):
    """A model manifest or ONNX file is unusable; the message names the file, the key and the fix."""


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as declared in the manifest."""

    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class ModelSpec:
    """One ONNX model of the bundle: its file (as written and resolved) and its tensors."""

    file: str
    path: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class EncoderSpec(ModelSpec):
    """An encoder model plus the parameters of the preprocessing that feeds it."""

    preprocess: Mapping[str, Any]


@dataclass(frozen=True)
class Manifest:
    """A validated ``manifest.json``; see ``models/export.py`` for the schema."""

    path: Path
    format_version: int
    name: str
    trained: bool
    seed: int
    data_version: str
    embedding_dim: int
    classes: tuple[str, ...]
    thresholds: Mapping[str, float]
    encoders: Mapping[str, EncoderSpec]
    head: ModelSpec
    parity_max_abs_diff: Mapping[str, float]
    sha256: Mapping[str, str]
    export: Mapping[str, Any] | None = None
    # Below this cross-modal consistency the modalities disagree (tampering, drift, miscalibration).
    consistency_threshold: float | None = None

    @property
    def directory(self) -> Path:
        """The bundle directory (model files are resolved against it)."""
        return self.path.parent

    @property
    def models(self) -> dict[str, ModelSpec]:
        """Every model of the bundle: the three encoders by modality, then ``"head"``."""
        return {**self.encoders, "head": self.head}


# eq=False: fields are arrays, whose == is elementwise; identity comparison is the sane default.
@dataclass(frozen=True, eq=False)
class HeadOutput:
    """The fusion head's answer for one synchronised set.

    ``probabilities (C,)`` sigmoid of the logits, in manifest class order; ``certainty (3,)``,
    ``weights (3,)`` and ``present (3,)`` in :data:`MODALITIES` order; ``consistency`` the
    cross-modal agreement in [-1, 1] (exactly 1.0 with fewer than two modalities present);
    ``logits (C,)`` the raw logits.
    """

    probabilities: np.ndarray
    certainty: np.ndarray
    weights: np.ndarray
    consistency: float
    logits: np.ndarray
    present: np.ndarray


# --------------------------------------------------------------------------- manifest loading


class _Checker:
    """Builds ModelErrors that all name the manifest file and the key at fault."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, problem: str, fix: str = _FIX) -> ModelError:
        where = f"key '{key}'" if key else "top level"
        return ModelError(f"{self.path}: {where}: {problem}; {fix}")

    def keys(self, key: str, obj: Any, required: Sequence[str], optional: Sequence[str] = ()) -> dict:
        if not isinstance(obj, dict):
            raise self.fail(key, f"must be a JSON object, got {type(obj).__name__}")
        prefix = f"{key}." if key else ""
        for k in required:
            if k not in obj:
                raise self.fail(f"{prefix}{k}", "missing")
        for k in obj:
            if k not in required and k not in optional:
                raise self.fail(f"{prefix}{k}", f"unknown key (allowed: {', '.join([*required, *optional])})")
        return obj

    def typed(self, key: str, value: Any, kind: type | tuple[type, ...], what: str) -> Any:
        # bool is a subclass of int in Python; a JSON true where a number belongs is an error.
        if isinstance(value, bool) and kind is not bool:
            raise self.fail(key, f"must be {what}, got a boolean")
        if not isinstance(value, kind):
            raise self.fail(key, f"must be {what}, got {type(value).__name__} {value!r:.60}")
        return value

    def number(self, key: str, value: Any, lo: float, hi: float) -> float:
        v = float(self.typed(key, value, (int, float), "a number"))
        if not (math.isfinite(v) and lo <= v <= hi):
            raise self.fail(key, f"must be a finite number in [{lo:g}, {hi:g}], got {value!r}")
        return v


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tensor_specs(ck: _Checker, key: str, value: Any) -> tuple[TensorSpec, ...]:
    if not isinstance(value, list) or not value:
        raise ck.fail(key, "must be a non-empty list of {name, shape, dtype} objects")
    specs = []
    for i, item in enumerate(value):
        k = f"{key}[{i}]"
        ck.keys(k, item, _TENSOR_KEYS)
        name = ck.typed(f"{k}.name", item["name"], str, "a string")
        shape = ck.typed(f"{k}.shape", item["shape"], list, "a list of positive integers")
        if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
            raise ck.fail(f"{k}.shape", f"must be a non-empty list of positive integers (fixed shapes), got {shape!r}")
        dtype = ck.typed(f"{k}.dtype", item["dtype"], str, "a string")
        if dtype not in _DTYPES:
            raise ck.fail(f"{k}.dtype", f"unsupported dtype {dtype!r} (supported: {', '.join(_DTYPES)})")
        specs.append(TensorSpec(name, tuple(shape), dtype))
    if len({s.name for s in specs}) != len(specs):
        raise ck.fail(key, f"tensor names repeat: {[s.name for s in specs]}")
    return tuple(specs)


def _model_file(ck: _Checker, key: str, value: Any, directory: Path) -> tuple[str, Path]:
    file = ck.typed(key, value, str, "a file name relative to the manifest")
    pure = PurePosixPath(file)
    # Bundles are self-contained directories: a model path that is absolute or climbs out with
    # '..' would make the sha256 check vouch for a file outside the bundle.
    if not file or pure.is_absolute() or ".." in pure.parts or "\\" in file:
        raise ck.fail(key, f"{file!r} must be a plain path inside the bundle directory")
    return file, directory / pure


def _expect_shapes(ck: _Checker, key: str, specs: Sequence[TensorSpec], expected: Sequence[tuple[int, ...]],
                   why: str) -> None:
    got = [s.shape for s in specs]
    if got != [tuple(e) for e in expected]:
        raise ck.fail(key, f"shapes {got} do not match {why}: expected {[tuple(e) for e in expected]}")


def load_manifest(path: str | os.PathLike) -> Manifest:
    """Read and fully validate a bundle's ``manifest.json`` (including every file's sha256).

    Raises :class:`ModelError` naming the manifest and the key or model file at fault.
    """
    path = Path(path)
    ck = _Checker(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model manifest ({exc.strerror or exc}); check node.models "
                         f"in the rig config, or export a bundle with models.export") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: not valid JSON ({exc}); {_FIX}") from None
    ck.keys("", data, _REQUIRED_KEYS, _OPTIONAL_KEYS)

    version = ck.typed("format_version", data["format_version"], int, "an integer")
    if version != FORMAT_VERSION:
        raise ck.fail("format_version", f"unsupported version {version} (this node reads {FORMAT_VERSION})",
                      "export the bundle with a models.export that matches this node")
    name = ck.typed("name", data["name"], str, "a string")
    trained = ck.typed("trained", data["trained"], bool, "true or false")
    seed = ck.typed("seed", data["seed"], int, "an integer")
    data_version = ck.typed("data_version", data["data_version"], str, "a string")
    dim = ck.typed("embedding_dim", data["embedding_dim"], int, "a positive integer")
    if dim <= 0:
        raise ck.fail("embedding_dim", f"must be a positive integer, got {dim}")

    classes = ck.typed("classes", data["classes"], list, "a list of class names")
    if not classes or not all(isinstance(c, str) and c for c in classes):
        raise ck.fail("classes", "must be a non-empty list of non-empty strings")
    if len(set(classes)) != len(classes):
        raise ck.fail("classes", f"class names repeat: {classes}")
    thr_raw = ck.keys("thresholds", data["thresholds"], classes)
    thresholds = {c: ck.number(f"thresholds.{c}", thr_raw[c], 0.0, 1.0) for c in classes}

    directory = path.parent
    enc_raw = ck.keys("encoders", data["encoders"], MODALITIES)
    encoders: dict[str, EncoderSpec] = {}
    for m in MODALITIES:
        key = f"encoders.{m}"
        e = ck.keys(key, enc_raw[m], _ENCODER_KEYS)
        file, fpath = _model_file(ck, f"{key}.file", e["file"], directory)
        inputs = _tensor_specs(ck, f"{key}.inputs", e["inputs"])
        outputs = _tensor_specs(ck, f"{key}.outputs", e["outputs"])
        pp_raw = ck.typed(f"{key}.preprocess", e["preprocess"], dict, "an object")
        try:
            pp = PREPROCESSORS[m].from_dict(pp_raw)
        except (ValueError, TypeError) as exc:
            raise ck.fail(f"{key}.preprocess", str(exc)) from None
        # The preprocessing must produce exactly what the encoder was exported to take; a
        # mismatch here would otherwise surface as a shape error on the first live frame.
        pp_shapes = pp.output_shapes if isinstance(pp, RadarPreprocess) else (pp.output_shape,)
        _expect_shapes(ck, f"{key}.inputs", inputs, pp_shapes, f"what the preprocess block {pp!r} produces")
        _expect_shapes(ck, f"{key}.outputs", outputs, [(1, dim)], f"embedding_dim {dim}")
        encoders[m] = EncoderSpec(file, fpath, inputs, outputs, MappingProxyType(dict(pp_raw)))

    h = ck.keys("head", data["head"], _HEAD_KEYS)
    hfile, hpath = _model_file(ck, "head.file", h["file"], directory)
    hin = _tensor_specs(ck, "head.inputs", h["inputs"])
    hout = _tensor_specs(ck, "head.outputs", h["outputs"])
    if [s.name for s in hin] != list(HEAD_INPUTS):
        raise ck.fail("head.inputs", f"names must be {list(HEAD_INPUTS)} in that order, got {[s.name for s in hin]}")
    if [s.name for s in hout] != list(HEAD_OUTPUTS):
        raise ck.fail("head.outputs", f"names must be {list(HEAD_OUTPUTS)} in that order, got {[s.name for s in hout]}")
    _expect_shapes(ck, "head.inputs", hin, [(1, dim)] * 3 + [(1, 3)], f"embedding_dim {dim} and 3 modalities")
    _expect_shapes(ck, "head.outputs", hout, [(1, len(classes)), (1, 3), (1, 3), (1, 1)],
                   f"{len(classes)} classes and 3 modalities")
    head = ModelSpec(hfile, hpath, hin, hout)

    files = [s.file for s in encoders.values()] + [hfile]
    if len(set(files)) != len(files):
        raise ck.fail("encoders", f"every model needs its own file, got {files}")

    parity_raw = ck.keys("parity_max_abs_diff", data["parity_max_abs_diff"], files)
    parity = {}
    for f in files:
        v = ck.number(f"parity_max_abs_diff.{f}", parity_raw[f], 0.0, math.inf)
        if v > PARITY_TOLERANCE:
            raise ck.fail(f"parity_max_abs_diff.{f}", f"{v:.3g} exceeds {PARITY_TOLERANCE:g}: the ONNX file does "
                          f"not compute what the trained model does", "fix the export; do not deploy this bundle")
        parity[f] = v
    sha_raw = ck.keys("sha256", data["sha256"], files)
    for f in files:
        v = ck.typed(f"sha256.{f}", sha_raw[f], str, "a hex string")
        if not re.fullmatch(r"[0-9a-f]{64}", v):
            raise ck.fail(f"sha256.{f}", f"must be 64 lowercase hex digits, got {v!r:.80}")

    export = data.get("export")
    if export is not None:
        ck.typed("export", export, dict, "an object")
    consistency_threshold = data.get("consistency_threshold")
    if consistency_threshold is not None:
        consistency_threshold = ck.number("consistency_threshold", consistency_threshold, -1.0, 1.0)

    # Files last: all structural errors are reported without touching the disk again.
    for key, spec in [*((f"encoders.{m}.file", s) for m, s in encoders.items()), ("head.file", head)]:
        if not spec.path.is_file():
            raise ck.fail(key, f"model file {spec.file!r} not found in {directory}")
        digest = file_sha256(spec.path)
        if digest != sha_raw[spec.file]:
            raise ck.fail(f"sha256.{spec.file}", f"model file {spec.file!r} has sha256 {digest[:12]}..., the manifest "
                          f"says {sha_raw[spec.file][:12]}... (file modified, truncated or from another export)")

    return Manifest(
        path=path,
        format_version=version,
        name=name,
        trained=trained,
        seed=seed,
        data_version=data_version,
        embedding_dim=dim,
        classes=tuple(classes),
        thresholds=MappingProxyType(thresholds),
        encoders=MappingProxyType(encoders),
        head=head,
        parity_max_abs_diff=MappingProxyType(parity),
        sha256=MappingProxyType({f: sha_raw[f] for f in files}),
        export=MappingProxyType(dict(export)) if export is not None else None,
        consistency_threshold=consistency_threshold,
    )


# --------------------------------------------------------------------------- providers, sessions


def _default_trt_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fusion_node" / "tensorrt"


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
    ``$XDG_CACHE_HOME/fusion_node/tensorrt``) because building engines takes from seconds to
    minutes and would otherwise be repeated at every node start; ``trt_fp16`` allows fp16
    kernels. Whether a listed GPU provider really works is only known once a session exists;
    :class:`ModelRuntime` checks that.
    """
    if not isinstance(requested, str) or requested.lower() not in PROVIDER_CHOICES:
        raise ValueError(f"provider must be one of {', '.join(PROVIDER_CHOICES)}, got {requested!r}")
    available = set(ort.get_available_providers())
    providers: list[tuple[str, dict[str, Any]]] = []
    for name in _GPU_CHAIN[requested.lower()]:
        if name not in available:
            continue
        if name == _TRT:
            opts: dict[str, Any] = {"device_id": int(device_id), "trt_fp16_enable": bool(trt_fp16)}
            cache = Path(trt_cache_dir) if trt_cache_dir is not None else _default_trt_cache_dir()
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
            providers.append((_TRT, opts))
        elif name == _CUDA:
            providers.append((_CUDA, {"device_id": int(device_id)}))
    providers.append((_CPU, {}))
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
    # Provider failures are handled (and logged once) by ModelRuntime; keep onnxruntime's own
    # per-session logging to errors.
    so.log_severity_level = 3
    return so


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())  # onnxruntime messages are multi-line; keep the note one line
    # Drop onnxruntime's "/onnxruntime_src/...cc:123 void ns::Func(args) " source-location prefix.
    text = re.sub(r"^\S+\.(?:cc|cpp|h):\d+ .*?\) ", "", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _library_problem(provider: str) -> str:
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
        return _first_line(exc)
    return "the provider library loads, but no usable GPU/driver was found"


def _zeros_feed(spec: ModelSpec) -> dict[str, np.ndarray]:
    return {t.name: np.zeros(t.shape, dtype=t.dtype) for t in spec.inputs}


# --------------------------------------------------------------------------- the runtime


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # tanh form: no overflow warning for large |x|, unlike 1 / (1 + exp(-x)).
    return (0.5 * (1.0 + np.tanh(0.5 * x.astype(np.float64)))).astype(np.float32)


class ModelRuntime:
    """Loaded bundle: preprocessing, four onnxruntime sessions, and the encode/fuse calls.

    ``ModelRuntime(manifest, provider="auto", intra_op_threads=1)`` where ``manifest`` is a
    :class:`Manifest` or a path to ``manifest.json``. Loading validates the manifest, creates the
    sessions (checking their inputs/outputs against the manifest), and warms every session up
    with ``warmup_runs`` runs on zeros so the first live frame does not pay for lazy
    initialisation (or TensorRT engine building).

    ``provider`` is the execution provider actually in use (e.g. "CPUExecutionProvider"; if the
    sessions disagree, "mixed" and ``session_providers`` has the detail) and ``provider_note``
    says why, e.g. "CUDA requested but unavailable: ...; using CPU".
    """

    def __init__(
        self,
        manifest: Manifest | str | os.PathLike,
        provider: str = "auto",
        intra_op_threads: int = 1,
        *,
        trt_cache_dir: str | os.PathLike | None = None,
        trt_fp16: bool = True,
        warmup_runs: int = 3,
    ) -> None:
        self.manifest = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
        self.intra_op_threads = intra_op_threads
        session_options(intra_op_threads)  # validates the thread count before any work
        requested = provider.lower() if isinstance(provider, str) else provider
        chain = resolve_providers(requested, trt_cache_dir=trt_cache_dir, trt_fp16=trt_fp16)  # validates
        self.requested_provider: str = requested
        offered = [n for n, _ in chain]
        # What the request really asks for: an explicit "tensorrt"/"cuda" wants that provider even
        # when this onnxruntime build lacks it (that is worth a warning); "auto" wants the best
        # provider the build offers, and a CPU-only build is not a failure.
        wanted = _GPU_CHAIN[requested][0] if requested in ("tensorrt", "cuda") else offered[0]
        problems: list[str] = [f"{_SHORT[p]}: not in this onnxruntime build" for p in _GPU_CHAIN[requested]
                               if requested != "auto" and p not in offered]

        self.preprocessors: dict[str, Any] = {
            m: PREPROCESSORS[m].from_dict(dict(spec.preprocess)) for m, spec in self.manifest.encoders.items()
        }
        self._sessions: dict[str, ort.InferenceSession] = {}
        self.session_providers: dict[str, str] = {}
        for key, spec in self.manifest.models.items():
            session, used, found = self._load(spec, chain, warmup_runs)
            self._sessions[key] = session
            self.session_providers[key] = used
            problems += [p for p in found if p not in problems]
            # Learn once: a provider that did not take for one model will not for the next, so
            # later sessions start from what worked (no repeated load attempts, and no repeated
            # onnxruntime error output).
            names = [n for n, _ in chain]
            if used in names:
                chain = chain[names.index(used):]

        used_set = set(self.session_providers.values())
        self.provider: str = next(iter(used_set)) if len(used_set) == 1 else "mixed"
        if used_set != {wanted}:
            what = (f"auto: {_SHORT[wanted]} unavailable" if requested == "auto"
                    else f"{_SHORT[wanted]} requested but unavailable")
            using = _SHORT.get(self.provider, self.provider) if self.provider != "mixed" else "mixed (" + ", ".join(
                f"{k}={_SHORT.get(v, v)}" for k, v in self.session_providers.items()) + ")"
            self.provider_note: str = f"{what} ({'; '.join(problems) or 'no reason given'}); using {using}"
            log.warning("model bundle %s: %s", self.manifest.name, self.provider_note)
        else:
            if requested == "cpu":
                self.provider_note = "CPU requested; using CPU"
            elif wanted == _CPU:
                self.provider_note = f"{requested}: this onnxruntime build offers no GPU provider; using CPU"
            else:
                self.provider_note = f"{requested}: using {_SHORT[wanted]}"
            log.info("model bundle %s: %s", self.manifest.name, self.provider_note)

    # ------------------------------------------------------------------ loading

    def _load(
        self, spec: ModelSpec, chain: list[tuple[str, dict[str, Any]]], warmup_runs: int
    ) -> tuple[ort.InferenceSession, str, list[str]]:
        """Create, check and warm up one session, walking down the provider chain on failure.

        Returns the session, the provider it actually uses, and why any provider ahead of that
        one in the chain did not take.
        """
        problems: list[str] = []
        remaining = list(chain)
        while True:
            first = remaining[0][0]
            try:
                # enable_fallback=0: onnxruntime's own fallback would swallow the provider error
                # (printing it to stdout) and retry with a list of its choosing; we want the
                # error, to report it, and our own chain.
                session = ort.InferenceSession(str(spec.path), sess_options=session_options(self.intra_op_threads),
                                               providers=remaining, enable_fallback=0)
                self._check_io(spec, session)
                # A provider that loads can still fail on the first run (e.g. TensorRT engine
                # build); warming up here makes that a load-time fallback, not a live error.
                self._warm_up(spec, session, warmup_runs)
            except ModelError:
                raise
            except Exception as exc:  # noqa: BLE001 - any provider failure means: try the next one
                if first == _CPU:
                    raise ModelError(f"{self.manifest.path}: model file {spec.file!r}: onnxruntime cannot load or "
                                     f"run it ({_first_line(exc)}); {_FIX}") from None
                problems.append(f"{_SHORT.get(first, first)}: {_first_line(exc)}")
                remaining = remaining[1:]
                continue
            used = session.get_providers()[0]
            names = [n for n, _ in remaining]
            # Providers listed before the one in use were skipped silently by onnxruntime (it
            # does this when a provider library or the GPU is missing): find out why.
            for skipped in names[: names.index(used)] if used in names else names[:-1]:
                problems.append(f"{_SHORT.get(skipped, skipped)}: {_library_problem(skipped)}")
            return session, used, problems

    def _check_io(self, spec: ModelSpec, session: ort.InferenceSession) -> None:
        for kind, declared, actual in (("inputs", spec.inputs, session.get_inputs()),
                                       ("outputs", spec.outputs, session.get_outputs())):
            got = [(a.name, tuple(a.shape), a.type) for a in actual]
            want = [(t.name, t.shape, _ORT_DTYPES[t.dtype]) for t in declared]
            if got != want:
                raise ModelError(f"{self.manifest.path}: model file {spec.file!r} has {kind} {got}, the manifest "
                                 f"declares {want}; {_FIX}")

    @staticmethod
    def _warm_up(spec: ModelSpec, session: ort.InferenceSession, runs: int) -> None:
        feed = _zeros_feed(spec)
        for _ in range(max(0, runs)):
            session.run(None, feed)

    # ------------------------------------------------------------------ properties

    @property
    def classes(self) -> tuple[str, ...]:
        """Event class names, in the order of :attr:`HeadOutput.probabilities`."""
        return self.manifest.classes

    @property
    def consistency_threshold(self) -> float | None:
        """Consistency below which the present modalities are taken to disagree (None: not calibrated)."""
        return self.manifest.consistency_threshold

    @property
    def thresholds(self) -> Mapping[str, float]:
        """Decision threshold per class, from the manifest."""
        return self.manifest.thresholds

    @property
    def embedding_dim(self) -> int:
        """D, the width of every embedding."""
        return self.manifest.embedding_dim

    @property
    def audio_window_s(self) -> float:
        """Length of audio (seconds) the audio encoder looks at; the node cuts windows this long."""
        return self.preprocessors["audio"].window_s

    @property
    def audio_sample_rate_hz(self) -> int:
        """Sample rate the audio preprocessing expects; the node must resample to it."""
        return self.preprocessors["audio"].sample_rate_hz

    def __repr__(self) -> str:
        return (f"ModelRuntime({self.manifest.name!r}, provider={self.provider!r}, "
                f"trained={self.manifest.trained}, classes={list(self.classes)})")

    @property
    def name(self) -> str:
        """The bundle's name from the manifest."""
        return self.manifest.name

    @property
    def trained(self) -> bool:
        """False for an untrained bundle: its outputs must not be reported as detections."""
        return self.manifest.trained

    # ------------------------------------------------------------------ preprocessing

    def preprocess_camera(self, image_bgr: np.ndarray) -> np.ndarray:
        """BGR uint8 (H, W, 3) -> the camera encoder's input (see CameraPreprocess)."""
        pp: CameraPreprocess = self.preprocessors["camera"]
        return pp(image_bgr)

    def preprocess_radar(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Radar points (N, 6) -> the radar encoder's ``(points, mask)`` (see RadarPreprocess)."""
        pp: RadarPreprocess = self.preprocessors["radar"]
        return pp(points)

    def preprocess_audio(self, samples: np.ndarray) -> np.ndarray:
        """Mono float samples (n,) -> the audio encoder's log-mel input (see AudioPreprocess)."""
        pp: AudioPreprocess = self.preprocessors["audio"]
        return pp(samples)

    def preprocess(self, modality: str, *raw: np.ndarray) -> tuple[np.ndarray, ...]:
        """Preprocess one modality's raw data; returns the tuple ``encode(modality, *result)`` takes.

        ``preprocess("camera", image)`` -> ``(image_tensor,)``; ``preprocess("radar", points)``
        -> ``(points, mask)``; ``preprocess("audio", samples)`` -> ``(logmel,)``.
        """
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
        if len(raw) != 1:
            raise ValueError(f"{modality}: preprocess takes one raw array, got {len(raw)}")
        out = self.preprocessors[modality](raw[0])
        return out if isinstance(out, tuple) else (out,)

    # ------------------------------------------------------------------ inference

    def encode(self, modality: str, *arrays: np.ndarray) -> np.ndarray:
        """Run one encoder on its preprocessed inputs; returns the embedding ``(1, D)`` float32.

        ``encode("radar", points, mask)``; camera and audio take one array. Raises ValueError
        naming the modality and the expected shape if an input does not match the manifest.
        """
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
        spec = self.manifest.encoders[modality]
        if len(arrays) != len(spec.inputs):
            want = ", ".join(f"{t.name} {t.dtype} {t.shape}" for t in spec.inputs)
            raise ValueError(f"{modality}: expected {len(spec.inputs)} input array(s) ({want}), got {len(arrays)}")
        feed = {}
        for t, a in zip(spec.inputs, arrays):
            if not isinstance(a, np.ndarray) or a.dtype != np.dtype(t.dtype) or a.shape != t.shape:
                got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
                raise ValueError(f"{modality}: input '{t.name}' must be {t.dtype} with shape {t.shape}, got {got}")
            feed[t.name] = a
        return self._sessions[modality].run([spec.outputs[0].name], feed)[0]

    def fuse(self, embeddings: Mapping[str, np.ndarray | None]) -> HeadOutput:
        """Run the fusion head on the available embeddings.

        ``embeddings`` maps modality -> embedding ``(1, D)`` or ``(D,)``, or None (or no entry)
        when the modality is missing: its input is then zeros with ``present = 0``, which gives
        it exactly zero weight. Raises ValueError on unknown modalities, wrong shapes or
        non-finite values.
        """
        unknown = set(embeddings) - set(MODALITIES)
        if unknown:
            raise ValueError(f"fuse: unknown modalities {sorted(unknown)}; expected a subset of {MODALITIES}")
        dim = self.manifest.embedding_dim
        present = np.zeros((1, len(MODALITIES)), dtype=np.float32)
        feed: dict[str, np.ndarray] = {}
        for k, m in enumerate(MODALITIES):
            e = embeddings.get(m)
            if e is None:
                feed[m] = np.zeros((1, dim), dtype=np.float32)
                continue
            if not isinstance(e, np.ndarray) or not np.issubdtype(e.dtype, np.floating) \
                    or e.shape not in ((1, dim), (dim,)):
                got = f"{e.dtype} {e.shape}" if isinstance(e, np.ndarray) else type(e).__name__
                raise ValueError(f"fuse: {m} embedding must be float32 with shape (1, {dim}) or ({dim},), got {got}")
            if not np.isfinite(e).all():
                raise ValueError(f"fuse: {m} embedding contains NaN or inf")
            feed[m] = np.ascontiguousarray(e.reshape(1, dim), dtype=np.float32)
            present[0, k] = 1.0
        feed["present"] = present
        logits, certainty, weights, consistency = self._sessions["head"].run(list(HEAD_OUTPUTS), feed)
        return HeadOutput(
            probabilities=_sigmoid(logits[0]),
            certainty=certainty[0],
            weights=weights[0],
            consistency=float(consistency[0, 0]),
            logits=logits[0],
            present=present[0],
        )
