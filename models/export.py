"""Export trained (or untrained) torch models to an ONNX bundle the fusion node can load.

A bundle is a directory holding ``camera.onnx``, ``radar.onnx``, ``audio.onnx``, ``head.onnx``
and ``manifest.json``. Every model has fixed shapes with batch 1 (the node processes one
synchronised set at a time, and fixed shapes let TensorRT build one engine up front). Each ONNX
file is self-contained: weights are stored inside it, never as external data files.

After export every file is run in onnxruntime (CPU) on random inputs and compared with torch;
the largest absolute difference is recorded and export fails (:class:`ExportError`, naming the
file) if it exceeds ``parity_tol`` (1e-4). The manifest is written last, and only after every
check passed, so a directory with a manifest is always a complete bundle.

Exporter: the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) is the default.
In torch 2.13 it still works (with a DeprecationWarning), honours ``opset=17`` and takes well
under a second for all four models. The dynamo exporter (``exporter="dynamo"``) also works but
cannot emit opset 17 for these models (its down-converter fails on the Reduce* ops), so it is
asked for ``max(opset, 18)``; it takes several seconds and prints progress. Use it if the
TorchScript exporter is ever removed. The opset actually written is recorded per file.

Manifest schema (``manifest.json``, ``format_version`` 1; every key below is required unless
marked optional, and no other key is allowed)::

    {
      "format_version": 1,
      "name": str,                      # bundle name, e.g. "untrained-seed0"
      "trained": bool,                  # false: random weights, outputs are meaningless
      "seed": int,                      # seed of initialisation / training
      "data_version": str,              # dataset the weights were trained on ("none" if untrained)
      "embedding_dim": int,             # D, the width of every embedding
      "classes": [str, ...],            # C event classes, order of the head's logits
      "thresholds": {class: float},     # decision threshold in [0, 1] per class (default 0.5)
      "consistency_threshold": float,   # optional: below it the modalities disagree (tampering, drift)
      "encoders": {                     # exactly the keys "camera", "radar", "audio"
        modality: {
          "file": str,                  # ONNX file name, relative to the manifest's directory
          "inputs":  [{"name": str, "shape": [int, ...], "dtype": "float32"}, ...],
          "outputs": [{"name": "embedding", "shape": [1, D], "dtype": "float32"}],
          "preprocess": {...}           # the modality's fusion_node.preprocess <Class>.to_dict()
        }
      },
      "head": {"file": str, "inputs": [...], "outputs": [...]},
      "parity_max_abs_diff": {file: float},   # onnxruntime CPU vs torch, every model file
      "sha256": {file: hex},                  # lowercase hex sha256 of every model file
      "export": {                       # optional provenance, not used by the node
        "exporter": "torchscript" | "dynamo", "opset": {file: int},
        "torch_version": str, "onnx_version": str, "onnxruntime_version": str
      }
    }

Tensor names: camera ``image (1, 3, H, W)``; radar ``points (1, P, F)`` (F = 5, or 8 with image coordinates) and ``mask (1, P)``;
audio ``logmel (1, 1, n_mels, T)``; every encoder outputs ``embedding (1, D)``. The head takes
``camera``, ``radar``, ``audio`` ``(1, D)`` and ``present (1, 3)`` and outputs ``logits (1, C)``,
``certainty (1, 3)``, ``weights (1, 3)`` and ``consistency (1, 1)`` (see
:class:`models.architectures.FusionHead`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import external_data_helper
from torch import nn

from fusion_node.manifest import FORMAT_VERSION, PARITY_TOLERANCE, file_sha256
from fusion_node.preprocess import AudioPreprocess, CameraPreprocess, RadarPreprocess
from models.architectures import (
    DEFAULT_CLASSES,
    HEAD_INPUTS,
    HEAD_OUTPUTS,
    MODALITIES,
    AudioEncoder,
    CameraEncoder,
    FusionHead,
    RadarEncoder,
)

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "ENCODER_INPUT_NAMES",
    "ExportError",
    "export_bundle",
    "export_untrained_bundle",
]

MANIFEST_NAME = "manifest.json"
ENCODER_INPUT_NAMES: dict[str, tuple[str, ...]] = {
    "camera": ("image",),
    "radar": ("points", "mask"),
    "audio": ("logmel",),
}
ENCODER_OUTPUT_NAME = "embedding"
HEAD_FILE = "head.onnx"
DEFAULT_THRESHOLD = 0.5
_PREPROCESS_TYPES = {"camera": CameraPreprocess, "radar": RadarPreprocess, "audio": AudioPreprocess}


class ExportError(RuntimeError):
    """Export produced an unusable bundle (parity failure, bad shapes); names the file at fault."""


def _encoder_example_inputs(modality: str, pp: Any, gen: torch.Generator) -> list[tuple[torch.Tensor, ...]]:
    """Inputs for tracing (the first tuple) and for the parity check (all of them).

    Parity covers the edge cases the node will meet, not just the typical one: a half-full and an
    empty radar frame, and silence-level log-mel values.
    """
    if modality == "camera":
        shape = pp.output_shape
        # Pure noise averages out in the global pool; a per-channel offset (a "coloured scene")
        # gives inputs whose embeddings really differ.
        colour = torch.rand(1, 3, 1, 1, generator=gen) * 4.0 - 2.0
        return [(torch.randn(shape, generator=gen),), (colour + 0.5 * torch.randn(shape, generator=gen),)]
    if modality == "radar":
        pshape, mshape = pp.output_shapes
        points = torch.randn(pshape, generator=gen)
        full = torch.ones(mshape)
        half = torch.zeros(mshape)
        half[:, : max(1, mshape[1] // 2)] = 1.0
        empty = torch.zeros(mshape)
        return [(points, full), (points * half.unsqueeze(-1), half), (torch.zeros(pshape), empty)]
    if modality == "audio":
        shape = pp.output_shape
        silence = torch.full(shape, math.log(AudioPreprocess.LOG_FLOOR))
        return [(torch.randn(shape, generator=gen) * 3.0 - 4.0,), (silence,)]
    raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")


def _head_example_inputs(embed_dim: int, gen: torch.Generator) -> list[tuple[torch.Tensor, ...]]:
    def unit() -> torch.Tensor:
        v = torch.randn(1, embed_dim, generator=gen)
        return v / v.norm(dim=-1, keepdim=True)

    cases = []
    # All present, one missing, one present, none present: the masked softmax's edge cases.
    for present in ([1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]):
        p = torch.tensor([present])
        embs = [unit() * p[0, k] for k in range(len(MODALITIES))]
        cases.append((*embs, p))
    return cases


@contextlib.contextmanager
def _eval_mode(*modules: nn.Module):
    # Export must see eval behaviour (BatchNorm running stats, no dropout), but a training loop
    # that exports a checkpoint mid-run expects its modules back in the mode they were in.
    modes = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


def _torch_outputs(model: nn.Module, args: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    with torch.no_grad():
        out = model(*args)
    if isinstance(out, torch.Tensor):
        out = (out,)
    return [o.detach().cpu().numpy() for o in out]


def _export_one(
    model: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    opset: int,
    exporter: str,
) -> None:
    if exporter == "torchscript":
        with warnings.catch_warnings():
            # The deprecation notice is expected (see the module docstring) and would otherwise
            # be printed once per exported model.
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx\.")
            torch.onnx.export(
                model,
                args,
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=list(input_names),
                output_names=list(output_names),
                do_constant_folding=True,
                export_params=True,
            )
    elif exporter == "dynamo":
        # The dynamo exporter implements opset >= 18 only and its down-conversion fails on these
        # graphs (leaving 18 anyway, after printing a traceback), so ask for 18 directly.
        torch.onnx.export(
            model,
            args,
            str(path),
            dynamo=True,
            external_data=False,  # one self-contained file; the default would write path.data
            opset_version=max(opset, 18),
            input_names=list(input_names),
            output_names=list(output_names),
            verbose=False,
        )
    else:
        raise ValueError(f"exporter must be 'torchscript' or 'dynamo', got {exporter!r}")


def _check_onnx_file(path: Path, input_names: Sequence[str], output_names: Sequence[str]) -> int:
    """Structural checks on an exported file; returns its default-domain opset."""
    proto = onnx.load(str(path), load_external_data=False)
    tensors = list(proto.graph.initializer) + [
        a.t for node in proto.graph.node for a in node.attribute if a.type == onnx.AttributeProto.TENSOR
    ]
    external = [t.name for t in tensors if external_data_helper.uses_external_data(t)]
    # Exporters write external data next to the model; any stray file there means the same.
    external += [p.name for p in path.parent.iterdir() if p.name.startswith(path.name) and p != path]
    if external:
        raise ExportError(f"{path.name}: weights were written as external data ({external[:3]}...); "
                          f"the bundle needs one self-contained file per model")
    onnx.checker.check_model(proto)
    got_in = [i.name for i in proto.graph.input]
    got_out = [o.name for o in proto.graph.output]
    if got_in != list(input_names) or got_out != list(output_names):
        raise ExportError(f"{path.name}: exported graph has inputs {got_in} and outputs {got_out}, "
                          f"expected {list(input_names)} and {list(output_names)}")
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), -1)


def _parity(
    path: Path,
    model: nn.Module,
    cases: Sequence[tuple[torch.Tensor, ...]],
    input_names: Sequence[str],
    tol: float,
) -> tuple[float, list[tuple[int, ...]]]:
    """Max |onnxruntime - torch| over every case and output; raises ExportError above ``tol``."""
    so = ort.SessionOptions()
    # Same optimisation level as the node uses, so the numbers compared are the ones it will see.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    worst = 0.0
    shapes: list[tuple[int, ...]] = []
    for case in cases:
        expected = _torch_outputs(model, case)
        got = sess.run(None, {n: t.numpy() for n, t in zip(input_names, case)})
        if len(got) != len(expected):
            raise ExportError(f"{path.name}: onnxruntime returned {len(got)} outputs, torch {len(expected)}")
        shapes = [tuple(g.shape) for g in got]
        for k, (g, e) in enumerate(zip(got, expected)):
            if g.shape != e.shape:
                raise ExportError(f"{path.name}: output {k} has shape {g.shape} in onnxruntime, {e.shape} in torch")
            if not (np.isfinite(g).all() and np.isfinite(e).all()):
                raise ExportError(f"{path.name}: output {k} is not finite (NaN/inf) on a parity input")
            worst = max(worst, float(np.max(np.abs(g.astype(np.float64) - e.astype(np.float64)), initial=0.0)))
    if worst > tol:
        raise ExportError(f"{path.name}: onnxruntime differs from torch by {worst:.3g} (> {tol:g}); "
                          f"the exported graph does not compute what the torch model does")
    return worst, shapes


def _spec(names: Sequence[str], shapes: Sequence[Sequence[int]]) -> list[dict[str, Any]]:
    return [{"name": n, "shape": [int(d) for d in s], "dtype": "float32"} for n, s in zip(names, shapes)]


def _validate_args(
    encoders: Mapping[str, nn.Module],
    preprocess: Mapping[str, Any],
    classes: Sequence[str],
    thresholds: Mapping[str, float] | None,
    embed_dim: int,
) -> tuple[list[str], dict[str, float]]:
    if set(encoders) != set(MODALITIES):
        raise ValueError(f"encoders must have exactly the keys {list(MODALITIES)}, got {sorted(encoders)}")
    if set(preprocess) != set(MODALITIES):
        raise ValueError(f"preprocess must have exactly the keys {list(MODALITIES)}, got {sorted(preprocess)}")
    for m, cls in _PREPROCESS_TYPES.items():
        if not isinstance(preprocess[m], cls):
            raise ValueError(f"preprocess[{m!r}] must be a {cls.__name__}, got {type(preprocess[m]).__name__}")
    class_list = list(classes)
    if not class_list or not all(isinstance(c, str) and c for c in class_list):
        raise ValueError(f"classes must be a non-empty sequence of non-empty strings, got {classes!r}")
    if len(set(class_list)) != len(class_list):
        raise ValueError(f"classes must be unique, got {class_list}")
    if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim <= 0:
        raise ValueError(f"embed_dim must be a positive int, got {embed_dim!r}")
    thr = {c: DEFAULT_THRESHOLD for c in class_list}
    for c, v in (thresholds or {}).items():
        if c not in thr:
            raise ValueError(f"thresholds: {c!r} is not one of the classes {class_list}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0.0 <= float(v) <= 1.0):
            raise ValueError(f"thresholds[{c!r}] must be a number in [0, 1], got {v!r}")
        thr[c] = float(v)
    return class_list, thr


def export_bundle(
    out_dir: str | os.PathLike,
    encoders: Mapping[str, nn.Module],
    head: nn.Module,
    *,
    classes: Sequence[str],
    preprocess: Mapping[str, Any],
    embed_dim: int,
    trained: bool,
    seed: int,
    data_version: str,
    name: str,
    thresholds: Mapping[str, float] | None = None,
    consistency_threshold: float | None = None,
    opset: int = 17,
    exporter: str = "torchscript",
    parity_tol: float = PARITY_TOLERANCE,
) -> Path:
    """Export the three encoders and the head to ``out_dir``; returns the ``manifest.json`` path.

    ``encoders`` maps "camera", "radar", "audio" to their modules; ``preprocess`` maps the same
    keys to the :mod:`fusion_node.preprocess` objects whose outputs the encoders consume (their
    output shapes fix the ONNX input shapes). ``thresholds`` may name a subset of ``classes``;
    the rest default to 0.5. Existing bundle files in ``out_dir`` are replaced only once the new
    export has passed every check. Raises :class:`ExportError` (naming the file) on a parity
    failure or an unexpected output shape, ValueError on bad arguments.
    """
    class_list, thr = _validate_args(encoders, preprocess, classes, thresholds, embed_dim)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Parity inputs come from a private generator seeded from the bundle seed: reproducible, and
    # the caller's global RNG is left alone.
    gen = torch.Generator().manual_seed(int(seed))

    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "name": str(name),
        "trained": bool(trained),
        "seed": int(seed),
        "data_version": str(data_version),
        "embedding_dim": int(embed_dim),
        "classes": class_list,
        "thresholds": thr,
        **({} if consistency_threshold is None else {"consistency_threshold": round(float(consistency_threshold), 4)}),
        "encoders": {},
        "head": {},
        "parity_max_abs_diff": {},
        "sha256": {},
        "export": {
            "exporter": exporter,
            "opset": {},
            "torch_version": torch.__version__,
            "onnx_version": onnx.__version__,
            "onnxruntime_version": ort.__version__,
        },
    }

    # Export into a scratch directory inside out_dir (same filesystem, so the final moves are
    # atomic renames) and only move files into place when everything passed.
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    try:
        with _eval_mode(head, *encoders.values()):
            for modality in MODALITIES:
                file = f"{modality}.onnx"
                model = encoders[modality]
                cases = _encoder_example_inputs(modality, preprocess[modality], gen)
                in_names = ENCODER_INPUT_NAMES[modality]
                out_shape = _torch_outputs(model, cases[0])[0].shape
                if out_shape != (1, embed_dim):
                    raise ExportError(f"{file}: the {modality} encoder outputs {out_shape}, expected (1, {embed_dim})")
                _export_one(model, cases[0], tmp / file, in_names, [ENCODER_OUTPUT_NAME], opset, exporter)
                manifest["export"]["opset"][file] = _check_onnx_file(tmp / file, in_names, [ENCODER_OUTPUT_NAME])
                diff, out_shapes = _parity(tmp / file, model, cases, in_names, parity_tol)
                manifest["parity_max_abs_diff"][file] = diff
                manifest["encoders"][modality] = {
                    "file": file,
                    "inputs": _spec(in_names, [tuple(t.shape) for t in cases[0]]),
                    "outputs": _spec([ENCODER_OUTPUT_NAME], out_shapes),
                    "preprocess": preprocess[modality].to_dict(),
                }

            cases = _head_example_inputs(embed_dim, gen)
            outs = _torch_outputs(head, cases[0])
            expected = [(1, len(class_list)), (1, 3), (1, 3), (1, 1)]
            if [o.shape for o in outs] != expected:
                raise ExportError(f"{HEAD_FILE}: the head outputs shapes {[o.shape for o in outs]}, "
                                  f"expected {expected} "
                                  f"(is num_classes == len(classes) == {len(class_list)}?)")
            _export_one(head, cases[0], tmp / HEAD_FILE, HEAD_INPUTS, HEAD_OUTPUTS, opset, exporter)
            manifest["export"]["opset"][HEAD_FILE] = _check_onnx_file(tmp / HEAD_FILE, HEAD_INPUTS, HEAD_OUTPUTS)
            diff, out_shapes = _parity(tmp / HEAD_FILE, head, cases, HEAD_INPUTS, parity_tol)
            manifest["parity_max_abs_diff"][HEAD_FILE] = diff
            manifest["head"] = {
                "file": HEAD_FILE,
                "inputs": _spec(HEAD_INPUTS, [tuple(t.shape) for t in cases[0]]),
                "outputs": _spec(HEAD_OUTPUTS, out_shapes),
            }

        files = [f"{m}.onnx" for m in MODALITIES] + [HEAD_FILE]
        manifest["sha256"] = {f: file_sha256(tmp / f) for f in files}
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        # Manifest last: a reader that finds a manifest finds the files it describes (the sha256
        # check in fusion_node.manifest catches a reader racing an in-progress re-export).
        for f in files + [MANIFEST_NAME]:
            os.replace(tmp / f, out_dir / f)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir / MANIFEST_NAME


def export_untrained_bundle(out_dir: str | os.PathLike, seed: int = 0, embed_dim: int = 64) -> Path:
    """Export randomly initialised models (``trained: false``); returns the manifest path.

    Deterministic for a given ``seed`` (same weights, same files) and quick (about a second on
    two CPU cores). For tests and demos until trained models exist: the outputs are meaningless.
    """
    # fork_rng: seed the global RNG that nn.Module initialisers use without changing the
    # caller's RNG state afterwards.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        encoders = {
            "camera": CameraEncoder(embed_dim),
            "radar": RadarEncoder(embed_dim),
            "audio": AudioEncoder(embed_dim),
        }
        head = FusionHead(embed_dim, len(DEFAULT_CLASSES))
    preprocess = {"camera": CameraPreprocess(), "radar": RadarPreprocess(), "audio": AudioPreprocess()}
    return export_bundle(
        out_dir,
        encoders,
        head,
        classes=DEFAULT_CLASSES,
        preprocess=preprocess,
        embed_dim=embed_dim,
        trained=False,
        seed=int(seed),
        data_version="none",
        name=f"untrained-seed{int(seed)}",
    )
