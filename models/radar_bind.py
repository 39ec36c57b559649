"""The radar encoder bound to the camera's embedding space, as ImageBind binds modalities to images.

The camera encoder is trained first (distilled from the image teachers); its backbone and the
*what* part of its embedding stay frozen here, so its labels do not change. The radar encoder
learns from time-matched windows: a symmetric InfoNCE loss pulls each radar frame's embedding
toward the embedding of the camera frame taken with it and away from the others in the batch, so
that camera and radar share one space (cross-modal retrieval, drift and tamper checks read it).
The camera's *where* part (its spatial layout, which no camera classifier reads) learns with the
radar (``RadarBindConfig.camera_where``): distilled from a 4x4 grid of the detector's box centres,
it places things too coarsely to tell one scene from the next, and the radar knows where they are.
A linear classifier on the radar embedding learns the classes a radar can observe
(:data:`fusion_node.vocabulary.OBSERVES`) from the simulator's ground truth.

Windows from a user's own synchronised recordings (``fusion train --recordings``) carry no labels
and join the InfoNCE term only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fusion_node.vocabulary import CLASSES, OBSERVES
from models.architectures import RadarEncoder
from models.dataset import PREPROCESS, Windows

__all__ = ["RadarStudent", "RadarBindConfig", "camera_tensor", "embed_images", "trained_where", "train_radar",
           "radar_probs"]

_OBSERVED = torch.tensor([c in OBSERVES["radar"] for c in CLASSES])
_IN_VIEW = torch.tensor([c in OBSERVES["camera"] for c in CLASSES])  # what a camera frame can hold


@dataclass
class RadarBindConfig:
    """Knobs of the radar binding stage."""

    seed: int = 0
    epochs: int = 6
    batch: int = 256
    lr: float = 2e-3
    embed_dim: int = 128
    temperature: float = 0.07
    label_weight: float = 1.0
    camera_where: bool = True  # train the camera's spatial part with the radar (its backbone and *what* stay frozen)
    empty_alike: bool = True  # windows with nothing in view are not one another's InfoNCE negatives


class RadarStudent(nn.Module):
    """The radar encoder and its classifier over the product's classes (only observable ones trained)."""

    def __init__(self, embed_dim: int = 128, in_features: int = PREPROCESS["radar"].out_features) -> None:
        super().__init__()
        self.encoder = RadarEncoder(embed_dim, in_features=in_features)
        self.classifier = nn.Linear(embed_dim, len(CLASSES))

    def forward(self, points: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.encoder(points, mask)
        return emb, self.classifier(emb)


def camera_tensor(images_uint8: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 BGR -> the normalised (N, 3, H, W) tensor CameraPreprocess produces."""
    pre = PREPROCESS["camera"]
    x = torch.from_numpy(np.ascontiguousarray(images_uint8[..., ::-1])).float()
    mean = torch.tensor(pre.mean_rgb) * 255.0
    std = torch.tensor(pre.std_rgb) * 255.0
    return ((x - mean) / std).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def _over_images(fn, images_uint8: np.ndarray, batch: int = 256) -> torch.Tensor:
    """``fn`` of the camera tensors of resized uint8 BGR frames, a batch at a time, concatenated."""
    return torch.cat([fn(camera_tensor(images_uint8[k:k + batch])) for k in range(0, len(images_uint8), batch)])


def embed_images(camera: nn.Module, images_uint8: np.ndarray, batch: int = 256) -> torch.Tensor:
    """The camera encoder's embeddings of resized uint8 BGR frames."""
    return _over_images(camera.eval(), images_uint8, batch)


def trained_where(camera: nn.Module, cfg: RadarBindConfig) -> tuple[str, ...]:
    """The camera submodules the binding trains with the radar: its spatial part, if it has one and
    ``cfg.camera_where``; none otherwise."""
    return camera.where_modules if cfg.camera_where else ()


def _info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float,
              alike: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE of row-matched embeddings. ``alike`` (N,) marks windows that neither sensor
    can tell apart (nothing in view): they are not each other's negatives, so an empty camera frame
    is pulled toward an empty radar frame instead of being pushed from every other empty one."""
    logits = a @ b.t() / temperature
    if alike is not None:
        clash = alike[:, None] & alike[None, :] & ~torch.eye(len(a), dtype=torch.bool)
        logits = logits.masked_fill(clash, float("-inf"))
    target = torch.arange(len(a))
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def train_radar(data: Windows, camera: nn.Module, cfg: RadarBindConfig, progress: bool = True,
                log=print) -> RadarStudent:
    """Bind a new radar encoder to ``camera`` on ``data``; deterministic by ``cfg.seed``.

    With ``cfg.camera_where`` and a camera whose embedding has a spatial part, that part
    (``camera.where_modules``) is trained with the radar, **in place**; everything else of the
    camera is left exactly as it was.
    """
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    where_params = [p for name in trained_where(camera, cfg) for p in getattr(camera, name).parameters()]
    if where_params:
        # The backbone is frozen: its feature maps are computed once, and each step runs only the
        # spatial part on them.
        maps = _over_images(camera.eval().features, data.image)
        trainable = {id(p) for p in where_params}
        restore = [(p, p.requires_grad) for p in camera.parameters()]
        for p in camera.parameters():
            p.requires_grad_(id(p) in trainable)
    else:
        cam = embed_images(camera, data.image)
    model = RadarStudent(cfg.embed_dim)
    params = list(model.parameters()) + where_params
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-4)
    n = len(data)
    steps = cfg.epochs * max(1, n // cfg.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(cfg.seed)
    points, mask = torch.from_numpy(data.points), torch.from_numpy(data.mask)
    labels = torch.from_numpy(data.labels)
    pairable = torch.from_numpy(data.pairable)
    bar = tqdm(total=steps, desc="radar bound to camera", unit="step", disable=not progress)
    model.train()
    for epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for k in range(max(1, n // cfg.batch)):
            b = order[k * cfg.batch:(k + 1) * cfg.batch]
            emb, logits = model(points[b], mask[b])
            pair = pairable[b]
            if pair.sum() >= 4:
                rows = b[pair]
                target = camera.embed_feature_map(maps[rows]) if where_params else cam[rows]
                # Nothing in view: no person, vehicle or dog (a user's unlabelled windows never count).
                alike = (labels[rows] == 0)[:, _IN_VIEW].all(1) if cfg.empty_alike else None
                loss = _info_nce(emb[pair], target, cfg.temperature, alike)
            else:
                loss = emb.sum() * 0.0
            known = (labels[b] >= 0).all(1)  # a user's own recordings carry no labels
            if known.any():
                loss = loss + cfg.label_weight * F.binary_cross_entropy_with_logits(
                    logits[known][:, _OBSERVED], labels[b][known][:, _OBSERVED])
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            sched.step()
            total += loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{total / (k + 1):.3f}")
        log(f"radar epoch {epoch + 1}/{cfg.epochs}: loss {total / max(1, n // cfg.batch):.4f}")
    bar.close()
    if where_params:
        for p, flag in restore:
            p.requires_grad_(flag)
    camera.eval()
    model.eval()
    return model


@torch.no_grad()
def radar_probs(model: RadarStudent, data: Windows, batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings (N, D), class probabilities (N, C)) of the radar student on ``data``."""
    model.eval()
    embs, probs = [], []
    for k in range(0, len(data), batch):
        e, lg = model(torch.from_numpy(data.points[k:k + batch]), torch.from_numpy(data.mask[k:k + batch]))
        embs.append(e.numpy())
        probs.append(torch.sigmoid(lg).numpy())
    return np.concatenate(embs), np.concatenate(probs)


def f1_threshold(probs: np.ndarray, truth: np.ndarray, target_precision: float = 0.9) -> float:
    """The best F1's threshold among those reaching ``target_precision``, else the best F1's overall.

    Not the lowest one that reaches it: on the simulator's windows that one buys the last tenth of
    a point of recall with several points of precision, and sits where anything the simulator
    never showed (a cyclist's speed on a person) crosses it.
    """
    best, best_key = 0.5, (-1.0, -1.0)
    for t in np.round(np.arange(0.1, 0.96, 0.025), 3):
        pred = probs >= t
        tp = float((pred & truth).sum())
        prec = tp / pred.sum() if pred.sum() else 1.0
        rec = tp / truth.sum() if truth.sum() else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        key = (1.0 if prec >= target_precision else 0.0, f1)
        if key > best_key:
            best, best_key = float(t), key
    return best
