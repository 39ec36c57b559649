"""GPU inference for the node: IO binding with device buffers, CUDA graphs, TensorRT, fallback checks.

:class:`GpuRuntime` implements :class:`fusion_node.runtime.Runtime` (the manifest-driven part,
input checks included, is :class:`fusion_node.runtime.BundleRuntime`, shared with the plain
runtime) but runs each model through an IO binding whose input and output buffers are allocated
on the GPU once: a call copies its inputs into those fixed buffers (``OrtValue.update_inplace``),
runs, and copies the small outputs back. Fixed device addresses are what CUDA graphs need, so on
the CUDA provider each model's kernel launches are captured once and replayed
(``enable_cuda_graph``); on TensorRT the engine is built with fp16 allowed, cached on disk with
its timing cache, and replayed as a CUDA graph too (``trt_cuda_graph_enable``).

Every session is created with ``session.disable_cpu_ep_fallback``: a model with a node the GPU
provider cannot run fails loudly instead of silently bouncing tensors between host and device
(and a CUDA graph cannot contain such a node anyway). :func:`cpu_fallback_nodes` names those
nodes, from an onnxruntime profile of one run; :class:`GpuRuntime` then retries that model
without CUDA graph and with the fallback allowed, and says so in ``notes``.

Batching across rigs: :meth:`GpuRuntime.encode_batch` runs one encoder on up to B sets at once
when it is given a batch-B copy of the bundle (made ahead of time by ``models.batched``, checked
by :func:`fusion_node.manifest.load_batched`); without it, it runs them one by one.

Importing this module touches no GPU; :func:`gpu_problem` says whether one is usable (tests that
need one skip without it), and :class:`GpuRuntime` raises :class:`ModelError` when none is.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .manifest import BatchedModels, Manifest, ModelError, ModelSpec, load_batched
from .providers import CPU, CUDA, TENSORRT, default_trt_cache_dir, session_options
from .runtime import BundleRuntime

__all__ = ["gpu_available", "gpu_problem", "cpu_fallback_nodes", "GpuRuntime", "provider_options"]

log = logging.getLogger(__name__)

_PROVIDER = {"cuda": CUDA, "tensorrt": TENSORRT}


def gpu_problem(device_id: int = 0) -> str | None:
    """None if onnxruntime can allocate on CUDA device ``device_id``, else why not."""
    if not (shutil.which("nvidia-smi") or Path("/dev/nvidia0").exists() or Path("/dev/nvidiactl").exists()):
        return "no NVIDIA GPU or driver on this machine"
    if CUDA not in ort.get_available_providers():
        return "this onnxruntime build has no CUDA provider"
    try:
        ort.OrtValue.ortvalue_from_numpy(np.zeros(1, np.float32), "cuda", device_id)
    except Exception as exc:  # noqa: BLE001 - missing CUDA/cuDNN libraries, no device
        return " ".join(str(exc).split())[:300]
    return None


def gpu_available(device_id: int = 0) -> bool:
    """Whether onnxruntime can use CUDA device ``device_id`` here."""
    return gpu_problem(device_id) is None


def provider_options(provider: str, *, device_id: int = 0, cuda_graph: bool = True, fp16: bool = True,
                     trt_cache_dir: str | os.PathLike | None = None) -> list[tuple[str, dict]]:
    """The provider list for a GPU session (CPU last, for the fallback check to have somewhere to go)."""
    if provider not in _PROVIDER:
        raise ValueError(f"provider must be 'cuda' or 'tensorrt', got {provider!r}")
    cuda = {"device_id": device_id, "enable_cuda_graph": "1" if cuda_graph else "0",
            "cudnn_conv_algo_search": "HEURISTIC", "do_copy_in_default_stream": "1"}
    if provider == "cuda":
        return [(CUDA, cuda), (CPU, {})]
    cache = Path(trt_cache_dir) if trt_cache_dir else default_trt_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    trt = {"device_id": device_id, "trt_fp16_enable": bool(fp16), "trt_engine_cache_enable": True,
           "trt_engine_cache_path": str(cache), "trt_timing_cache_enable": True,
           "trt_timing_cache_path": str(cache), "trt_cuda_graph_enable": bool(cuda_graph),
           "trt_builder_optimization_level": 3}
    # CUDA takes whatever TensorRT does not build (a fallback check then tells whether that happened).
    return [(TENSORRT, trt), (CUDA, {**cuda, "enable_cuda_graph": "0"}), (CPU, {})]


def cpu_fallback_nodes(model: str | os.PathLike, providers: Sequence, feed: Mapping[str, np.ndarray] | None = None
                       ) -> list[dict]:
    """The nodes of ``model`` that run on the CPU provider with ``providers``: ``[{name, op, provider}]``.

    Runs the model once with onnxruntime's profiler and reads which provider executed each node
    (with ``providers = [CPU]`` that is every node; with a GPU first, the fallbacks).
    """
    so = session_options(1)
    tmp = Path(tempfile.mkdtemp(prefix="fz-prof-"))
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp / "profile")
    try:
        session = ort.InferenceSession(str(model), so, providers=list(providers))
        if feed is None:
            feed = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32)
                    for i in session.get_inputs()}
        session.run(None, dict(feed))
        trace = json.loads(Path(session.end_profiling()).read_text())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    seen: dict[str, dict] = {}
    for ev in trace:
        args = ev.get("args", {})
        if ev.get("cat") == "Node" and "provider" in args:
            name = ev["name"].removesuffix("_kernel_time").removesuffix("_fence_before").removesuffix("_fence_after")
            seen[name] = {"name": name, "op": args.get("op_name", ""), "provider": args["provider"]}
    return [n for n in seen.values() if n["provider"] == CPU]


class _Bound:
    """One model with device-resident input/output buffers bound once."""

    def __init__(self, spec: ModelSpec, path: Path, batch: int, providers: list, device_id: int,
                 allow_fallback: bool, warmup_runs: int):
        self.spec = spec
        self.batch = batch
        so = session_options(1)
        if not allow_fallback:
            so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        self.session = ort.InferenceSession(str(path), so, providers=providers)
        self.provider = self.session.get_providers()[0]
        self.inputs = {t.name: ort.OrtValue.ortvalue_from_shape_and_type([batch, *t.shape[1:]], np.float32, "cuda",
                                                                          device_id) for t in spec.inputs}
        self.outputs = {t.name: ort.OrtValue.ortvalue_from_shape_and_type([batch, *t.shape[1:]], np.float32, "cuda",
                                                                           device_id) for t in spec.outputs}
        self.binding = self.session.io_binding()
        for name, ov in self.inputs.items():
            self.binding.bind_ortvalue_input(name, ov)
        for name, ov in self.outputs.items():
            self.binding.bind_ortvalue_output(name, ov)
        self._zeros = {t.name: np.zeros((batch, *t.shape[1:]), np.float32) for t in spec.inputs}
        for _ in range(max(1, warmup_runs)):  # the first runs capture the CUDA graph / build the engine
            self.run(self._zeros)

    def run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        for name, ov in self.inputs.items():
            ov.update_inplace(np.ascontiguousarray(feed[name], dtype=np.float32))
        self.session.run_with_iobinding(self.binding)
        return [self.outputs[t.name].numpy() for t in self.spec.outputs]


class GpuRuntime(BundleRuntime):
    """The node's runtime on a GPU: the :class:`~fusion_node.runtime.Runtime` calls, IO-bound.

    ``GpuRuntime(manifest, provider="cuda"|"tensorrt", cuda_graph=True, fp16=True, batched=None)``;
    ``batched`` is a :class:`~fusion_node.manifest.BatchedModels` or the path of its
    ``batched.json``, for :meth:`encode_batch`. Raises :class:`ModelError` when no GPU is usable
    or the batched copy does not belong to the bundle.
    """

    def __init__(self, manifest: Manifest | str | os.PathLike, provider: str = "cuda", *, device_id: int = 0,
                 cuda_graph: bool = True, fp16: bool = True, trt_cache_dir: str | os.PathLike | None = None,
                 batched: BatchedModels | str | os.PathLike | None = None, warmup_runs: int = 3):
        if provider not in _PROVIDER:
            raise ValueError(f"provider must be 'cuda' or 'tensorrt', got {provider!r}")
        problem = gpu_problem(device_id)
        if problem is not None:
            raise ModelError(f"GPU runtime unavailable: {problem}")
        super().__init__(manifest)
        if batched is not None and not isinstance(batched, BatchedModels):
            batched = load_batched(batched, self.manifest)
        self.requested_provider = provider
        self.notes: list[str] = []
        self.fallback_nodes: dict[str, list[dict]] = {}
        self._models: dict[str, _Bound] = {}
        self._batched: dict[str, _Bound] = {}
        self.batch = 1
        opts = dict(device_id=device_id, fp16=fp16, trt_cache_dir=trt_cache_dir)
        for key, spec in self.manifest.models.items():
            self._models[key] = self._bind(key, spec, spec.path, 1, provider, cuda_graph, opts, warmup_runs)
        if batched is not None:
            self.batch = batched.batch
            for key, spec in self.manifest.encoders.items():
                self._batched[key] = self._bind(key, spec, batched.paths[key], self.batch, provider, cuda_graph, opts,
                                                warmup_runs)
        used = {b.provider for b in self._models.values()}
        self._provider = next(iter(used)) if len(used) == 1 else "mixed"
        self._provider_note = "; ".join(self.notes) or f"{provider}: IO binding" + (
            ", CUDA graphs" if cuda_graph else "")

    def _bind(self, key: str, spec: ModelSpec, path: Path, batch: int, provider: str, cuda_graph: bool, opts: dict,
              warmup_runs: int) -> _Bound:
        providers = provider_options(provider, cuda_graph=cuda_graph, **opts)
        try:
            return _Bound(spec, path, batch, providers, opts["device_id"], False, warmup_runs)
        except Exception as exc:  # noqa: BLE001 - a node the GPU cannot run, or graph capture refused
            nodes = cpu_fallback_nodes(path, provider_options(provider, cuda_graph=False, **opts))
            label = key if batch == 1 else f"{key}@batch{batch}"  # the batched copy is another model
            self.fallback_nodes[label] = nodes
            self.notes.append(f"{label}: {len(nodes)} node(s) on CPU ({', '.join(n['op'] for n in nodes[:5])}); "
                              f"no CUDA graph for it ({' '.join(str(exc).split())[:120]})")
            log.warning("GPU runtime: %s", self.notes[-1])
            return _Bound(spec, path, batch, provider_options(provider, cuda_graph=False, **opts), opts["device_id"],
                          True, warmup_runs)

    def _run(self, key: str, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._models[key].run(feed)

    def encode_batch(self, modality: str, batch: Sequence[tuple[np.ndarray, ...]]) -> list[np.ndarray]:
        """Embeddings ``(1, D)`` for several sets' inputs; one run per ``self.batch`` sets when batched."""
        if modality not in self._batched or len(batch) <= 1:
            return super().encode_batch(modality, batch)
        feeds = [self._encoder_feed(modality, arrays) for arrays in batch]  # every set checked first
        spec = self.manifest.encoders[modality]
        model = self._batched[modality]
        out: list[np.ndarray] = []
        for start in range(0, len(feeds), self.batch):
            chunk = feeds[start:start + self.batch]
            feed = {}
            for t in spec.inputs:
                stacked = np.zeros((self.batch, *t.shape[1:]), np.float32)  # padded to the fixed batch
                for b, one in enumerate(chunk):
                    stacked[b] = one[t.name][0]
                feed[t.name] = stacked
            emb = model.run(feed)[0]
            out += [emb[b:b + 1].copy() for b in range(len(chunk))]
        return out

    def __repr__(self) -> str:
        return f"GpuRuntime({self.name!r}, provider={self.provider!r}, batch={self.batch}, notes={self.notes})"
