"""Models end to end: torch export -> ONNX bundle -> manifest validation -> providers -> the plain runtime.

Everything here is real: the bundle is exported from torch once per module, and the runtime
runs real onnxruntime sessions. Preprocessing is checked against values computed by hand. What
every runtime must do (shapes, missing modalities, bad inputs) is tested once for all of them in
``test_runtime_contract.py``.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from fusion_node.cpu_runtime import ModelRuntime
from fusion_node.manifest import (
    HEAD_INPUTS,
    HEAD_OUTPUTS,
    ModelError,
    file_sha256,
    load_manifest,
)
from fusion_node.preprocess import AudioPreprocess, CameraPreprocess, RadarPreprocess
from fusion_node.providers import resolve_providers, session_options
from fusion_node.vocabulary import MODALITIES

ROOT = Path(__file__).resolve().parents[1]
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TRT = "TensorrtExecutionProvider"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """An untrained bundle exported from torch once for this module; returns manifest.json."""
    from models.export import export_untrained_bundle

    t0 = time.perf_counter()
    path = export_untrained_bundle(tmp_path_factory.mktemp("bundle"), seed=0, embed_dim=64)
    print(f"export_untrained_bundle: {time.perf_counter() - t0:.2f} s")
    return path


@pytest.fixture(scope="module")
def runtime(bundle) -> ModelRuntime:
    return ModelRuntime(bundle, provider="cpu")


@pytest.fixture
def bundle_copy(bundle, tmp_path) -> Path:
    """A private copy of the bundle that a test may damage; returns its manifest.json."""
    dst = tmp_path / "copy"
    shutil.copytree(bundle.parent, dst)
    return dst / "manifest.json"


def _edit_manifest(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


# --------------------------------------------------------------------------- the no-torch rule


def test_fusion_node_never_imports_torch():
    code = ("import sys; import fusion_node.node, fusion_node.gpu_runtime; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_modality_order_matches_architectures():
    from models import architectures

    assert MODALITIES == architectures.MODALITIES
    assert HEAD_INPUTS == architectures.HEAD_INPUTS and HEAD_OUTPUTS == architectures.HEAD_OUTPUTS


# --------------------------------------------------------------------------- export + manifest


def test_manifest_round_trip(bundle):
    from models.architectures import DEFAULT_CLASSES

    m = load_manifest(bundle)
    raw = json.loads(bundle.read_text())
    assert m.format_version == 1 and raw["format_version"] == 1
    assert m.trained is False and m.seed == 0 and m.name == "untrained-seed0" and m.data_version == "none"
    assert m.embedding_dim == 64
    assert m.classes == DEFAULT_CLASSES
    assert dict(m.thresholds) == {c: 0.5 for c in DEFAULT_CLASSES}
    assert set(m.encoders) == set(MODALITIES)
    assert m.encoders["camera"].inputs[0].shape == (1, 3, 96, 96)
    assert [t.shape for t in m.encoders["radar"].inputs] == [(1, 64, 5), (1, 64)]
    assert m.encoders["audio"].inputs[0].shape == (1, 1, 64, AudioPreprocess().num_frames)
    assert all(s.outputs[0].shape == (1, 64) for s in m.encoders.values())
    assert [t.shape for t in m.head.outputs] == [(1, len(DEFAULT_CLASSES)), (1, 3), (1, 3), (1, 1)]
    # The preprocess blocks rebuild exactly the default preprocessing.
    assert dict(m.encoders["camera"].preprocess) == CameraPreprocess().to_dict()
    assert dict(m.encoders["radar"].preprocess) == RadarPreprocess().to_dict()
    assert dict(m.encoders["audio"].preprocess) == AudioPreprocess().to_dict()
    files = ["camera.onnx", "radar.onnx", "audio.onnx", "head.onnx"]
    assert sorted(m.sha256) == sorted(files)
    assert sorted(p.name for p in bundle.parent.iterdir()) == sorted(files + ["manifest.json"])  # no .data files
    assert m.export is not None and set(m.export["opset"].values()) == {17}


def test_parity_recorded_and_small(bundle):
    m = load_manifest(bundle)
    assert sorted(m.parity_max_abs_diff) == sorted(m.sha256)
    for file, diff in m.parity_max_abs_diff.items():
        assert 0.0 <= diff <= 1e-4, file


def test_export_is_deterministic(bundle, tmp_path):
    from models.export import export_untrained_bundle

    again = load_manifest(export_untrained_bundle(tmp_path / "again", seed=0, embed_dim=64))
    assert dict(again.sha256) == dict(load_manifest(bundle).sha256)


def test_export_parity_failure_names_file_and_writes_nothing(tmp_path, monkeypatch):
    import torch

    from fusion_node.preprocess import (
        AudioPreprocess,
        CameraPreprocess,
        RadarPreprocess,
    )
    from models import export
    from models.architectures import (
        AudioEncoder,
        CameraEncoder,
        FusionHead,
        RadarEncoder,
    )

    real = export._torch_outputs
    # Pretend torch computes something slightly different from the exported graph.
    monkeypatch.setattr(export, "_torch_outputs", lambda model, args: [o + 1e-3 for o in real(model, args)])
    torch.manual_seed(0)
    with pytest.raises(export.ExportError, match=r"camera\.onnx.*differs from torch"):
        export.export_bundle(
            tmp_path, {"camera": CameraEncoder(16), "radar": RadarEncoder(16), "audio": AudioEncoder(16)},
            FusionHead(16, 2), classes=["a", "b"],
            preprocess={"camera": CameraPreprocess(), "radar": RadarPreprocess(), "audio": AudioPreprocess()},
            embed_dim=16, trained=False, seed=0, data_version="none", name="bad",
        )
    assert list(tmp_path.iterdir()) == []  # no partial bundle, no scratch directory


def test_export_rejects_bad_arguments(tmp_path):
    from models.export import export_bundle

    with pytest.raises(ValueError, match="encoders must have exactly the keys"):
        export_bundle(tmp_path, {}, None, classes=["a"], preprocess={}, embed_dim=8, trained=False, seed=0,
                      data_version="x", name="x")


def test_missing_model_file(bundle_copy):
    (bundle_copy.parent / "radar.onnx").unlink()
    with pytest.raises(ModelError, match=r"encoders\.radar\.file.*'radar\.onnx' not found") as err:
        load_manifest(bundle_copy)
    assert str(bundle_copy) in str(err.value) and "re-export" in str(err.value)


def test_tampered_model_file(bundle_copy):
    with open(bundle_copy.parent / "head.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelError, match=r"sha256\.head\.onnx.*has sha256"):
        load_manifest(bundle_copy)


def test_tampered_sha_in_manifest(bundle_copy):
    _edit_manifest(bundle_copy, lambda d: d["sha256"].update({"camera.onnx": "0" * 64}))
    with pytest.raises(ModelError, match=r"sha256\.camera\.onnx"):
        load_manifest(bundle_copy)


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda d: d.update(extra=1), r"key 'extra': unknown key"),
        (lambda d: d.pop("classes"), r"key 'classes': missing"),
        (lambda d: d["encoders"]["camera"].update(foo=1), r"key 'encoders\.camera\.foo': unknown key"),
        (lambda d: d["encoders"]["audio"]["preprocess"].update(bogus=1),
         r"key 'encoders\.audio\.preprocess':.*unknown key 'bogus'"),
        (lambda d: d.update(trained="yes"), r"key 'trained': must be true or false"),
        (lambda d: d.update(seed=True), r"key 'seed': must be an integer, got a boolean"),
        (lambda d: d.update(format_version=2), r"key 'format_version': unsupported version 2"),
        (lambda d: d["thresholds"].update(person=1.5), r"key 'thresholds\.person'"),
        (lambda d: d["thresholds"].pop("dog"), r"key 'thresholds\.dog': missing"),
        (lambda d: d["encoders"].pop("radar"), r"key 'encoders\.radar': missing"),
        (lambda d: d["encoders"]["camera"]["inputs"][0].update(dtype="float16"), r"unsupported dtype"),
        (lambda d: d["encoders"]["camera"]["preprocess"].update(size_hw=[64, 64]),
         r"key 'encoders\.camera\.inputs': shapes .* do not match"),
        (lambda d: d["encoders"]["camera"].update(file="../camera.onnx"), r"inside the bundle directory"),
        (lambda d: d["parity_max_abs_diff"].update({"head.onnx": 0.5}), r"exceeds"),
        (lambda d: d.update(embedding_dim=32), r"embedding_dim 32"),
    ],
)
def test_manifest_validation_errors(bundle_copy, edit, expected):
    _edit_manifest(bundle_copy, edit)
    with pytest.raises(ModelError, match=expected) as err:
        load_manifest(bundle_copy)
    assert str(err.value).startswith(str(bundle_copy))


def test_unreadable_and_invalid_json(tmp_path):
    with pytest.raises(ModelError, match="cannot read the model manifest"):
        load_manifest(tmp_path / "nope.json")
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_manifest(tmp_path / "m.json")


def test_onnx_file_disagreeing_with_manifest(bundle_copy):
    # Swap in the radar model as the camera model and fix up the sha so only the I/O check sees it.
    d = bundle_copy.parent
    shutil.copy(d / "radar.onnx", d / "camera.onnx")
    sha = file_sha256(d / "camera.onnx")
    _edit_manifest(bundle_copy, lambda m: m["sha256"].update({"camera.onnx": sha}))
    with pytest.raises(ModelError, match=r"camera\.onnx' has inputs"):
        ModelRuntime(bundle_copy, provider="cpu", warmup_runs=0)


# --------------------------------------------------------------------------- providers


def test_session_options_for_streaming():
    so = session_options(2)
    assert so.intra_op_num_threads == 2 and so.inter_op_num_threads == 1
    assert so.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    with pytest.raises(ValueError, match="intra_op_threads"):
        session_options(0)


def test_resolve_providers(monkeypatch, tmp_path):
    monkeypatch.setattr(ort, "get_available_providers", lambda: [TRT, CUDA, CPU])
    assert resolve_providers("cpu") == [(CPU, {})]
    assert [p for p, _ in resolve_providers("cuda")] == [CUDA, CPU]
    trt = resolve_providers("tensorrt", trt_cache_dir=tmp_path / "trt", trt_fp16=False)
    assert [p for p, _ in trt] == [TRT, CUDA, CPU]
    assert trt[0][1]["trt_engine_cache_path"] == str(tmp_path / "trt") and trt[0][1]["trt_fp16_enable"] is False
    assert (tmp_path / "trt").is_dir()
    assert [p for p, _ in resolve_providers("AUTO", trt_cache_dir=tmp_path)] == [TRT, CUDA, CPU]
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CPU])
    assert [p for p, _ in resolve_providers("auto")] == [CPU]
    with pytest.raises(ValueError, match="provider must be one of"):
        resolve_providers("gpu")


def test_cpu_runtime(runtime):
    assert runtime.provider == CPU and runtime.provider_note == "CPU requested; using CPU"
    assert set(runtime.session_providers.values()) == {CPU}
    assert runtime.trained is False and runtime.name == "untrained-seed0"
    assert runtime.audio_window_s == 1.0 and runtime.audio_sample_rate_hz == 16000


def test_cuda_request_falls_back_to_cpu_with_note(bundle, caplog):
    caplog.set_level(logging.WARNING, logger="fusion_node.cpu_runtime")
    rt = ModelRuntime(bundle, provider="cuda")
    if rt.provider == CUDA:  # a machine with a working GPU stack
        assert rt.provider_note == "cuda: using CUDA"
        return
    assert rt.provider == CPU
    assert rt.provider_note.startswith("CUDA requested but unavailable") and rt.provider_note.endswith("using CPU")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and rt.provider_note in warnings[0].getMessage()  # once, not once per session
    out = rt.fuse({"camera": rt.encode("camera", *rt.preprocess("camera", np.zeros((8, 8, 3), np.uint8)))})
    assert np.isfinite(out.probabilities).all()


def test_provider_exception_falls_back(bundle, monkeypatch):
    # A provider that raises at session creation (as TensorRT does without its libraries).
    real = ort.InferenceSession

    def flaky(path, sess_options=None, providers=None, **kw):
        if providers[0][0] != CPU:
            raise RuntimeError("simulated CUDA failure\nsecond line")
        return real(path, sess_options=sess_options, providers=providers, **kw)

    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(ort, "InferenceSession", flaky)
    rt = ModelRuntime(bundle, provider="cuda", warmup_runs=1)
    assert rt.provider == CPU
    assert "CUDA: simulated CUDA failure second line" in rt.provider_note


def test_provider_notes_follow_the_build(bundle, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="fusion_node.cpu_runtime")
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    rt = ModelRuntime(bundle, provider="tensorrt", warmup_runs=0)
    assert rt.provider_note.startswith("TensorRT requested but unavailable (TensorRT: not in this onnxruntime build")
    # A CPU-only build asked for "auto" is not a failure: an info line, no warning.
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CPU])
    caplog.clear()
    rt = ModelRuntime(bundle, provider="auto", warmup_runs=0)
    assert rt.provider == CPU and rt.provider_note == "auto: this onnxruntime build offers no GPU provider; using CPU"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# --------------------------------------------------------------------------- encode / fuse


def test_encode_every_modality(runtime):
    rng = np.random.default_rng(0)
    raw = {
        "camera": rng.integers(0, 256, (480, 640, 3), dtype=np.uint8),
        "radar": rng.standard_normal((20, 6)).astype(np.float32),
        "audio": (0.1 * rng.standard_normal(16000)).astype(np.float32),
    }
    for m in MODALITIES:
        emb = runtime.encode(m, *runtime.preprocess(m, raw[m]))
        assert emb.shape == (1, 64) and emb.dtype == np.float32
        assert np.linalg.norm(emb) == pytest.approx(1.0, abs=1e-5)
    # An empty radar frame still encodes to a finite vector.
    empty = runtime.encode("radar", *runtime.preprocess("radar", np.zeros((0, 6), np.float32)))
    assert np.isfinite(empty).all()


# --------------------------------------------------------------------------- preprocessing


def test_camera_normalises_a_constant_image():
    pp = CameraPreprocess()
    bgr = (10, 128, 250)
    out = pp(np.full((480, 640, 3), bgr, dtype=np.uint8))
    assert out.shape == (1, 3, 96, 96) and out.dtype == np.float32 and out.flags.c_contiguous
    rgb = bgr[::-1]
    for c in range(3):
        expected = (rgb[c] / 255.0 - pp.mean_rgb[c]) / pp.std_rgb[c]
        np.testing.assert_allclose(out[0, c], expected, rtol=0, atol=1e-5)


def _sample_video_frames(every: int = 15, per_file: int = 4) -> list[np.ndarray]:
    frames = []
    for path in sorted((ROOT / "sensors" / "samples" / "video").glob("*.mp4")):
        cap = cv2.VideoCapture(str(path))
        for i in range(every * per_file):
            ok, frame = cap.read()
            assert ok, f"{path.name}: could not read frame {i}"
            if i % every == 0:
                frames.append(frame)
        cap.release()
    return frames


def _swap_then_resize(pp: CameraPreprocess, image_bgr: np.ndarray) -> np.ndarray:
    """The camera preprocessing with the colour conversion first, on the full frame."""
    h, w = pp.size_hw
    rgb = cv2.cvtColor(np.ascontiguousarray(image_bgr), cv2.COLOR_BGR2RGB)
    if rgb.shape[:2] != (h, w):
        rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
    out = (rgb.astype(np.float32) * (1.0 / (255.0 * np.asarray(pp.std_rgb, np.float32)))
           - np.asarray(pp.mean_rgb, np.float32) / np.asarray(pp.std_rgb, np.float32))
    return np.ascontiguousarray(out.transpose(2, 0, 1)[None])


def test_camera_resize_before_colour_conversion_changes_nothing_on_real_frames():
    """Converting the small image instead of the full frame gives the same tensor to the bit
    (shrinking, enlarging, already at size, a strided view) and so the same embedding from the
    shipped camera encoder."""
    frames = _sample_video_frames()
    shipped = ModelRuntime(ROOT / "models" / "default" / "manifest.json", provider="cpu")
    pp = shipped.preprocessors["camera"]
    for frame in frames:
        for p in (pp, CameraPreprocess(size_hw=(40, 60)), CameraPreprocess(size_hw=(600, 900))):
            for image in (frame, frame[::-1, ::2], cv2.resize(frame, p.size_hw[::-1])):
                got = p(image)
                assert got.shape == p.output_shape and got.flags.c_contiguous
                np.testing.assert_array_equal(got, _swap_then_resize(p, image))
    embed = [shipped.encode("camera", pp(f)) for f in frames]
    reference = [shipped.encode("camera", _swap_then_resize(pp, f)) for f in frames]
    np.testing.assert_allclose(np.concatenate(embed), np.concatenate(reference), rtol=0, atol=1e-6)
    # Different frames give different embeddings: the comparison above is not of constants.
    assert np.abs(embed[0] - embed[-1]).max() > 1e-3


def test_camera_rejects_bad_images():
    pp = CameraPreprocess(size_hw=(32, 48))
    assert pp(np.zeros((10, 20, 3), np.uint8)).shape == (1, 3, 32, 48)
    with pytest.raises(ValueError, match="uint8"):
        pp(np.zeros((10, 20, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        pp(np.zeros((10, 20), np.uint8))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        pp(np.zeros((10, 20, 4), np.uint8))


def test_radar_keeps_highest_snr_points():
    rng = np.random.default_rng(3)
    pts = rng.standard_normal((100, 6)).astype(np.float32)
    pts[:, 4] = rng.permutation(100).astype(np.float32)  # distinct SNRs 0..99
    pp = RadarPreprocess(max_points=64)
    out, mask = pp(pts)
    assert out.shape == (1, 64, 5) and mask.shape == (1, 64) and mask.sum() == 64
    kept_snr = out[0, :, 4] * pp.scale[4]
    np.testing.assert_allclose(np.sort(kept_snr), np.arange(36, 100), atol=1e-4)
    # Every kept row is its input row scaled (noise_db dropped).
    top = pts[np.argsort(-pts[:, 4])[:64], :5] / np.asarray(pp.scale, np.float32)
    np.testing.assert_allclose(out[0], top, rtol=1e-6)
    # Float64 points are cast to float32 before scaling: the same tensors as the float32 points.
    for a, b in zip(pp(pts.astype(np.float64)), (out, mask)):
        np.testing.assert_array_equal(a, b)


def test_radar_pools_its_newest_frames_and_records_how_many():
    pp = RadarPreprocess(max_points=8, stack_frames=3)
    frames = [np.full((k + 1, 6), k, np.float32) for k in range(5)]  # frame k: k + 1 points of value k
    pooled = pp.pool(frames)
    assert sorted(set(pooled[:, 0].tolist())) == [2.0, 3.0, 4.0] and len(pooled) == 3 + 4 + 5
    assert pp.pool(frames[:1]) is frames[0]  # a radar's first frame is a window of its own
    out, mask = pp(pooled)
    assert mask.sum() == 8  # the pool goes through the same top-SNR cut as one frame
    assert RadarPreprocess.from_dict(pp.to_dict()).stack_frames == 3
    assert "stack_frames" not in RadarPreprocess().to_dict()  # bundles that read one frame keep their manifest
    assert RadarPreprocess.from_dict({"max_points": 8}).stack_frames == 1
    with pytest.raises(ValueError, match="no frame"):
        pp.pool([])
    with pytest.raises(ValueError, match="stack_frames"):
        RadarPreprocess(stack_frames=0)


def test_radar_pads_and_handles_empty_frames():
    pp = RadarPreprocess(max_points=8)
    pts = np.ones((3, 6), np.float32)
    out, mask = pp(pts)
    assert mask.tolist() == [[1, 1, 1, 0, 0, 0, 0, 0]]
    assert (out[0, 3:] == 0).all()
    np.testing.assert_allclose(out[0, 0], 1.0 / np.asarray(pp.scale), rtol=1e-6)
    out, mask = pp(np.zeros((0, 6), np.float32))
    assert (mask == 0).all() and (out == 0).all()
    bad = np.ones((3, 6), np.float32)
    bad[1, 0] = np.nan
    assert pp(bad)[1].sum() == 2  # non-finite rows are dropped
    with pytest.raises(ValueError, match=r"\(N, 6\)"):
        pp(np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="float32"):
        pp(np.zeros((3, 6), np.int32))


def _tone(freq_hz: float, seconds: float, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


@pytest.mark.parametrize("freq_hz", [300.0, 1000.0, 2500.0, 6000.0])
def test_logmel_of_a_tone_peaks_at_its_mel_band(freq_hz):
    pp = AudioPreprocess()
    out = pp(_tone(freq_hz, 1.0))
    assert out.shape == (1, 1, 64, pp.num_frames) == pp.output_shape and out.dtype == np.float32
    assert pp.num_frames == 1 + (16000 - 512) // 160 == 97
    band = int(out[0, 0].mean(axis=1).argmax())
    assert band == int(np.abs(pp.mel_centres_hz - freq_hz).argmin())
    np.testing.assert_array_equal(pp(_tone(freq_hz, 1.0).astype(np.float64)), out)  # cast to float32 first


def test_logmel_window_alignment():
    pp = AudioPreprocess()
    floor = np.log(AudioPreprocess.LOG_FLOOR)
    # Short input is left-padded: early frames are silence, the last ones hold the tone.
    short = pp(_tone(1000.0, 0.25))[0, 0]
    assert np.allclose(short[:, :50], floor, atol=1e-3) and short[:, -5:].max() > 0
    # Long input: only the most recent window counts (here: silence after a tone).
    long = np.concatenate([_tone(1000.0, 1.0), np.zeros(16000, np.float32)])
    assert np.allclose(pp(long), floor, atol=1e-3)
    with pytest.raises(ValueError, match="1-D"):
        pp(np.zeros((2, 100), np.float32))
    with pytest.raises(ValueError, match="float32"):
        pp(np.zeros(100, np.int16))


def test_preprocess_dict_round_trip_and_unknown_keys():
    for pp in (CameraPreprocess(size_hw=(64, 80)), RadarPreprocess(max_points=16), AudioPreprocess(n_mels=40)):
        d = json.loads(json.dumps(pp.to_dict()))
        assert type(pp).from_dict(d).to_dict() == pp.to_dict()
        with pytest.raises(ValueError, match="unknown key 'oops'"):
            type(pp).from_dict({**d, "oops": 1})
    with pytest.raises(ValueError, match="contain no FFT bin"):
        AudioPreprocess(n_fft=64, n_mels=64)
    with pytest.raises(ValueError, match="max_points"):
        RadarPreprocess(max_points=0)


# --------------------------------------------------------------------------- torch modules


def test_torch_head_masking_and_gradients():
    import torch

    from models.architectures import (
        AlignmentModel,
        CameraEncoder,
        FusionHead,
        RadarEncoder,
    )

    torch.manual_seed(0)
    head = FusionHead(16, 4)
    emb = [torch.randn(4, 16, requires_grad=True) for _ in range(3)]
    present = torch.tensor([[1.0, 1, 1], [1, 0, 1], [0, 1, 0], [0, 0, 0]])
    logits, certainty, weights, consistency = head(*emb, present)
    assert (weights[present == 0] == 0).all() and (certainty[present == 0] == 0).all()
    torch.testing.assert_close(weights.sum(1), torch.tensor([1.0, 1, 1, 0]))
    assert consistency[2:].flatten().tolist() == [1.0, 1.0]
    (logits.sum() + weights.sum() + consistency.sum() + certainty.sum()).backward()
    assert all(torch.isfinite(e.grad).all() for e in emb)  # no NaN gradient even with nothing present

    radar = RadarEncoder(16)
    pts = torch.randn(2, 8, 5, requires_grad=True)
    out = radar(pts, torch.tensor([[1.0] * 3 + [0.0] * 5, [0.0] * 8]))
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(pts.grad).all()
    assert pts.grad[0, 3:].abs().sum() == 0  # padding never influences the embedding

    align = AlignmentModel({"camera": CameraEncoder(16), "radar": radar}, init_temperature=0.07)
    assert align.temperature.item() == pytest.approx(0.07)
    a = align.encode("camera", torch.randn(3, 3, 64, 64))
    assert a.shape == (3, 16) and align.similarity(a, a).shape == (3, 3)
    assert align.log_temperature.requires_grad
