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
from models.dataset import DATA_VERSION, PREPROCESS, load_or_generate, windows_from_recordings
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
    cfg = TrainConfig(seed=args.seed, samples=args.samples, align_epochs=args.align_epochs,
                      fuse_epochs=args.fuse_epochs, distill=args.distill, batch=args.batch,
                      cache_dir=str(args.cache_dir), align_weight=args.align_weight, init_from=args.init_from,
                      lr=args.lr, real_clips=None if real is None else str(real))
    print(f"fusion train: third-party recordings: {real or 'none (only what ships)'}", flush=True)
    recordings = None
    if args.recordings:
        recordings = windows_from_recordings(Path(args.recordings))
        print(f"fusion train: {len(recordings)} windows from {args.recordings} (alignment only: no labels)")
    models = train(cfg, Path(args.out), resume=args.resume, recordings=recordings,
                   log=lambda m: print(f"fusion train: {m}", flush=True))
    if args.export:
        _export(models, cfg, Path(args.export))
    return 0


def _export(models, cfg, out: Path) -> Path:
    from models.export import export_bundle  # torch
    from models.train import choose_consistency_threshold, choose_thresholds  # torch

    val = load_or_generate(Path(cfg.cache_dir), cfg.val_samples, cfg.seed + 1, "train",
                           real_dir=Path(cfg.real_clips) if cfg.real_clips else None)
    thresholds = choose_thresholds(models, val)
    consistency_threshold = choose_consistency_threshold(models, val)
    manifest = export_bundle(out, {"camera": models.camera, "radar": models.radar, "audio": models.audio},
                             models.head, classes=CLASSES, preprocess=PREPROCESS, embed_dim=cfg.embed_dim,
                             trained=True, seed=cfg.seed, data_version=DATA_VERSION,
                             name=f"fusion-default-s{cfg.seed}", thresholds=thresholds,
                             consistency_threshold=consistency_threshold)
    print(f"fusion export: wrote {manifest} (thresholds {thresholds}, consistency threshold "
          f"{consistency_threshold:.3f})")
    return manifest


def _cmd_export(args: argparse.Namespace) -> int:
    import torch

    from models.train import TrainConfig, _latest, build_models  # torch

    ckpt = Path(args.checkpoint)
    found = _latest(ckpt, "fuse")
    if found is None:
        raise ConfigError(f"{ckpt}: no fuse-stage checkpoint found; run `fusion train --out {ckpt}` first")
    state = torch.load(found[1], weights_only=False)
    cfg = TrainConfig(**state["config"])
    models = build_models(cfg)
    models.align.load_state_dict(state["align"])
    models.head.load_state_dict(state["head"])
    models.train(False)
    _export(models, cfg, Path(args.out))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    real = _real_clips(args.real_clips)
    metrics, extra = evaluate(Path(args.models), n_eval=args.windows, n_adverse=args.adverse_windows,
                              cache_dir=Path(args.cache_dir), provider=args.provider, real_clips=real)
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
    if "tamper" in metrics:
        t = metrics["tamper"]
        print(f"tampering (swapped feeds) detected {t['detection_rate']:.3f}, false alarms {t['false_alarm_rate']:.3f}")
    real = metrics["real"]
    if real["folder"] is None:
        print("real recordings: not evaluated (give --real-clips DIR)")
    else:
        print(f"real recordings in {real['folder']} correct: {real['correct']}/{real['total']} "
              f"(never seen in training: {real['unseen_correct']}/{real['unseen_total']})"
              f"{'; not found: ' + ', '.join(real['missing']) if real['missing'] else ''}")
    if not args.json:
        print(text)
    return 0


_REAL_HELP = ("a folder of third-party recordings laid out as the development data (audio/, video/, radar/, "
              "registry/audio/), read in place and never shipped (default: none, only what ships)")


def add_parsers(sub) -> None:
    """Register the train/export/eval subcommands on the ``fusion`` parser."""
    t = sub.add_parser("train", help="train the encoders and fusion head on simulated (and your) data",
                       description="Stage 1: InfoNCE alignment (camera binds radar and audio). Stage 2: gated "
                                   "fusion head with modality dropout. Optional stage 3: distillation.")
    t.add_argument("--out", default=".cache/train", help="folder for checkpoints and the log (default .cache/train)")
    t.add_argument("--seed", type=int, default=0, help="seed for data, initialisation and order (default 0)")
    t.add_argument("--samples", type=int, default=16000, help="simulated training windows (default 16000)")
    t.add_argument("--align-epochs", type=int, default=3, help="alignment epochs (default 3)")
    t.add_argument("--fuse-epochs", type=int, default=7, help="fusion epochs (default 7)")
    t.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    t.add_argument("--align-weight", type=float, default=0.5,
                   help="weight of the InfoNCE term during fusion training (default 0.5)")
    t.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3)")
    t.add_argument("--init-from", default=None, metavar="DIR",
                   help="start from the newest checkpoint of another training folder (fine-tuning)")
    t.add_argument("--distill", action="store_true", help="train a wider teacher first and distil it")
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoints in --out")
    t.add_argument("--recordings", default=None, metavar="DIR",
                   help="also align on your own synchronised recordings: DIR holds sets of video + radar "
                        ".dat + audio files with the same stem, captured together")
    t.add_argument("--real-clips", default=None, metavar="DIR",
                   help="mix these third-party recordings into the simulator's training assets: " + _REAL_HELP)
    t.add_argument("--export", default=None, metavar="DIR", help="export the trained models to DIR afterwards")
    t.add_argument("--cache-dir", default=".cache/datasets", help="where generated datasets are kept")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("export", help="export a trained checkpoint to ONNX + manifest",
                       description="One ONNX file per encoder and one for the head, fixed shapes, torch parity "
                                   "checked, per-class thresholds chosen on validation windows.")
    e.add_argument("--checkpoint", default=".cache/train", help="training output folder (default .cache/train)")
    e.add_argument("--out", default=str(DEFAULT_BUNDLE), help=f"bundle folder (default {DEFAULT_BUNDLE})")
    e.set_defaults(func=_cmd_export)

    v = sub.add_parser("eval", help="evaluate a model bundle: retrieval, macro-F1, adverse, missing, real clips",
                       description="Runs the exported models through the node's runtime on held-out data.")
    v.add_argument("--models", default=str(DEFAULT_BUNDLE / "manifest.json"), help="manifest.json to evaluate")
    v.add_argument("--json", default=None, metavar="FILE", help="write the metrics here")
    v.add_argument("--report", default=None, metavar="DIR", help="write report.html here")
    v.add_argument("--windows", type=int, default=1000, help="held-out windows (default 1000)")
    v.add_argument("--adverse-windows", type=int, default=250, help="windows per adverse condition (default 250)")
    v.add_argument("--provider", default="cpu", choices=["auto", "tensorrt", "cuda", "cpu"])
    v.add_argument("--real-clips", default=None, metavar="DIR",
                   help="evaluate on the held-out parts of these real recordings (and use them in the simulated "
                        "scenes): " + _REAL_HELP)
    v.add_argument("--cache-dir", default=".cache/datasets", help="where generated datasets are kept")
    v.set_defaults(func=_cmd_eval)

