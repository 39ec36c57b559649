"""``fusion train``: the shipped encoders distilled from pretrained teachers, bound into one space.

Stages, each saved in ``--out`` as soon as it finishes (``--resume`` reloads finished stages):

1. **audio** (``audio_student.pt``): the audio encoder and its classifier distilled from YAMNet on
   the real corpus with augmentation (:mod:`models.audio_distill`); thresholds chosen on held-out
   ``val`` sources, figures reported on held-out ``test`` sources.
2. **camera** (``camera_student.pt``): the camera encoder distilled from YOLOX-nano (what and
   where) and MobileNetV2 (a general image embedding) on real frames, composites and simulator
   renders (:mod:`models.camera_distill`).
3. **radar** (``radar_student.pt``): the radar encoder bound to the camera encoder by InfoNCE on
   time-matched simulated windows (and the user's own recordings, unlabelled), with a classifier
   for what a radar can observe (:mod:`models.radar_bind`). The camera's spatial part learns with
   it and is saved here (``camera_where``), on top of the camera stage's encoder; the camera's
   backbone and *what* stay as distilled.
4. **head**: :class:`models.architectures.FusionHead` takes the three classifiers, the
   observability masks and each modality's thresholds (folded into its bias): nothing in the
   head is fitted on a mixture of modalities, so any subset of sensors is a rig.

The teachers are read by path at training time only and never exported.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fusion_node.errors import ConfigError
from fusion_node.vocabulary import CLASSES, OBSERVES, WITNESSES
from models import audio_distill, audio_student, camera_distill
from models.architectures import AudioEncoder, CameraEncoder, FusionHead
from models.audio_corpus import check_corpus
from models.audio_distill import AudioDistillConfig
from models.audio_synth import MADE_CLASSES, SYNTH_SOURCE
from models.dataset import DATA_VERSION, PREPROCESS, Windows, load_or_generate
from models.evaluate import recall_at_k, retrieval_groups
from models.radar_bind import (RadarBindConfig, RadarStudent, embed_images, f1_threshold, radar_probs, train_radar,
                               trained_where)
from models.teacher_audio import YamnetTeacher

__all__ = ["TrainConfig", "Models", "train", "load_students"]

WITNESS_RECALL = 0.9
STAGE_FILES = {"audio": "audio_student.pt", "camera": "camera_student.pt", "radar": "radar_student.pt"}


@dataclass
class TrainConfig:
    """Every knob of a training run; saved beside the students and summarised in the manifest."""

    seed: int = 0
    real_clips: str | None = None
    corpora: tuple[str, ...] = ()  # further corpus folders (models/corpus's layout; DIR/video/ for the camera), training sources
    audio_teacher: str | None = None
    camera_teacher: str | None = None  # YOLOX-nano
    image_teacher: str | None = None  # MobileNetV2
    embed_dim: int = 128
    audio_windows_per_class: int = 2000
    audio_background_windows: int = 4000
    audio_epochs: int = 12
    audio_threshold_folds: int = 4  # folds by source that score the training sources for the thresholds
    audio_synthetic: int = 0  # made horns and sirens per class that the teacher vouches for (models.audio_synth)
    camera_epochs: int = 20
    camera_frames: int = 500  # frames read per real video (the teacher labels each)
    camera_composites: int = 1200
    camera_renders: int = 2000
    camera_folds: bool = True  # held-out-video folds before the shipped student (the figures and thresholds)
    camera_still: float = 0.25  # per frame of a still corpus video, copies of its empty scene (camera_distill.still_frame)
    radar_samples: int = 16000
    radar_clutter: float = 0.15  # share of the radar's windows drawn with heavy clutter (20-35 false points)
    radar_epochs: int = 60
    radar_camera_where: bool = True  # the camera's spatial part learns with the radar (False: the camera stays frozen)
    cache_dir: str = ".cache/datasets"
    extra: dict = field(default_factory=dict)


@dataclass
class Models:
    """The trained encoders and head, with each modality's thresholds and the held-out figures."""

    camera: nn.Module
    radar: nn.Module
    audio: nn.Module
    head: FusionHead
    thresholds: dict[str, dict[str, float]]
    metrics: dict
    witnesses: dict[str, tuple[str, ...]]
    observes: dict[str, tuple[str, ...]]


def _require(path: str | None, option: str, what: str) -> Path:
    if not path:
        raise ConfigError(f"fusion train: {option} PATH is required ({what})")
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"fusion train: {option} {path}: no such file")
    return p


def _audio_stage(cfg: TrainConfig, out: Path, log) -> dict:
    teacher = YamnetTeacher(_require(cfg.audio_teacher, "--audio-teacher", "YAMNet ONNX, the audio teacher"))
    acfg = AudioDistillConfig(seed=cfg.seed, windows_per_class=cfg.audio_windows_per_class,
                              background_windows=cfg.audio_background_windows, epochs=cfg.audio_epochs,
                              embed_dim=cfg.embed_dim, threshold_folds=cfg.audio_threshold_folds,
                              synthetic_clips=cfg.audio_synthetic,
                              synthetic_windows=cfg.audio_windows_per_class // 2 if cfg.audio_synthetic else 0)
    splits = audio_distill.split_clips(Path(cfg.real_clips), [Path(c) for c in cfg.corpora])
    log("audio: " + ", ".join(f"{k} {len(v)} clips" for k, v in splits.items()))
    pool = audio_distill.build_pool(splits["train"], teacher, acfg, progress="audio windows")
    test = audio_distill.eval_windows(splits["test"], teacher, "audio test")
    student = audio_student.train_audio_student(pool, acfg)
    # Thresholds (the student's and, for a fair comparison, the teacher's) are chosen on windows
    # their scorer never learnt from: the val sources, and the training sources scored out of fold.
    calib = audio_distill.threshold_windows(splits, teacher, "audio threshold sources")
    own = calib.in_split("train")
    if acfg.threshold_folds:
        calib_probs = np.empty((len(calib.clip), len(CLASSES)), np.float32)
        calib_probs[~own] = audio_student.student_probs(student, calib.subset(~own))
        calib_probs[own] = audio_student.out_of_fold_probs(pool, calib.subset(own), acfg, log=log)
    else:
        calib = calib.subset(~own)
        calib_probs = audio_student.student_probs(student, calib)
    # Kept so that another threshold rule can be tried without training the folds again.
    np.savez(out / "audio_calibration.npz", probs=calib_probs, clip=calib.clip, teacher=calib.teacher,
             source=calib.sources().astype(str), label=np.array([calib.clips[i].label for i in calib.clip]))
    thresholds = audio_distill.choose_thresholds(calib_probs, calib, acfg.target_precision)
    teacher_thresholds = audio_distill.choose_thresholds(calib.teacher, calib, acfg.target_precision)
    metrics = {"student": audio_distill.clip_metrics(audio_student.student_probs(student, test), test, thresholds),
               "teacher": audio_distill.clip_metrics(test.teacher, test, teacher_thresholds),
               "thresholds": thresholds, "teacher_thresholds": teacher_thresholds,
               "clips": {k: len(v) for k, v in splits.items()},
               "threshold_folds": acfg.threshold_folds,
               "synthetic": {c: sum(1 for clip in pool.clips if clip.source == SYNTH_SOURCE and clip.label == c)
                             for c in MADE_CLASSES} if acfg.synthetic_windows else {},
               "trained_on": sorted({(c.source, c.licence, c.credit) for c in splits["train"]})}
    log(f"audio: held-out macro-F1 {metrics['student']['macro_f1']:.3f} (teacher {metrics['teacher']['macro_f1']:.3f}), "
        f"false labels on background {metrics['student']['false_label_rate']:.3f}")
    state = {"encoder": student.encoder.state_dict(), "classifier": student.classifier.state_dict(),
             "thresholds": thresholds, "metrics": metrics, "config": asdict(acfg)}
    torch.save(state, out / STAGE_FILES["audio"])
    return state


def _camera_stage(cfg: TrainConfig, out: Path, log) -> dict:
    yolox = _require(cfg.camera_teacher, "--camera-teacher", "YOLOX-nano ONNX, the detector teacher")
    mobilenet = _require(cfg.image_teacher, "--image-teacher", "MobileNetV2 ONNX, the image-embedding teacher")
    metrics = camera_distill.train_camera_student(
        Path(cfg.real_clips), yolox, mobilenet, out, seed=cfg.seed, epochs=cfg.camera_epochs,
        max_frames=cfg.camera_frames, n_composites=cfg.camera_composites, n_sim=cfg.camera_renders,
        evaluate=cfg.camera_folds, corpora=[Path(c) for c in cfg.corpora], still_share=cfg.camera_still)
    log(f"camera: thresholds {metrics.get('thresholds')}, pooled held-out {json.dumps(metrics.get('pooled_at_thresholds'))}")
    return torch.load(out / STAGE_FILES["camera"], weights_only=False)


def _radar_stage(cfg: TrainConfig, camera: CameraEncoder, out: Path, recordings: Windows | None, log) -> dict:
    cache = Path(cfg.cache_dir)
    real = Path(cfg.real_clips) if cfg.real_clips else None
    data = load_or_generate(cache, cfg.radar_samples, cfg.seed, "train", real_dir=real)
    # The simulator's ordinary scenes hold a few false points; a radar that never met a cluttered
    # room reports its clutter as people and cars, and the head passes the surest vote through.
    n_clutter = int(round(cfg.radar_samples * cfg.radar_clutter))
    if n_clutter:
        data = Windows.concat([data, load_or_generate(cache, n_clutter, cfg.seed + 2, "train", adverse="clutter",
                                                      real_dir=real)])
    if recordings is not None:
        data = Windows.concat([data, recordings])
    rcfg = RadarBindConfig(seed=cfg.seed, epochs=cfg.radar_epochs, embed_dim=cfg.embed_dim,
                           camera_where=cfg.radar_camera_where)
    student = train_radar(data, camera, rcfg, log=log)  # trains the camera's where_modules in place
    where = trained_where(camera, rcfg)
    val = load_or_generate(cache, max(500, cfg.radar_samples // 8), cfg.seed + 1, "train", real_dir=real)
    emb, probs = radar_probs(student, val)
    thresholds = {c: f1_threshold(probs[:, k], val.labels[:, k] > 0) for k, c in enumerate(CLASSES)
                  if c in OBSERVES["radar"]}
    metrics = {"image_features": bool(PREPROCESS["radar"].image_features),
               "stack_frames": PREPROCESS["radar"].stack_frames,
               "retrieval_r1_camera_radar": _retrieval_r1(embed_images(camera, val.image).numpy(), emb, val.pairable),
               "held_out_windows": len(val), "windows": len(data), "clutter_windows": n_clutter,
               "static_apart": True,  # the simulator draws static returns per scene (Scene.static_layout)
               "empty_alike": rcfg.empty_alike,
               "camera_where_trained": bool(where)}
    state = {"encoder": student.encoder.state_dict(), "classifier": student.classifier.state_dict(),
             "camera_where": _where_state(camera, where),
             "thresholds": thresholds, "config": asdict(rcfg), "metrics": metrics}
    torch.save(state, out / STAGE_FILES["radar"])
    log(f"radar: thresholds {thresholds}, camera-radar R@1 among 100 {metrics['retrieval_r1_camera_radar']}")
    return state


def _where_state(camera: CameraEncoder, modules: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The weights of the camera submodules ``modules`` (what the radar stage trained)."""
    prefixes = tuple(f"{name}." for name in modules)
    return {k: v.clone() for k, v in camera.state_dict().items() if k.startswith(prefixes)}


def _stage_camera(states: dict, embed_dim: int) -> CameraEncoder:
    """The camera encoder of the camera stage, with the spatial part the radar stage trained (if it has run)."""
    camera = CameraEncoder(**states["camera"].get("encoder_config", {"embed_dim": embed_dim}))
    camera.load_state_dict({**states["camera"]["encoder"], **states.get("radar", {}).get("camera_where", {})})
    return camera


def _retrieval_r1(camera: np.ndarray, radar: np.ndarray, pairable: np.ndarray, group: int = 100) -> float | None:
    """Camera-to-radar recall@1 among ``group`` candidates, over disjoint groups of paired windows."""
    runs = [recall_at_k(camera[idx], radar[idx], 1) for idx in retrieval_groups(pairable, group)]
    return round(float(np.mean(runs)), 4) if runs else None


def load_students(out: Path, embed_dim: int = 128) -> Models:
    """The encoders and head from a training folder whose three stages are done."""
    states = {}
    for m, f in STAGE_FILES.items():
        if not (out / f).is_file():
            raise ConfigError(f"{out / f}: stage {m!r} has not run; run `fusion train --out {out}` first")
        states[m] = torch.load(out / f, weights_only=False)
    camera = _stage_camera(states, embed_dim)
    audio = AudioEncoder(embed_dim)
    audio.load_state_dict(states["audio"]["encoder"])
    # Stages saved before the radar read image coordinates have 5 features per point.
    radar = RadarStudent(embed_dim, in_features=int(states["radar"]["encoder"]["point_mlp.0.weight"].shape[1]))
    radar.encoder.load_state_dict(states["radar"]["encoder"])
    # A modality vouches for a class's absence only where, on recordings it never saw, it rarely
    # misses the class when it is there (held-out recall >= WITNESS_RECALL at its threshold): a
    # witness that misses people would contradict every radar that sees them.
    pooled = states["camera"].get("metrics", {}).get("pooled_at_thresholds")
    witnesses = dict(WITNESSES)
    if pooled is not None:
        witnesses["camera"] = tuple(c for c in WITNESSES["camera"]
                                    if pooled.get(c, {}).get("recall", 0.0) >= WITNESS_RECALL)
    # Nor does it vote for a class it was not shown to see on recordings it never saw: a camera
    # class whose best held-out F0.5 stays under camera_distill.MIN_F05 (the stage's "reliable"
    # list) is masked out of its vote, as a class it cannot observe is. Such a vote is mostly
    # wrong at a new place (a plaza's walkers taken for dogs), and the radar and microphone,
    # which do observe those classes, still vote.
    observes = dict(OBSERVES)
    reliable = states["camera"].get("reliable")
    if reliable is not None:
        observes["camera"] = tuple(c for c in OBSERVES["camera"] if c in reliable)
        witnesses["camera"] = tuple(c for c in witnesses["camera"] if c in observes["camera"])
    head = FusionHead(embed_dim, len(CLASSES), observes=observes, witnesses=witnesses)
    thresholds = {}
    for k, m in enumerate(("camera", "radar", "audio")):
        head.classifiers[k].load_state_dict(states[m]["classifier"])
        thresholds[m] = {c: float(v) for c, v in states[m]["thresholds"].items()}
    head.fold_thresholds(thresholds, CLASSES)
    for module in (camera, audio, radar, head):
        module.eval()
    metrics = {m: states[m].get("metrics", {}) for m in STAGE_FILES}
    return Models(camera, radar.encoder, audio, head, thresholds, metrics, witnesses, observes)


def train(cfg: TrainConfig, out: Path, *, resume: bool = False, recordings: Windows | None = None,
          log=print) -> Models:
    """Run every stage not already done (with ``resume``); returns the encoders and head ready to export."""
    if not cfg.real_clips:
        raise ConfigError("fusion train: --real-clips DIR is required (the real recordings the encoders learn from)")
    if cfg.audio_threshold_folds < 0 or cfg.audio_threshold_folds == 1:
        raise ConfigError(f"fusion train: --audio-folds {cfg.audio_threshold_folds}: give 0 (the val sources alone) "
                          "or 2 or more")
    if not 0.0 <= cfg.radar_clutter <= 1.0:
        raise ConfigError(f"fusion train: --radar-clutter {cfg.radar_clutter}: give a share between 0 and 1")
    if not 0.0 <= cfg.camera_still <= 10.0:  # NaN fails too
        raise ConfigError(f"fusion train: --camera-still {cfg.camera_still:g}: give copies per frame between 0 and 10")
    for corpus in cfg.corpora:  # before any stage runs, not when the audio stage reaches it
        check_corpus(corpus)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    done = {m: resume and (out / f).is_file() for m, f in STAGE_FILES.items()}
    for m, ok in done.items():
        if ok:
            log(f"{m}: done before, reloading {out / STAGE_FILES[m]}")
    if not done["audio"]:
        _audio_stage(cfg, out, log)
    if not done["camera"]:
        _camera_stage(cfg, out, log)
    if not done["radar"]:
        camera = _stage_camera({"camera": torch.load(out / STAGE_FILES["camera"], weights_only=False)}, cfg.embed_dim)
        _radar_stage(cfg, camera, out, recordings, log)
    (out / "train_config.json").write_text(json.dumps({**asdict(cfg), "data_version": DATA_VERSION,
                                                       "minutes": round((time.monotonic() - t0) / 60, 2)}, indent=2))
    return load_students(out, cfg.embed_dim)
