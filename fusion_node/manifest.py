"""A model bundle's ``manifest.json``: its schema as dataclasses, and the loader that validates it.

A bundle (written by ``models.export``) is a directory holding one ONNX file per encoder, the
head's ONNX file and ``manifest.json``. :func:`load_manifest` validates the manifest completely
(keys, types, shapes, files present, sha256) before anything runs, and every problem is a
:class:`ModelError` naming the manifest, the key or file at fault and what to do. The schema is
documented in ``models/export.py``.

A bundle may also have batch-N copies of its models (written by ``models.batched``) for a GPU
runtime that batches encoders across rigs; :func:`load_batched` checks such a copy against the
bundle it was made from. Running a bundle is the runtimes' business (``fusion_node.runtime``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

from .errors import FusionError
from .preprocess import PREPROCESSORS, RadarPreprocess
from .vocabulary import MODALITIES

__all__ = [
    "FORMAT_VERSION",
    "PARITY_TOLERANCE",
    "HEAD_INPUTS",
    "HEAD_OUTPUTS",
    "BATCHED_NAME",
    "REEXPORT_HINT",
    "ModelError",
    "TensorSpec",
    "ModelSpec",
    "EncoderSpec",
    "Manifest",
    "BatchedModels",
    "file_sha256",
    "load_manifest",
    "load_batched",
]

FORMAT_VERSION = 1
# Largest onnxruntime-vs-torch difference a bundle (or a batch-N copy) may record.
PARITY_TOLERANCE = 1e-4

# The head takes one embedding per modality (vocabulary order) and the presence mask.
HEAD_INPUTS: tuple[str, ...] = (*MODALITIES, "present")
HEAD_OUTPUTS: tuple[str, ...] = ("logits", "certainty", "weights", "consistency")
# The file a batch-N copy of a bundle is described by (next to its model files).
BATCHED_NAME = "batched.json"

_REQUIRED_KEYS = (
    "format_version", "name", "trained", "seed", "data_version", "embedding_dim", "classes",
    "thresholds", "encoders", "head", "parity_max_abs_diff", "sha256",
)
_OPTIONAL_KEYS = ("export", "consistency_threshold")
_ENCODER_KEYS = ("file", "inputs", "outputs", "preprocess")
_HEAD_KEYS = ("file", "inputs", "outputs")
_TENSOR_KEYS = ("name", "shape", "dtype")
_DTYPES = ("float32",)
REEXPORT_HINT = "re-export the bundle with models.export (or restore the original files)"
_BATCHED_FIX = "re-run models.batched.export_batched on this bundle"


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


# --------------------------------------------------------------------------- manifest loading


class _Checker:
    """Builds ModelErrors that all name the manifest file and the key at fault."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, problem: str, fix: str = REEXPORT_HINT) -> ModelError:
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
        raise ModelError(f"{path}: not valid JSON ({exc}); {REEXPORT_HINT}") from None
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
    n = len(MODALITIES)
    _expect_shapes(ck, "head.inputs", hin, [(1, dim)] * n + [(1, n)], f"embedding_dim {dim} and {n} modalities")
    _expect_shapes(ck, "head.outputs", hout, [(1, len(classes)), (1, n), (1, n), (1, 1)],
                   f"{len(classes)} classes and {n} modalities")
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


# --------------------------------------------------------------------------- batch-N copies


@dataclass(frozen=True)
class BatchedModels:
    """A checked batch-N copy of a bundle's models (``batched.json``, see ``models/batched.py``).

    ``paths`` maps each model key (the three modalities and ``"head"``) to its batch-``batch``
    ONNX file.
    """

    path: Path
    batch: int
    dynamic: bool
    paths: Mapping[str, Path]
    parity_max_abs_diff: Mapping[str, float]


def load_batched(path: str | os.PathLike, manifest: Manifest) -> BatchedModels:
    """Read a ``batched.json`` and check it was made from ``manifest`` and that its files are intact.

    Raises :class:`ModelError` naming the file and what is wrong.
    """
    path = Path(path)
    try:
        meta = json.loads(path.read_text())
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the batched models ({exc.strerror or exc}); {_BATCHED_FIX}") from None
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: not valid JSON ({exc}); {_BATCHED_FIX}") from None
    try:
        batch, dynamic, files = meta["batch"], meta["dynamic"], meta["files"]
        source, sha, parity = meta["source_sha256"], meta["sha256"], meta["parity_max_abs_diff"]
    except (KeyError, TypeError) as exc:
        raise ModelError(f"{path}: not a batched.json (no key {exc}); {_BATCHED_FIX}") from None
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ModelError(f"{path}: key 'batch' must be a positive integer, got {batch!r}; {_BATCHED_FIX}")
    if not isinstance(files, dict) or set(files) != set(manifest.models):
        raise ModelError(f"{path}: key 'files' must name the models {sorted(manifest.models)}; {_BATCHED_FIX}")
    if dict(source) != dict(manifest.sha256):
        raise ModelError(f"{path}: made from another bundle than {manifest.path}; {_BATCHED_FIX}")
    paths = {}
    for key, file in files.items():
        p = path.parent / file
        if not p.is_file() or file_sha256(p) != sha.get(file):
            raise ModelError(f"{path}: {file} is missing or modified; {_BATCHED_FIX}")
        diff = parity.get(file)
        if not isinstance(diff, (int, float)) or not 0.0 <= diff <= PARITY_TOLERANCE:
            raise ModelError(f"{path}: {file} parity {diff!r} is not within {PARITY_TOLERANCE:g}; {_BATCHED_FIX}")
        paths[key] = p
    return BatchedModels(path, batch, bool(dynamic), MappingProxyType(paths),
                         MappingProxyType({files[k]: float(parity[files[k]]) for k in files}))
