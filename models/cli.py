"""``fusion train``, ``fusion export`` and ``fusion eval``: the model lifecycle on the command line.

The training stack (torch) is imported only by the commands that need it, so that the rest of
``fusion`` runs without it. Third-party recordings for training and evaluation come from a
folder given with ``--real-clips`` (read in place, never shipped); without it only what ships is
used.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fusion_node.errors import ConfigError
from fusion_node.vocabulary import CLASSES
from models.audio_corpus import check_corpus
from models.audio_distill import ERROR_KINDS
from models.card import CONSISTENCY_THRESHOLD, write_model_card
from models.dataset import DATA_VERSION, PREPROCESS, windows_from_recordings
from models.evaluate import evaluate, write_report

__all__ = ["add_parsers"]

DEFAULT_BUNDLE = Path(__file__).resolve().parent / "default"
def _real_clips(value: str | None) -> Path | None:
    """The --real-clips option: a folder, or unset / 'none' for only what ships."""
    if value is None or value == "none":
        return None
    path = Path(value)
    if not path.is_dir():
        raise ConfigError(f"--real-clips {value}: no such folder")
    return path.resolve()


def _cmd_train(args: argparse.Namespace) -> int:
    from models.train import TrainConfig, train  # torch

    real = _real_clips(args.real_clips)
    if args.audio_synthetic < 0:
        raise ConfigError(f"--audio-synthetic {args.audio_synthetic}: must be 0 or more (0: real recordings only)")
    cfg = TrainConfig(seed=args.seed, real_clips=None if real is None else str(real), corpora=tuple(args.corpus),
                      audio_teacher=args.audio_teacher, camera_teacher=args.camera_teacher,
                      image_teacher=args.image_teacher, audio_epochs=args.audio_epochs,
                      audio_threshold_folds=args.audio_folds, audio_synthetic=args.audio_synthetic,
                      audio_windows_per_class=args.audio_windows, audio_background_windows=args.audio_windows * 2,
                      camera_epochs=args.camera_epochs, camera_frames=args.camera_frames,
                      camera_composites=args.camera_composites, camera_renders=args.camera_renders,
                      camera_folds=not args.no_camera_folds, camera_still=args.camera_still,
                      radar_samples=args.radar_samples, radar_clutter=args.radar_clutter,
                      radar_epochs=args.radar_epochs,
                      radar_camera_where=not args.frozen_camera, cache_dir=str(args.cache_dir))
    print(f"fusion train: real recordings: {real or 'none'}", flush=True)
    recordings = None
    if args.recordings:
        recordings = windows_from_recordings(Path(args.recordings), calibration=args.recordings_calibration)
        print(f"fusion train: {len(recordings)} windows from {args.recordings} (radar binding only: no labels)")
    models = train(cfg, Path(args.out), resume=args.resume, recordings=recordings,
                   log=lambda m: print(f"fusion train: {m}", flush=True))
    if args.export:
        _export(models, cfg.seed, Path(args.export))
    return 0


def _export(models, seed: int, out: Path) -> Path:
    from models.export import export_bundle  # torch

    # Each modality's own thresholds are folded into the head (logit 0 = its threshold), so the
    # fused probability is judged against 0.5 for every class and every subset of sensors.
    manifest = export_bundle(out, {"camera": models.camera, "radar": models.radar, "audio": models.audio},
                             models.head, classes=CLASSES, preprocess=PREPROCESS, embed_dim=models.head.embed_dim,
                             trained=True, seed=seed, data_version=f"{DATA_VERSION}+corpus-v2",
                             name=f"fusion-distilled-s{seed}", thresholds={c: 0.5 for c in CLASSES},
                             consistency_threshold=CONSISTENCY_THRESHOLD)
    card = write_model_card(out, models.thresholds, models.metrics, models.witnesses, models.observes)
    print(f"fusion export: wrote {manifest} and {card}")
    return manifest


def _cmd_export(args: argparse.Namespace) -> int:
    from models.train import load_students  # torch

    _export(load_students(Path(args.checkpoint)), args.seed, Path(args.out))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    real = _real_clips(args.real_clips)
    teacher = Path(args.audio_teacher) if args.audio_teacher else None
    if teacher is not None and not teacher.is_file():
        raise ConfigError(f"--audio-teacher {args.audio_teacher}: no such file")
    if args.tamper_scenes < 0:
        raise ConfigError(f"--tamper-scenes {args.tamper_scenes}: must be 0 or more")
    if args.corpus and real is None:
        raise ConfigError("--corpus calibrates the teacher beside the held-out real clips: give --real-clips DIR too")
    for corpus in args.corpus:
        check_corpus(corpus)
    videos = Path(args.videos) if args.videos else None
    camera_teacher = Path(args.camera_teacher) if args.camera_teacher else None
    if videos is not None and camera_teacher is None:
        raise ConfigError("--videos needs --camera-teacher PATH (the YOLOX-nano ONNX file the verdicts are judged by)")
    if camera_teacher is not None and not camera_teacher.is_file():
        raise ConfigError(f"--camera-teacher {args.camera_teacher}: no such file")
    if videos is not None and not videos.is_dir():
        raise ConfigError(f"--videos {args.videos}: no such folder")
    metrics, extra = evaluate(Path(args.models), n_eval=args.windows, n_adverse=args.adverse_windows,
                              cache_dir=Path(args.cache_dir), provider=args.provider, real_clips=real,
                              audio_teacher=teacher, tamper_scenes=args.tamper_scenes,
                              corpora=[Path(c) for c in args.corpus], videos=videos, camera_teacher=camera_teacher)
    text = json.dumps(metrics, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    if args.report:
        print(f"fusion eval: report {write_report(metrics, extra, Path(args.report))}")
    f1 = metrics["f1"]
    print(f"retrieval r@1 camera-radar {metrics['retrieval_r1']['camera_radar']:.3f}, "
          f"camera-audio {metrics['retrieval_r1']['camera_audio']:.3f}")
    print(f"macro-F1 fused {f1['fused']:.3f} | camera {f1['camera_only']:.3f} radar {f1['radar_only']:.3f} "
          f"audio {f1['audio_only']:.3f}")
    print(f"adverse fused {f1['adverse']['fused']:.3f} vs best single {f1['adverse']['best_single']:.3f}")
    print("missing " + ", ".join(f"{k} {v:.3f}" for k, v in f1["missing"].items()))
    t = metrics["tamper"]
    print(f"tampering (swapped feeds): similarity detects {t['similarity']['detection_rate']:.3f} "
          f"(false alarms {t['similarity']['false_alarm_rate']:.3f})"
          + (f", consistency detects {t['detection_rate']:.3f} (false alarms {t['false_alarm_rate']:.3f})"
             if "detection_rate" in t else ""))
    ep = t["episodes"]
    if ep["scenes"]:
        print(f"tampering, scenes followed through time: the drift alert detects {ep['detection_rate']:.3f} within "
              f"{ep['seconds_after']:g} s (median {ep['median_delay_s']} s), false alarms {ep['false_alarm_rate']:.3f} "
              f"({ep['scenes']} scenes)")
    real = metrics["real"]
    if real["folder"] is None:
        print("real recordings: not evaluated (give --real-clips DIR)")
    else:
        teacher_f1 = real["teacher_macro_f1"]
        print(f"real audio, held-out sources ({real['clips']} clips): macro-F1 {real['macro_f1']:.3f}"
              f"{'' if teacher_f1 is None else f' (teacher {teacher_f1:.3f})'}, false labels on background "
              f"{real['false_label_rate']:.3f}")
        print("  " + ", ".join(f"{c} P {v['precision']:.2f} R {v['recall']:.2f}" for c, v in real["per_class"].items()))
        print("  recall's 95 % interval, clips as trials: " + ", ".join(
            f"{c} [{v['recall_ci'][0]:.2f}, {v['recall_ci'][1]:.2f}] of {v['clips']}"
            for c, v in real["per_class"].items() if v.get("recall_ci")))
    cam = metrics["real_camera"]
    if cam["folder"] is not None:
        print(f"real videos ({cam['videos']} videos, {cam['frames']} frames), camera against the detector: "
              + ", ".join(f"{c} recall {cam['pooled'][c]['recall']} false {cam['pooled'][c]['false_rate']}"
                          for c in cam["pooled"]))
        kinds = [e["kind"] for e in real["errors"]]
        print(f"  clips wrong: {len(kinds)} (" + ", ".join(f"{kinds.count(k)} {k}" for k in ERROR_KINDS) + ")"
              + ("; each one is in the report" if args.report else ""))
    if not args.json:
        print(text)
    return 0


_REAL_HELP = ("a folder of third-party recordings laid out as the development data (audio/, video/, radar/, "
              "registry/audio/), read in place and never shipped (default: none, only what ships)")


def add_parsers(sub) -> None:
    """Register the train/export/eval subcommands on the ``fusion`` parser."""
    t = sub.add_parser("train", help="distil the encoders from pretrained teachers and bind radar to camera",
                       description="Audio: distilled from YAMNet on real clips. Camera: distilled from YOLOX-nano "
                                   "and MobileNetV2 on real frames and simulator renders. Radar: bound to the camera "
                                   "by InfoNCE on time-matched windows. The head takes each modality's classifier, "
                                   "what it can observe, and its held-out thresholds.")
    t.add_argument("--out", default=".cache/train", help="folder for the stages' results (default .cache/train)")
    t.add_argument("--seed", type=int, default=0, help="seed for data, initialisation and order (default 0)")
    t.add_argument("--real-clips", default=None, metavar="DIR", required=True,
                   help="the real recordings to learn from: " + _REAL_HELP)
    t.add_argument("--corpus", action="append", default=[], metavar="DIR",
                   help="also learn audio from DIR/audio/labels.csv (repeatable; laid out as models/corpus, the "
                        "project's own Debian sounds: car horns, dogs, animals that are not dogs), and the camera from "
                        "the videos in DIR/video/ if it has one (a site's own footage); its sources only train")
    t.add_argument("--audio-teacher", default=None, metavar="PATH", help="YAMNet ONNX file (training only)")
    t.add_argument("--camera-teacher", default=None, metavar="PATH", help="YOLOX-nano ONNX file (training only)")
    t.add_argument("--image-teacher", default=None, metavar="PATH", help="MobileNetV2 ONNX file (training only)")
    t.add_argument("--audio-windows", type=int, default=2000,
                   help="augmented audio windows per class, twice as many of background (default 2000)")
    t.add_argument("--audio-epochs", type=int, default=12, help="audio distillation epochs (default 12)")
    t.add_argument("--audio-folds", type=int, default=4,
                   help="folds by source that score the training recordings for the audio thresholds, with the "
                        "val sources (default 4; 0: the val sources alone)")
    t.add_argument("--audio-synthetic", type=int, default=0, metavar="N",
                   help="also train on N made car horns and N made sirens, each kept only if the audio teacher hears "
                        "it as a vehicle or an alarm (half as many windows as --audio-windows; try 40; default 0: "
                        "real recordings only, as the shipped bundle)")
    t.add_argument("--camera-epochs", type=int, default=20, help="camera distillation epochs (default 20)")
    t.add_argument("--camera-frames", type=int, default=500, help="frames read per real video (default 500)")
    t.add_argument("--camera-composites", type=int, default=1200,
                   help="cut-outs pasted on real empty frames (default 1200)")
    t.add_argument("--camera-renders", type=int, default=2000, help="simulator renders (default 2000)")
    t.add_argument("--camera-still", type=float, default=0.25,
                   help="for a --corpus video from a still camera, its scene without what moves through it (the "
                        "median of its frames) also trains the camera, as this many copies per frame of the video "
                        "(default 0.25; 0: none)")
    t.add_argument("--no-camera-folds", action="store_true",
                   help="skip the held-out-video folds (no camera figures; thresholds default to 0.5)")
    t.add_argument("--radar-samples", type=int, default=16000,
                   help="simulated windows for radar binding (default 16000)")
    t.add_argument("--radar-clutter", type=float, default=0.15,
                   help="extra heavily cluttered windows for the radar, as a share of --radar-samples (default 0.15)")
    t.add_argument("--radar-epochs", type=int, default=60, help="radar binding epochs (default 60)")
    t.add_argument("--frozen-camera", action="store_true",
                   help="bind the radar to the camera encoder as it is (by default the spatial part of the camera's "
                        "embedding learns with the radar; its labels never change)")
    t.add_argument("--resume", action="store_true", help="reload the stages already done in --out")
    t.add_argument("--recordings", default=None, metavar="DIR",
                   help="also bind radar to camera on your own synchronised recordings: DIR holds sets of video + "
                        "radar .dat + audio files with the same stem, captured together")
    t.add_argument("--recordings-calibration", default=None, metavar="FILE",
                   help="the rig calibration file of those recordings, to project their radar points into the "
                        "picture (default: DIR/rig_calibration.yaml when there is one, else the nominal geometry)")
    t.add_argument("--export", default=None, metavar="DIR", help="export the trained models to DIR afterwards")
    t.add_argument("--cache-dir", default=".cache/datasets", help="where generated datasets are kept")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("export", help="export a finished training folder to ONNX + manifest",
                       description="One ONNX file per encoder and one for the head, fixed shapes, torch parity "
                                   "checked; each modality's held-out thresholds folded into the head.")
    e.add_argument("--checkpoint", default=".cache/train", help="training output folder (default .cache/train)")
    e.add_argument("--seed", type=int, default=0, help="the seed the folder was trained with (default 0)")
    e.add_argument("--out", default=str(DEFAULT_BUNDLE), help=f"bundle folder (default {DEFAULT_BUNDLE})")
    e.set_defaults(func=_cmd_export)

    v = sub.add_parser("eval", help="evaluate a model bundle: retrieval, macro-F1, adverse, missing, real clips",
                       description="Runs the exported models through the node's runtime on held-out data.")
    v.add_argument("--models", default=str(DEFAULT_BUNDLE / "manifest.json"), help="manifest.json to evaluate")
    v.add_argument("--json", default=None, metavar="FILE", help="write the metrics here")
    v.add_argument("--report", default=None, metavar="DIR", help="write report.html here")
    v.add_argument("--windows", type=int, default=1000, help="held-out windows (default 1000)")
    v.add_argument("--adverse-windows", type=int, default=250, help="windows per adverse condition (default 250)")
    v.add_argument("--tamper-scenes", type=int, default=100,
                   help="simulated scenes followed through time for the drift alert's tamper figures (default 100; 0: none)")
    v.add_argument("--provider", default="cpu", choices=["auto", "tensorrt", "cuda", "cpu"])
    v.add_argument("--real-clips", default=None, metavar="DIR",
                   help="evaluate on the held-out sources of these real recordings (and use them in the simulated "
                        "scenes): " + _REAL_HELP)
    v.add_argument("--audio-teacher", default=None, metavar="PATH",
                   help="YAMNet ONNX file: score the teacher on the same held-out clips, side by side")
    v.add_argument("--corpus", action="append", default=[], metavar="DIR",
                   help="a further audio corpus the bundle was trained with (as fusion train --corpus; "
                        "repeatable): the teacher's thresholds are chosen on it too, as the student's were")
    v.add_argument("--videos", default=None, metavar="DIR",
                   help="also score the camera on these videos (ones it never trained on) against the detector "
                        "teacher: per video and pooled recall and false rate, as a camera-only rig labels them")
    v.add_argument("--camera-teacher", default=None, metavar="PATH",
                   help="YOLOX-nano ONNX file that judges the frames of --videos")
    v.add_argument("--cache-dir", default=".cache/datasets", help="where generated datasets are kept")
    v.set_defaults(func=_cmd_eval)

