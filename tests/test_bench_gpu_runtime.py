"""GPU runtime (IO binding, CUDA graphs, TensorRT) and batch-N model copies.

The GPU tests (marker ``gpu``) skip on machines without a usable GPU; the rest (import safety,
the CPU-fallback check, batched copies) run everywhere. The runtime contract the GPU runtime
shares with the others is tested in ``test_runtime_contract.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from fusion_node import gpu_runtime
from fusion_node.cpu_runtime import ModelRuntime
from fusion_node.manifest import ModelError, load_batched, load_manifest
from fusion_node.vocabulary import MODALITIES
from models.batched import export_batched

GPU = gpu_runtime.gpu_problem()
needs_gpu = pytest.mark.skipif(GPU is not None, reason=f"no usable GPU: {GPU}")


def _inputs(rt, seed=0):
    from bench.models import sample_inputs

    return sample_inputs(rt, seed)


def test_module_is_import_safe_and_says_why_there_is_no_gpu(untrained_models):
    if GPU is None:
        pytest.skip("a GPU is usable here")
    assert isinstance(GPU, str) and GPU
    with pytest.raises(ModelError, match="GPU runtime unavailable"):
        gpu_runtime.GpuRuntime(untrained_models)


def test_gpu_runtime_names_the_providers_it_takes(untrained_models):
    # Checked before looking for a GPU: the message is the same on every machine.
    with pytest.raises(ValueError, match="provider must be 'cuda' or 'tensorrt', got 'cpu'"):
        gpu_runtime.GpuRuntime(untrained_models, provider="cpu")


def test_cpu_fallback_check_names_the_nodes_on_cpu(untrained_models):
    manifest = load_manifest(untrained_models)
    nodes = gpu_runtime.cpu_fallback_nodes(manifest.encoders["radar"].path, ["CPUExecutionProvider"])
    # On the CPU provider every node is a "CPU node": the check sees them all, with their op types.
    assert len(nodes) >= 5 and all(n["provider"] == "CPUExecutionProvider" for n in nodes)
    assert {"Gemm", "ReduceMax"} <= {n["op"] for n in nodes}


def test_provider_options_for_tensorrt_cache_and_fp16(tmp_path):
    opts = dict(gpu_runtime.provider_options("tensorrt", trt_cache_dir=tmp_path, fp16=True))
    trt = opts["TensorrtExecutionProvider"]
    assert trt["trt_engine_cache_enable"] and trt["trt_fp16_enable"] and trt["trt_engine_cache_path"] == str(tmp_path)
    assert trt["trt_timing_cache_enable"] and trt["trt_cuda_graph_enable"]
    assert list(opts)[-1] == "CPUExecutionProvider"
    cuda = dict(gpu_runtime.provider_options("cuda", cuda_graph=True))["CUDAExecutionProvider"]
    assert cuda["enable_cuda_graph"] == "1"
    with pytest.raises(ValueError):
        gpu_runtime.provider_options("cpu")


def test_batched_copies_match_the_batch_one_models(untrained_models, tmp_path):
    meta_path = export_batched(untrained_models, tmp_path / "b4", 4)
    manifest = load_manifest(untrained_models)
    meta = load_batched(meta_path, manifest)
    assert meta.batch == 4 and not meta.dynamic and set(meta.paths) == {*MODALITIES, "head"}
    assert sorted(meta.parity_max_abs_diff) == sorted(manifest.sha256)
    assert max(meta.parity_max_abs_diff.values()) <= 1e-4
    import onnxruntime as ort

    rt = ModelRuntime(manifest, provider="cpu")
    sets = [_inputs(rt, seed) for seed in range(4)]
    for m in MODALITIES:
        sess = ort.InferenceSession(str(meta.paths[m]), providers=["CPUExecutionProvider"])
        spec = manifest.encoders[m]
        feed = {t.name: np.concatenate([s[m][j] for s in sets]) for j, t in enumerate(spec.inputs)}
        batched = sess.run(None, feed)[0]
        for b, s in enumerate(sets):
            assert np.allclose(batched[b], rt.encode(m, *s[m])[0], atol=1e-5), m
    # A modified copy is refused, and so is a copy of another bundle or a file that is not one.
    (tmp_path / "b4" / "camera.onnx").write_bytes(b"broken")
    with pytest.raises(ModelError, match=r"camera\.onnx is missing or modified"):
        load_batched(meta_path, manifest)
    meta_json = json.loads(meta_path.read_text())
    meta_json["source_sha256"]["camera.onnx"] = "0" * 64
    meta_path.write_text(json.dumps(meta_json))
    with pytest.raises(ModelError, match="made from another bundle"):
        load_batched(meta_path, manifest)
    meta_path.write_text("{}")
    with pytest.raises(ModelError, match="not a batched.json"):
        load_batched(meta_path, manifest)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_gpu_runtime_matches_cpu_runtime(untrained_models, tmp_path, provider):
    cpu = ModelRuntime(untrained_models, provider="cpu")
    gpu = gpu_runtime.GpuRuntime(untrained_models, provider=provider, trt_cache_dir=tmp_path, fp16=False)
    inputs = _inputs(cpu)
    for _ in range(3):  # replays of the captured CUDA graph give the same answer
        emb_g = {m: gpu.encode(m, *inputs[m]) for m in MODALITIES}
        emb_c = {m: cpu.encode(m, *inputs[m]) for m in MODALITIES}
        for m in MODALITIES:
            assert np.allclose(emb_g[m], emb_c[m], atol=1e-3), m
        assert np.allclose(gpu.fuse(emb_g).logits, cpu.fuse(emb_c).logits, atol=1e-3)
    # Every model that had to leave the strict GPU path is named in a note, with the nodes that
    # ran on the CPU, and no note speaks of a model that did not.
    assert sorted(note.split(":")[0] for note in gpu.notes) == sorted(gpu.fallback_nodes)
    assert all(n["provider"] == "CPUExecutionProvider" for nodes in gpu.fallback_nodes.values() for n in nodes)
    assert gpu.provider_note == ("; ".join(gpu.notes) or f"{provider}: IO binding, CUDA graphs")
    if provider == "tensorrt":
        assert any(tmp_path.iterdir())  # engines cached for the next start

