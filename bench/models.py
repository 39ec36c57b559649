"""The benchmark's models and the fused-step baseline: torch eager vs onnxruntime, same weights.

:func:`prepare` builds the untrained torch modules from a seed (the same architectures and
initialisation as ``models.export.export_untrained_bundle``), exports exactly those modules to
an ONNX bundle with ``models.export.export_bundle`` (cached per seed), and keeps the modules,
so both sides of the comparison hold identical weights; :func:`fused_step_baseline` also
checks that by comparing their outputs.

The fused step is what the node does per set after preprocessing: the three encoders and the
fusion head on preprocessed inputs. Both sides run single-threaded (onnxruntime with the
node's session options, torch with ``torch.set_num_threads(1)``), as the node runs.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from fusion_node import paths
from fusion_node.cpu_runtime import ModelRuntime
from fusion_node.gpu_runtime import GpuRuntime, gpu_problem
from fusion_node.preprocess import AudioPreprocess, CameraPreprocess
from fusion_node.runtime import Runtime
from fusion_node.vocabulary import MODALITIES
from models.batched import export_batched
from models.dataset import PREPROCESS

__all__ = ["cache_dir", "prepare", "fused_step_baseline", "gpu_step_baseline", "sample_inputs"]


def cache_dir() -> Path:
    """Where the benchmark keeps the models it exports (inside the project's one cache folder)."""
    return paths.cache_dir("bench")


def _modules(seed: int, embed_dim: int):
    import torch

    from models.architectures import (
        DEFAULT_CLASSES,
        AudioEncoder,
        CameraEncoder,
        FusionHead,
        RadarEncoder,
    )
    from models.camera_distill import STUDENT_CONFIG

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        # The shipped encoders' shapes (the camera's stem, blocks and spatial layout; the radar's
        # points with image coordinates), so the timings are theirs.
        encoders = {"camera": CameraEncoder(**{**STUDENT_CONFIG, "embed_dim": embed_dim}),
                    "radar": RadarEncoder(embed_dim, in_features=PREPROCESS["radar"].out_features),
                    "audio": AudioEncoder(embed_dim)}
        head = FusionHead(embed_dim, len(DEFAULT_CLASSES))
    for m in (*encoders.values(), head):
        m.eval()
    return encoders, head


def prepare(seed: int = 0, embed_dim: int = 128, directory: Path | None = None):
    """``(manifest_path, encoders, head)``: an ONNX bundle and the torch modules it was exported from.

    The architecture and sizes are those of the shipped default models (embedding 128), so the
    timings are theirs; the weights are random, which costs the same to run.

    Needs torch (the ``train`` extra). The bundle is exported once per seed into the cache.
    """
    from models.architectures import DEFAULT_CLASSES
    from models.export import MANIFEST_NAME, export_bundle

    encoders, head = _modules(seed, embed_dim)
    # Keyed by the camera's shape too: a cached export of another shape would not match the
    # torch modules the bench compares it with.
    shape = hashlib.sha256("".join(repr(m) for m in (*encoders.values(), head)).encode()).hexdigest()[:8]
    out = (directory or cache_dir()) / f"untrained-v3-{shape}-seed{seed}-d{embed_dim}"
    manifest = out / MANIFEST_NAME
    if not manifest.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".bench-export-", dir=out.parent))
        try:
            export_bundle(tmp, encoders, head, classes=DEFAULT_CLASSES,
                          preprocess={"camera": CameraPreprocess(), "radar": PREPROCESS["radar"],
                                      "audio": AudioPreprocess()},
                          embed_dim=embed_dim, trained=False, seed=seed, data_version="none",
                          name=f"untrained-seed{seed}")
            try:
                tmp.rename(out)
            except OSError:  # exported concurrently by another run: use that one
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest, encoders, head


def sample_inputs(runtime: Runtime, seed: int = 0) -> dict[str, tuple[np.ndarray, ...]]:
    """Preprocessed inputs for the three encoders from synthetic raw data (what the node feeds)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    points = np.column_stack([rng.uniform(-5, 5, 200), rng.uniform(0.5, 12, 200), rng.uniform(-1, 2, 200),
                              rng.normal(0, 1.5, 200), rng.uniform(5, 40, 200),
                              rng.uniform(-80, -60, 200)]).astype(np.float32)
    audio = (0.1 * rng.standard_normal(int(runtime.audio_window_s * runtime.audio_sample_rate_hz))).astype(np.float32)
    return {"camera": runtime.preprocess("camera", image), "radar": runtime.preprocess("radar", points),
            "audio": runtime.preprocess("audio", audio)}


def _time(fn, iterations: int, warmup: int) -> np.ndarray:
    for _ in range(warmup):
        fn()
    out = np.empty(iterations)
    for i in range(iterations):
        t = time.perf_counter_ns()
        fn()
        out[i] = (time.perf_counter_ns() - t) / 1e6
    return out


def _summary(ms: np.ndarray) -> dict:
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"p50": round(float(p50), 4), "p90": round(float(p90), 4), "p99": round(float(p99), 4),
            "mean": round(float(ms.mean()), 4), "n": int(ms.size)}


def fused_step_baseline(manifest: Path, encoders, head, provider: str = "cpu", iterations: int = 300,
                        warmup: int = 30) -> dict:
    """Time the fused step in onnxruntime (the node's ModelRuntime) and in torch eager."""
    import torch

    runtime = ModelRuntime(manifest, provider=provider, intra_op_threads=1)
    inputs = sample_inputs(runtime)

    def ort_step():
        emb = {m: runtime.encode(m, *inputs[m]) for m in MODALITIES}
        return emb, runtime.fuse(emb)

    t_inputs = {m: tuple(torch.from_numpy(a) for a in arrs) for m, arrs in inputs.items()}
    present = torch.ones(1, 3)

    def torch_step():
        with torch.inference_mode():
            emb = {m: encoders[m](*t_inputs[m]) for m in MODALITIES}
            return emb, head(emb["camera"], emb["radar"], emb["audio"], present)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # Same weights: the outputs must agree (the export's parity tolerance).
        emb_o, head_o = ort_step()
        emb_t, head_t = torch_step()
        diff = max(float(np.abs(emb_o[m] - emb_t[m].numpy()).max()) for m in MODALITIES)
        diff = max(diff, float(np.abs(head_o.logits - head_t[0].numpy()[0]).max()))
        ort_ms = _time(ort_step, iterations, warmup)
        torch_ms = _time(torch_step, iterations, warmup)
    finally:
        torch.set_num_threads(threads)
    ort_s, torch_s = _summary(ort_ms), _summary(torch_ms)
    return {
        "ort_step_ms": ort_s["p50"],
        "torch_step_ms": torch_s["p50"],
        "speedup_p50": round(torch_s["p50"] / ort_s["p50"], 2) if ort_s["p50"] else None,
        "ort_step": ort_s,
        "torch_step": torch_s,
        "max_abs_diff": diff,
        "provider": runtime.provider,
        "threads": {"onnxruntime_intra_op": 1, "torch": 1},
        "what": "3 encoders + fusion head on preprocessed inputs, batch 1",
    }


def gpu_step_baseline(manifest: Path, provider: str = "cuda", iterations: int = 300, warmup: int = 30,
                      batch: int = 8) -> dict:
    """The fused step on the IO-binding GPU runtime, with and without CUDA graphs, and batched encoders.

    Returns ``{"unavailable": reason}`` without a usable GPU.
    """
    problem = gpu_problem()
    if problem is not None:
        return {"unavailable": problem}
    out: dict = {}
    for graphs in (True, False):
        rt = GpuRuntime(manifest, provider=provider, cuda_graph=graphs)
        inputs = sample_inputs(rt)

        def step():
            emb = {m: rt.encode(m, *inputs[m]) for m in MODALITIES}
            return rt.fuse(emb)

        out["cuda_graph" if graphs else "no_cuda_graph"] = {**_summary(_time(step, iterations, warmup)),
                                                            "notes": rt.notes, "provider": rt.provider}
    try:
        bdir = Path(tempfile.mkdtemp(prefix="fz-batched-"))
        meta = export_batched(manifest, bdir, batch)
        rt = GpuRuntime(manifest, provider=provider, batched=meta)
        inputs = sample_inputs(rt)
        sets = {m: [inputs[m]] * batch for m in MODALITIES}

        def batched_step():
            return {m: rt.encode_batch(m, sets[m]) for m in MODALITIES}

        s = _summary(_time(batched_step, iterations // 4, warmup))
        out[f"encoders_batch{batch}"] = {**s, "per_set_p50": round(s["p50"] / batch, 4)}
        shutil.rmtree(bdir, ignore_errors=True)
    except Exception as exc:  # noqa: BLE001 - report, do not lose the rest of the run
        out[f"encoders_batch{batch}"] = {"unavailable": " ".join(str(exc).split())[:300]}
    return out
