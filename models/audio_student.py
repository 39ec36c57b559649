"""The audio student (torch): the shipped audio encoder, its classifier, and how it is fitted.

It learns on a :class:`models.audio_distill.WindowPool` from YAMNet's product-class scores (soft
targets), YAMNet's embedding (through a projection used only in training) and the recordings'
own labels; see :mod:`models.audio_distill` for the data.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fusion_node.vocabulary import CLASSES
from models.architectures import AudioEncoder
from models.audio_distill import AudioDistillConfig, WindowPool, source_folds

__all__ = ["AudioStudent", "train_audio_student", "student_probs", "out_of_fold_probs"]


class AudioStudent(nn.Module):
    """The audio encoder, its product-class classifier, and a projection onto YAMNet's embedding (training only)."""

    def __init__(self, embed_dim: int = 128, teacher_dim: int = 1024) -> None:
        super().__init__()
        self.encoder = AudioEncoder(embed_dim)
        self.classifier = nn.Linear(embed_dim, len(CLASSES))
        self.to_teacher = nn.Linear(embed_dim, teacher_dim)

    def forward(self, logmel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        emb = self.encoder(logmel)
        return emb, self.classifier(emb), self.to_teacher(emb)


def _bce_soft(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    known = ~torch.isnan(target)
    if not known.any():
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[known], target[known])


def train_audio_student(pool: WindowPool, cfg: AudioDistillConfig, progress: bool = True) -> AudioStudent:
    """Fit the student to the teacher and the labels on ``pool``; deterministic by ``cfg.seed``."""
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    model = AudioStudent(cfg.embed_dim, pool.teacher_emb.shape[1])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    n = len(pool.teacher)
    steps = cfg.epochs * math.ceil(n / cfg.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    x_all = torch.from_numpy(pool.logmel)
    t_all = torch.from_numpy(pool.teacher)
    e_all = torch.from_numpy(pool.teacher_emb)
    h_all = torch.from_numpy(pool.hard)
    model.train()
    bar = tqdm(total=steps, desc="audio student", unit="step", disable=not progress)
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        for k in range(0, n, cfg.batch):
            b = order[k:k + cfg.batch]
            if len(b) < 2:
                continue
            _, logits, proj = model(x_all[b].float())
            loss = (cfg.teacher_weight * F.binary_cross_entropy_with_logits(logits, t_all[b])
                    + cfg.label_weight * _bce_soft(logits, h_all[b])
                    + cfg.embedding_weight * (1.0 - F.cosine_similarity(proj, e_all[b].float(), dim=1)).mean())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    return model


@torch.no_grad()
def student_probs(model: AudioStudent, pool: WindowPool, batch: int = 256) -> np.ndarray:
    """Sigmoid class probabilities ``(N, C)`` of the student on every window of ``pool``."""
    model.eval()
    out = [torch.sigmoid(model(torch.from_numpy(pool.logmel[k:k + batch]).float())[1]).numpy()
           for k in range(0, len(pool.logmel), batch)]
    return np.concatenate(out) if out else np.zeros((0, len(CLASSES)), np.float32)


def out_of_fold_probs(pool: WindowPool, windows: WindowPool, cfg: AudioDistillConfig, log=print) -> np.ndarray:
    """The student's probabilities on ``windows``, each from a student that never heard its source.

    The sources of ``windows``' clips are cut into ``cfg.threshold_folds`` groups (:func:`source_folds`); for
    each group a student is trained on the ``pool`` windows of the other sources and scores that
    group's windows. These are the scores a shipped student gives a recording from elsewhere, on
    many more clips than the few held-out sources hold: what thresholds are chosen on.
    """
    out = np.full((len(windows.clip), len(CLASSES)), np.nan, np.float32)
    pool_src, win_src = pool.sources(), windows.sources()
    groups = source_folds(windows.clips, cfg.threshold_folds)
    for k, held in enumerate(groups):
        log(f"audio: fold {k + 1}/{len(groups)} holds out {', '.join(sorted(held))}")
        student = train_audio_student(pool.subset(~np.isin(pool_src, list(held))), cfg)
        sel = np.isin(win_src, list(held))
        out[sel] = student_probs(student, windows.subset(sel))
    return out
