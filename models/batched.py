"""Batch-N copies of a bundle's models, for encoders batched across the rigs of one node.

The exported bundle fixes batch 1 (``models.export``). The architectures are batch-generic (no
shape constant depends on the batch), so a batch-N model is the same graph with the batch
dimension of every input and output set to N: :func:`export_batched` writes those copies next
to nothing else, checks each one against the batch-1 original sample by sample on
onnxruntime (CPU), and records the result in ``batched.json``::

    {"batch": N, "dynamic": false, "source_manifest": path, "source_sha256": {file: hex},
     "files": {"camera": "camera.onnx", ...}, "sha256": {file: hex}, "parity_max_abs_diff": {file: x}}

``dynamic=True`` writes a symbolic batch dimension ``"N"`` instead (any batch size; TensorRT then
needs an optimisation profile, so fixed N is the default). The node reads such a directory with
:func:`fusion_node.manifest.load_batched` (which checks it against the bundle) and hands it to
``fusion_node.gpu_runtime.GpuRuntime``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from fusion_node.manifest import BATCHED_NAME, PARITY_TOLERANCE, file_sha256, load_manifest

__all__ = ["export_batched"]


def _set_batch(model, batch: int | None) -> None:
    for t in list(model.graph.input) + list(model.graph.output):
        dim = t.type.tensor_type.shape.dim[0]
        if batch is None:
            dim.ClearField("dim_value")
            dim.dim_param = "N"
        else:
            dim.ClearField("dim_param")
            dim.dim_value = int(batch)
    del model.graph.value_info[:]  # intermediate shapes were inferred for batch 1


def export_batched(manifest_path: str | os.PathLike, out_dir: str | os.PathLike, batch: int,
                   dynamic: bool = False, seed: int = 0) -> Path:
    """Write batch-``batch`` copies of the bundle's four models into ``out_dir``; returns ``batched.json``.

    Raises ValueError if a copy does not reproduce the batch-1 model within 1e-4.
    """
    # onnx is part of the training extra, not of the node's install.
    import onnx
    import onnxruntime as ort

    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    manifest = load_manifest(manifest_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files, parity, sha = {}, {}, {}
    so = ort.SessionOptions()
    so.log_severity_level = 3
    for key, spec in manifest.models.items():
        model = onnx.load(str(spec.path))
        _set_batch(model, None if dynamic else batch)
        onnx.checker.check_model(model)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}-", suffix=".onnx", dir=out_dir)
        os.close(fd)
        onnx.save(model, tmp)
        try:
            big = ort.InferenceSession(tmp, so, providers=["CPUExecutionProvider"])
            one = ort.InferenceSession(str(spec.path), so, providers=["CPUExecutionProvider"])
            feed = {t.name: rng.standard_normal((batch, *t.shape[1:])).astype(np.float32) for t in spec.inputs}
            outs = big.run(None, feed)
            diff = 0.0
            for b in range(batch):
                ref = one.run(None, {k: v[b:b + 1] for k, v in feed.items()})
                diff = max(diff, max(float(np.abs(o[b:b + 1] - r).max()) for o, r in zip(outs, ref)))
            if diff > PARITY_TOLERANCE:
                raise ValueError(f"{spec.file}: batch-{batch} copy differs from the batch-1 model by {diff:.3g}")
            os.replace(tmp, out_dir / spec.file)
        finally:
            Path(tmp).unlink(missing_ok=True)
        files[key] = spec.file
        parity[spec.file] = diff
        sha[spec.file] = file_sha256(out_dir / spec.file)
    meta = {"batch": batch, "dynamic": bool(dynamic), "source_manifest": str(Path(manifest_path).resolve()),
            "source_sha256": dict(manifest.sha256), "files": files, "sha256": sha, "parity_max_abs_diff": parity}
    path = out_dir / BATCHED_NAME
    path.write_text(json.dumps(meta, indent=2) + "\n")
    return path

