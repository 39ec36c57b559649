"""One contract, three runtimes: the same tests for the plain runtime, the GPU runtime and the test fake.

The plain (:class:`ModelRuntime`) and GPU (:class:`GpuRuntime`) runtimes run the shipped bundle
(``models/default``); the GPU one skips without a usable GPU (marker ``gpu``) and is loaded with
a batch-3 copy of the bundle so that ``encode_batch`` really batches. The fake is
``tests/fake_runtime.py``. What each should report is read from the manifest file itself (or
the fake's settings), not from the code under test.

The static checks need no GPU: every implementation class offers each member of the
:class:`Runtime` protocol with the protocol's signature and types.
"""

from __future__ import annotations

import inspect
import json
import typing
from pathlib import Path

import numpy as np
import pytest

from fusion_node.cpu_runtime import ModelRuntime
from fusion_node.gpu_runtime import GpuRuntime, gpu_problem
from fusion_node.runtime import HeadOutput, Runtime
from fusion_node.vocabulary import CLASSES, MODALITIES
from models.batched import export_batched

from .fake_runtime import FakeRuntime

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "models" / "default" / "manifest.json"
GPU = gpu_problem()
GPU_BATCH = 3

FAKE_SETTINGS = {"embedding_dim": 8, "thresholds": None, "consistency_threshold": 0.25, "audio_window_s": 0.2,
                 "audio_sample_rate_hz": 8000, "radar_frames": 3}


def _protocol_members() -> dict[str, object]:
    return {k: v for k, v in vars(Runtime).items() if not k.startswith("_")}


def _mismatches(cls: type) -> list[str]:
    """How ``cls`` departs from the Runtime protocol: missing members, other signatures or types."""
    wrong = []
    for name, member in _protocol_members().items():
        impl = inspect.getattr_static(cls, name, None)
        if impl is None:
            wrong.append(f"{name}: missing")
        elif isinstance(member, property):
            if not isinstance(impl, property):
                wrong.append(f"{name}: not a property")
            elif typing.get_type_hints(impl.fget).get("return") != typing.get_type_hints(member.fget)["return"]:
                wrong.append(f"{name}: returns {typing.get_type_hints(impl.fget).get('return')}")
        elif not callable(impl):
            wrong.append(f"{name}: not a method")
        else:
            want, got = inspect.signature(member), inspect.signature(impl)
            shape = [(p.name, p.kind, p.default) for p in want.parameters.values()]
            if [(p.name, p.kind, p.default) for p in got.parameters.values()] != shape:
                wrong.append(f"{name}: signature {got} != {want}")
            elif typing.get_type_hints(impl) != typing.get_type_hints(member):
                wrong.append(f"{name}: types {typing.get_type_hints(impl)} != {typing.get_type_hints(member)}")
    return wrong


# --------------------------------------------------------------------------- the runtimes


@pytest.fixture(scope="module")
def cpu_runtime() -> ModelRuntime:
    return ModelRuntime(DEFAULT, provider="cpu")


@pytest.fixture(scope="module")
def gpu_runtime(tmp_path_factory) -> GpuRuntime:
    if GPU is not None:
        pytest.skip(f"no usable GPU: {GPU}")
    batched = export_batched(DEFAULT, tmp_path_factory.mktemp("batched"), GPU_BATCH)
    return GpuRuntime(DEFAULT, provider="cuda", batched=batched)


@pytest.fixture
def fake_runtime() -> FakeRuntime:
    return FakeRuntime(**FAKE_SETTINGS)


IMPLEMENTATIONS = [
    pytest.param("cpu_runtime", id="cpu"),
    pytest.param("gpu_runtime", id="gpu", marks=pytest.mark.gpu),
    pytest.param("fake_runtime", id="fake"),
]


@pytest.fixture(params=IMPLEMENTATIONS)
def runtime(request) -> Runtime:
    return request.getfixturevalue(request.param)


def _expected(rt: Runtime) -> dict:
    """What ``rt`` must report, from the manifest file (bundle runtimes) or the fake's settings."""
    if isinstance(rt, FakeRuntime):
        return {**FAKE_SETTINGS, "trained": True, "classes": CLASSES, "thresholds": {c: 0.5 for c in CLASSES}}
    raw = json.loads(DEFAULT.read_text())
    audio = raw["encoders"]["audio"]["preprocess"]
    return {"trained": raw["trained"], "classes": tuple(raw["classes"]), "thresholds": raw["thresholds"],
            "consistency_threshold": raw["consistency_threshold"], "embedding_dim": raw["embedding_dim"],
            "audio_window_s": audio["window_s"], "audio_sample_rate_hz": audio["sample_rate_hz"],
            "radar_frames": raw["encoders"]["radar"]["preprocess"].get("stack_frames", 1)}


def _raw(rt: Runtime, seed: int) -> dict[str, np.ndarray]:
    """Raw sensor data of every modality, as the core hands it over."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 80))
    points = np.column_stack([rng.uniform(-5, 5, n), rng.uniform(0.5, 12, n), rng.uniform(-1, 2, n),
                              rng.normal(0, 1.5, n), rng.uniform(5, 40, n), rng.uniform(-80, -60, n)])
    samples = int(rt.audio_window_s * rt.audio_sample_rate_hz)
    return {"camera": rng.integers(0, 256, (120, 160, 3), dtype=np.uint8),
            "radar": points.astype(np.float32),
            "audio": (0.1 * rng.standard_normal(samples)).astype(np.float32)}


def _embeddings(rt: Runtime, seed: int) -> dict[str, np.ndarray]:
    raw = _raw(rt, seed)
    return {m: rt.encode(m, *rt.preprocess(m, raw[m])) for m in MODALITIES}


def _tolerance(rt: Runtime) -> float:
    return 1e-3 if isinstance(rt, GpuRuntime) else 1e-5


# --------------------------------------------------------------------------- static checks


@pytest.mark.parametrize("cls", [ModelRuntime, GpuRuntime, FakeRuntime], ids=lambda c: c.__name__)
def test_each_class_has_the_protocols_members_signatures_and_types(cls):
    assert _mismatches(cls) == []


def test_the_static_check_sees_a_missing_member():
    # A runtime without consistency_threshold (what GpuRuntime once was) fails both checks.
    partial = type("Partial", (), {k: v for k, v in vars(FakeRuntime).items() if k != "consistency_threshold"})
    assert _mismatches(partial) == ["consistency_threshold: missing"]
    assert not isinstance(partial(**FAKE_SETTINGS), Runtime)
    assert isinstance(FakeRuntime(**FAKE_SETTINGS), Runtime)


def test_the_static_check_sees_another_signature():
    class Renamed(FakeRuntime):
        def encode(self, kind: str, *arrays: np.ndarray) -> np.ndarray:  # parameter renamed
            return super().encode(kind, *arrays)

    assert [w.split(":")[0] for w in _mismatches(Renamed)] == ["encode"]


# --------------------------------------------------------------------------- the contract


def test_is_a_runtime(runtime):
    assert isinstance(runtime, Runtime)
    assert runtime.name and runtime.provider and runtime.provider_note
    assert runtime.trained is _expected(runtime)["trained"]


def test_classes_thresholds_and_consistency_threshold(runtime):
    want = _expected(runtime)
    assert runtime.classes == tuple(want["classes"])
    assert dict(runtime.thresholds) == dict(want["thresholds"])
    assert runtime.consistency_threshold is not None
    assert runtime.consistency_threshold == want["consistency_threshold"]
    assert runtime.embedding_dim == want["embedding_dim"]
    assert runtime.audio_window_s == want["audio_window_s"]
    assert runtime.audio_sample_rate_hz == want["audio_sample_rate_hz"]
    assert runtime.radar_frames == want["radar_frames"]


def test_preprocess_encode_fuse_round_trip(runtime):
    raw = _raw(runtime, 0)
    embeddings = {}
    for m in MODALITIES:
        arrays = runtime.preprocess(m, raw[m])
        assert isinstance(arrays, tuple) and arrays, m
        assert all(isinstance(a, np.ndarray) and a.dtype == np.float32 for a in arrays), m
        emb = runtime.encode(m, *arrays)
        assert emb.shape == (1, runtime.embedding_dim) and emb.dtype == np.float32, m
        assert np.isfinite(emb).all(), m
        embeddings[m] = emb
    out = runtime.fuse(embeddings)
    assert isinstance(out, HeadOutput)
    n_classes, n_mod = len(runtime.classes), len(MODALITIES)
    assert out.probabilities.shape == out.logits.shape == (n_classes,)
    assert out.certainty.shape == out.weights.shape == out.present.shape == (n_mod,)
    assert out.probabilities.dtype == np.float32
    assert ((out.probabilities > 0) & (out.probabilities < 1)).all()
    np.testing.assert_allclose(out.probabilities, 1 / (1 + np.exp(-out.logits.astype(np.float64))), atol=1e-6)
    assert out.present.tolist() == [1.0] * n_mod
    assert out.weights.sum() == pytest.approx(1.0, abs=1e-5) and (out.weights > 0).all()
    assert ((out.certainty >= 0) & (out.certainty <= 1)).all()
    assert isinstance(out.consistency, float) and -1.0 - 1e-5 <= out.consistency <= 1.0 + 1e-5
    # Deterministic: the same inputs give the same answer.
    again = runtime.fuse({m: runtime.encode(m, *runtime.preprocess(m, raw[m])) for m in MODALITIES})
    np.testing.assert_allclose(again.logits, out.logits, atol=_tolerance(runtime))


def test_encode_batch_equals_encode_one_by_one(runtime):
    # Five sets: with the GPU runtime's batch of 3, one full batch and one padded one.
    sets = [_raw(runtime, seed) for seed in range(5)]
    for m in MODALITIES:
        inputs = [runtime.preprocess(m, s[m]) for s in sets]
        together = runtime.encode_batch(m, inputs)
        assert len(together) == len(inputs)
        for args, emb in zip(inputs, together):
            assert emb.shape == (1, runtime.embedding_dim) and emb.dtype == np.float32
            np.testing.assert_allclose(emb, runtime.encode(m, *args), atol=_tolerance(runtime), err_msg=m)
        # Different inputs, different embeddings: the batch is not one answer repeated.
        assert np.abs(together[0] - together[1]).max() > 1e-6, m
    assert runtime.encode_batch("camera", []) == []


def test_missing_modalities_get_zero_weight(runtime):
    e = _embeddings(runtime, 1)
    out = runtime.fuse({"camera": e["camera"], "radar": None, "audio": e["audio"]})
    assert out.present.tolist() == [1.0, 0.0, 1.0]
    assert out.weights[1] == 0.0 and out.certainty[1] == 0.0
    assert out.weights.sum() == pytest.approx(1.0, abs=1e-5) and (out.weights[[0, 2]] > 0).all()
    # A missing key is the same as None; a 1-D embedding is accepted; one modality cannot disagree.
    only = runtime.fuse({"audio": e["audio"][0]})
    assert only.present.tolist() == [0.0, 0.0, 1.0]
    assert only.weights.tolist() == [0.0, 0.0, 1.0] and only.consistency == 1.0
    nothing = runtime.fuse({})
    for arr in (nothing.probabilities, nothing.certainty, nothing.weights, nothing.logits):
        assert np.isfinite(arr).all()
    assert nothing.weights.tolist() == [0.0] * 3 and nothing.certainty.tolist() == [0.0] * 3
    assert nothing.consistency == 1.0


def test_consistency_is_full_agreement_for_one_modality_or_identical_inputs(runtime):
    e = _embeddings(runtime, 2)["camera"]
    assert runtime.fuse({"camera": e, "radar": e, "audio": e}).consistency == pytest.approx(1.0, abs=1e-4)
    assert runtime.fuse({"camera": e}).consistency == 1.0  # nothing to disagree with
    other = runtime.fuse({"camera": e, "radar": -e}).consistency
    assert -1.0 <= other <= 1.0


def test_bad_inputs_raise_value_errors_naming_the_problem(runtime):
    raw = _raw(runtime, 3)
    good = runtime.preprocess("camera", raw["camera"])
    dim = runtime.embedding_dim
    with pytest.raises(ValueError, match="unknown modality"):
        runtime.preprocess("lidar", raw["camera"])
    with pytest.raises(ValueError, match="unknown modality"):
        runtime.encode("lidar", *good)
    with pytest.raises(ValueError, match="camera"):
        runtime.encode("camera", good[0][..., :-1].copy())  # wrong shape
    with pytest.raises(ValueError, match="camera"):
        runtime.encode("camera", good[0].astype(np.float64))  # wrong dtype
    with pytest.raises(ValueError, match="radar: expected 2 input array"):
        runtime.encode("radar", runtime.preprocess("radar", raw["radar"])[0])
    with pytest.raises(ValueError, match="unknown modalities"):
        runtime.fuse({"lidar": None})
    with pytest.raises(ValueError, match="radar embedding"):
        runtime.fuse({"radar": np.zeros((1, dim + 1), np.float32)})
    with pytest.raises(ValueError, match="NaN"):
        runtime.fuse({"audio": np.full((1, dim), np.nan, np.float32)})
    with pytest.raises(ValueError, match="camera"):
        runtime.encode_batch("camera", [good, (good[0][..., :-1].copy(),)])
