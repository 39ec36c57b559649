"""``fusion train``: contrastive alignment, then the gated fusion head, with resumable checkpoints.

Stage 1, alignment: symmetric InfoNCE between time-matched windows with the camera as the
binding modality (camera-radar and camera-audio), learnable temperature. Needs no labels, so
it also fine-tunes on a user's own synchronised recordings (``--recordings``).

Stage 2, fusion: the head and the event classes, trained with whole-modality dropout so that a
missing sensor is a normal case, while an InfoNCE term keeps the space aligned. Each modality's
certainty is trained to predict how well that modality alone explains the labels.

Stage 3 (optional, ``--distill``): a wider teacher trained the same way, then the shipped
student trained to match its probabilities as well as the labels.

Everything is reproducible by seed: data, initialisation, batch order and dropout masks.
Checkpoints are written after every epoch and ``--resume`` continues from the newest.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fusion_node.vocabulary import CLASSES, MODALITIES
from models.architectures import AlignmentModel, AudioEncoder, CameraEncoder, FusionHead, RadarEncoder
from models.dataset import DATA_VERSION, PREPROCESS, Windows, load_or_generate

__all__ = ["TrainConfig", "Models", "train", "camera_tensor", "build_models", "embed_all", "predict_probs"]


@dataclass
class TrainConfig:
    """Every knob of a training run; saved with each checkpoint and in the manifest."""

    seed: int = 0
    samples: int = 16000
    val_samples: int = 1500
    real_prob: float = 0.25
    embed_dim: int = 128
    batch: int = 128
    align_epochs: int = 3
    fuse_epochs: int = 7
    lr: float = 2e-3
    modality_dropout: float = 0.35
    align_weight: float = 0.5
    width: float = 1.0  # encoder width multiplier (the teacher uses 2.0)
    distill: bool = False
    cache_dir: str = ".cache/datasets"
    init_from: str | None = None  # start from another run's final weights (fine-tuning)
    real_clips: str | None = None  # a folder of third-party recordings mixed into the simulator's assets
    extra: dict = field(default_factory=dict)


@dataclass
class Models:
    camera: nn.Module
    radar: nn.Module
    audio: nn.Module
    head: FusionHead
    align: AlignmentModel

    def modules(self) -> list[nn.Module]:
        return [self.align, self.head]  # align holds the three encoders

    def parameters(self):
        return [p for m in self.modules() for p in m.parameters()]

    def train(self, mode: bool = True) -> None:
        for m in self.modules():
            m.train(mode)


def build_models(cfg: TrainConfig, width: float | None = None) -> Models:
    torch.manual_seed(cfg.seed)
    w = width if width is not None else cfg.width
    cam = CameraEncoder(cfg.embed_dim, stem_channels=int(16 * w)) if w != 1.0 else CameraEncoder(cfg.embed_dim)
    rad = RadarEncoder(cfg.embed_dim, hidden=(int(64 * w), int(128 * w)))
    aud = AudioEncoder(cfg.embed_dim, channels=tuple(int(c * w) for c in (16, 32, 64, 128)))
    head = FusionHead(cfg.embed_dim, len(CLASSES), hidden=int(128 * w))
    align = AlignmentModel({"camera": cam, "radar": rad, "audio": aud})
    return Models(cam, rad, aud, head, align)


def camera_tensor(images_uint8: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 BGR -> the normalised (N, 3, H, W) tensor CameraPreprocess produces."""
    pre = PREPROCESS["camera"]
    x = torch.from_numpy(np.ascontiguousarray(images_uint8[..., ::-1])).float()
    mean = torch.tensor(pre.mean_rgb) * 255.0
    std = torch.tensor(pre.std_rgb) * 255.0
    return ((x - mean) / std).permute(0, 3, 1, 2).contiguous()


def _tensors(w: Windows, idx: np.ndarray) -> dict[str, torch.Tensor]:
    return {
        "image": camera_tensor(w.image[idx]),
        "points": torch.from_numpy(w.points[idx]),
        "mask": torch.from_numpy(w.mask[idx]),
        "logmel": torch.from_numpy(w.logmel[idx].astype(np.float32)),
        "labels": torch.from_numpy(w.labels[idx]),
        "pairable": torch.from_numpy(w.pairable[idx]),
    }


def _info_nce(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    logits = scale * a @ b.t()
    target = torch.arange(len(a))
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def _alignment_loss(models: Models, emb: dict[str, torch.Tensor], pairable: torch.Tensor) -> torch.Tensor:
    if pairable.sum() < 4:
        return torch.zeros(())
    scale = 1.0 / models.align.temperature
    cam = emb["camera"][pairable]
    return _info_nce(cam, emb["radar"][pairable], scale) + _info_nce(cam, emb["audio"][pairable], scale)


def _dropout_mask(n: int, p: float, gen: torch.Generator) -> torch.Tensor:
    present = (torch.rand(n, 3, generator=gen) > p).float()
    empty = present.sum(1) == 0
    keep = torch.randint(0, 3, (n,), generator=gen)
    present[empty, keep[empty]] = 1.0  # never drop everything
    return present


def _fusion_loss(models: Models, emb: dict[str, torch.Tensor], labels: torch.Tensor, present: torch.Tensor,
                 teacher_probs: torch.Tensor | None = None) -> torch.Tensor:
    zeros = torch.zeros_like(emb["camera"])
    inputs = [emb[m] * present[:, i:i + 1] + zeros * (1 - present[:, i:i + 1])
              for i, m in enumerate(MODALITIES)]
    # Windows from a user's own recordings carry no labels (-1): alignment only.
    known = (labels >= 0).all(1)
    if not known.any():
        return torch.zeros(())
    emb = {k: v[known] for k, v in emb.items()}
    inputs = [x[known] for x in inputs]
    labels, present, zeros = labels[known], present[known], zeros[known]
    if teacher_probs is not None:
        teacher_probs = teacher_probs[known]
    logits, certainty, _, _ = models.head(*inputs, present)
    loss = F.binary_cross_entropy_with_logits(logits, labels)
    if teacher_probs is not None:
        loss = 0.5 * loss + 0.5 * F.binary_cross_entropy_with_logits(logits, teacher_probs)
    # Certainty target: how well each modality alone explains the labels (exp of its BCE).
    one = torch.eye(3)
    targets = []
    for i, m in enumerate(MODALITIES):
        solo = [emb[k] if k == m else zeros for k in MODALITIES]
        solo_logits = models.head(*solo, one[i].expand(len(labels), 3))[0]
        bce = F.binary_cross_entropy_with_logits(solo_logits, labels, reduction="none").mean(1)
        targets.append(torch.exp(-bce).detach())
        loss = loss + 0.3 * bce.mean()  # each modality alone should also be as useful as it can be
    certainty_target = torch.stack(targets, 1)
    loss = loss + F.mse_loss(certainty[present > 0], certainty_target[present > 0])
    return loss


def embed_all(models: Models, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"camera": models.camera(batch["image"]), "radar": models.radar(batch["points"], batch["mask"]),
            "audio": models.audio(batch["logmel"])}


def predict_probs(models, data: Windows, present: np.ndarray, batch: int = 256) -> np.ndarray:
    """Class probabilities of the torch models with the modalities ``present`` (N, 3) (for thresholds)."""
    out = []
    with torch.no_grad():
        for s in range(0, len(data), batch):
            idx = np.arange(s, min(len(data), s + batch))
            emb = embed_all(models, _tensors(data, idx))
            p = torch.from_numpy(present[idx])
            inputs = [emb[m] * p[:, i:i + 1] for i, m in enumerate(MODALITIES)]
            out.append(torch.sigmoid(models.head(*inputs, p)[0]).numpy())
    return np.concatenate(out)


def _checkpoint_path(out: Path, stage: str, epoch: int) -> Path:
    return out / "checkpoints" / f"{stage}-epoch{epoch:03d}.pt"


def _latest(out: Path, stage: str) -> tuple[int, Path] | None:
    found = sorted((out / "checkpoints").glob(f"{stage}-epoch*.pt"))
    if not found:
        return None
    return int(found[-1].stem.split("epoch")[1]), found[-1]


def _run_stage(stage: str, models: Models, data: Windows, cfg: TrainConfig, epochs: int, out: Path,
               resume: bool, teacher: Models | None = None, log=print) -> None:
    from tqdm import tqdm

    if epochs <= 0:
        return
    opt = torch.optim.AdamW(models.parameters(), lr=cfg.lr, weight_decay=1e-4)
    steps_per_epoch = max(1, len(data) // cfg.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=epochs * steps_per_epoch,
                                                pct_start=0.15)
    start = 0
    if resume and (found := _latest(out, stage)) is not None:
        start, path = found
        state = torch.load(path, weights_only=False)
        for name, m in zip(("align", "head"), models.modules()):
            m.load_state_dict(state[name])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        log(f"{stage}: resumed from {path}")
    for epoch in range(start, epochs):
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch + (0 if stage.startswith("align") else 500))
        order = torch.randperm(len(data), generator=gen).numpy()
        models.train(True)
        total = 0.0
        bar = tqdm(range(steps_per_epoch), desc=f"{stage} epoch {epoch + 1}/{epochs}", unit="step")
        for step in bar:
            idx = np.sort(order[step * cfg.batch:(step + 1) * cfg.batch])
            batch = _tensors(data, idx)
            emb = embed_all(models, batch)
            loss = _alignment_loss(models, emb, batch["pairable"])
            if not stage.startswith("align"):
                present = _dropout_mask(len(idx), cfg.modality_dropout, gen)
                teacher_probs = None
                if teacher is not None:
                    with torch.no_grad():
                        temb = embed_all(teacher, batch)
                        teacher_probs = torch.sigmoid(teacher.head(temb["camera"], temb["radar"], temb["audio"],
                                                                   torch.ones(len(idx), 3))[0])
                loss = cfg.align_weight * loss + _fusion_loss(models, emb, batch["labels"], present, teacher_probs)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(models.parameters(), 5.0)
            opt.step()
            sched.step()
            total += loss.item()
            bar.set_postfix(loss=f"{total / (step + 1):.3f}", T=f"{float(models.align.temperature):.3f}")
        path = _checkpoint_path(out, stage, epoch + 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"align": models.align.state_dict(), "head": models.head.state_dict(), "opt": opt.state_dict(),
                    "sched": sched.state_dict(), "config": asdict(cfg), "epoch": epoch + 1}, path)
        log(f"{stage} epoch {epoch + 1}: loss {total / steps_per_epoch:.4f}, checkpoint {path}")


def consistency_scores(models: Models, data: Windows, shift: int = 0) -> np.ndarray:
    """Head consistency of each window; with ``shift`` > 0 the radar and audio come from another
    window (``shift`` later), as when a sensor is swapped, replayed or pointed elsewhere."""
    out = []
    idx = np.flatnonzero(data.pairable)
    with torch.no_grad():
        for s in range(0, len(idx), 256):
            part = idx[s:s + 256]
            other = idx[(np.searchsorted(idx, part) + shift) % len(idx)]
            emb = embed_all(models, _tensors(data, part))
            if shift:
                moved = embed_all(models, _tensors(data, other))
                emb["radar"], emb["audio"] = moved["radar"], moved["audio"]
            out.append(models.head(emb["camera"], emb["radar"], emb["audio"], torch.ones(len(part), 3))[3][:, 0].numpy())
    return np.concatenate(out)


def choose_consistency_threshold(models: Models, val: Windows) -> float:
    """The threshold that best separates matched windows from mismatched ones (balanced accuracy)."""
    matched = consistency_scores(models, val)
    mismatched = consistency_scores(models, val, shift=7)
    best, best_acc = 0.0, -1.0
    for t in np.quantile(np.concatenate([matched, mismatched]), np.linspace(0.01, 0.99, 99)):
        acc = 0.5 * ((matched >= t).mean() + (mismatched < t).mean())
        if acc > best_acc:
            best, best_acc = float(t), acc
    return best


def choose_thresholds(models: Models, val: Windows) -> dict[str, float]:
    """Per-class decision thresholds that maximise F1 on the validation windows.

    Every combination of present modalities counts (all three, each pair, each alone): a
    threshold tuned only on complete sets would sit below what a lone sensor outputs for a class
    it cannot observe (an alarm seen by radar alone), and report that prior as a detection.
    """
    patterns = [(1, 1, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 0, 0), (0, 1, 0), (0, 0, 1)]
    probs = np.concatenate([predict_probs(models, val, np.tile(np.array(p, np.float32), (len(val), 1)))
                            for p in patterns])
    labels = np.tile(val.labels, (len(patterns), 1))
    out = {}
    for k, c in enumerate(CLASSES):
        best, best_f1 = 0.5, -1.0
        for t in np.linspace(0.2, 0.8, 25):
            pred = probs[:, k] >= t
            tp = float((pred & (labels[:, k] > 0)).sum())
            f1 = 2 * tp / max(1.0, pred.sum() + (labels[:, k] > 0).sum())
            if f1 > best_f1 + 1e-9:
                best, best_f1 = float(t), f1
        out[c] = round(best, 3)
    return out


def train(cfg: TrainConfig, out: Path, *, resume: bool = False, recordings: Windows | None = None,
          log=print) -> Models:
    """Run every stage; returns the trained student. ``out`` receives checkpoints and a log."""
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    cache = Path(cfg.cache_dir)
    real_dir = Path(cfg.real_clips) if cfg.real_clips else None
    data = load_or_generate(cache, cfg.samples, cfg.seed, "train", real_prob=cfg.real_prob, real_dir=real_dir)
    if recordings is not None:
        data = Windows.concat([data, recordings])
    teacher = None
    if cfg.distill:
        teacher = build_models(cfg, width=2.0)
        _run_stage("teacher-align", teacher, data, cfg, cfg.align_epochs, out, resume, log=log)
        _run_stage("teacher-fuse", teacher, data, cfg, cfg.fuse_epochs, out, resume, log=log)
        teacher.train(False)
    models = build_models(cfg)
    if cfg.init_from:
        found = _latest(Path(cfg.init_from), "fuse") or _latest(Path(cfg.init_from), "align")
        if found is None:
            raise FileNotFoundError(f"{cfg.init_from}: no checkpoint to start from (expected checkpoints/*.pt)")
        state = torch.load(found[1], weights_only=False)
        models.align.load_state_dict(state["align"])
        models.head.load_state_dict(state["head"])
        log(f"starting from the weights of {found[1]}")
    # With resume, a finished stage only reloads its last checkpoint; an unfinished one goes on.
    _run_stage("align", models, data, cfg, cfg.align_epochs, out, resume, log=log)
    _run_stage("fuse", models, data, cfg, cfg.fuse_epochs, out, resume, teacher=teacher, log=log)
    models.train(False)
    (out / "train_config.json").write_text(json.dumps({**asdict(cfg), "data_version": DATA_VERSION,
                                                       "minutes": round((time.monotonic() - t0) / 60, 2)}, indent=2))
    return models
