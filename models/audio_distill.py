"""The data side of the audio encoder's distillation: augmented, teacher-labelled windows of real
recordings, held-out thresholds and figures (numpy only; the student itself is
:mod:`models.audio_student`, which needs torch).

The student is the shipped :class:`models.architectures.AudioEncoder` (the node's own log-mel
input) plus a linear classifier over the product's classes. It learns from two teachers at once:

* YAMNet (:mod:`models.teacher_audio`), run on the very window the student sees after
  augmentation: its product-class scores (soft targets) and its 1024-d embedding (through a
  projection used only in training), so the student inherits what AudioSet taught YAMNet;
* the recordings' own labels (:mod:`models.audio_corpus`), on windows loud enough to hold the
  event (a dog clip's silent tail is not a bark) and on every background window ("none of
  these" is a class of its own).

Augmentation makes one clip many recordings: gain, speed, reverberation, noise, time shift and
mixing onto background clips of the same split. Thresholds are chosen on the ``val`` sources for
precision, and every figure is reported on the ``test`` sources, with YAMNet on the same windows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.signal import fftconvolve, resample_poly
from scipy.stats import binomtest

from fusion_node.preprocess import AudioPreprocess
from fusion_node.vocabulary import CLASSES, WIRE_AUDIO_RATE_HZ
from models.audio_corpus import BACKGROUND, SPLITS, Clip, load_clips
from models.audio_synth import vetted_clips
from models.teacher_audio import YamnetTeacher
from sensors.audio import load_audio_file

__all__ = ["AudioDistillConfig", "WindowPool", "build_pool", "eval_windows", "threshold_windows", "split_clips",
           "source_folds", "choose_thresholds", "clip_metrics", "proportion_interval", "ERROR_KINDS", "clip_errors"]

RATE = WIRE_AUDIO_RATE_HZ
WIN = RATE  # one-second windows, the node's audio window
# A window holds a clip's event when its loudness is within this many dB of the clip's loudest second.
EVENT_DB = 20.0
# Recordings are scored as they are, at this gain (peak-normalised clips played well below full scale).
EVAL_GAIN = np.float32(0.3)


@dataclass
class AudioDistillConfig:
    """Every knob of the audio distillation; saved with the student."""

    seed: int = 0
    windows_per_class: int = 2000
    background_windows: int = 4000
    epochs: int = 12
    batch: int = 64
    lr: float = 2e-3
    embed_dim: int = 128
    teacher_weight: float = 1.0
    label_weight: float = 2.0  # the labels outweigh the teacher: YAMNet barely hears single footsteps
    embedding_weight: float = 0.5
    target_precision: float = 0.9
    # Thresholds are chosen on out-of-fold scores of the training sources (this many folds by
    # source) together with the val sources: the val sources alone hold one or two clips of some
    # classes. 0: the val sources alone.
    threshold_folds: int = 4
    # Made horns and sirens the teacher vouches for (:mod:`models.audio_synth`): this many sounds
    # per class, and this many training windows of them per class on top of the real ones. 0: none
    # (the default: they lift the training sources' horn and siren ranking, but the held-out figures
    # measured with them did not beat the shipped student's; see the README).
    synthetic_clips: int = 0
    synthetic_windows: int = 1000
    extra: dict = field(default_factory=dict)


@dataclass
class WindowPool:
    """Preprocessed one-second windows with everything training and evaluation need."""

    logmel: np.ndarray  # (N, 1, 64, T) float16, the node's preprocessing
    teacher: np.ndarray  # (N, C) YAMNet's product-class scores on the same window
    teacher_emb: np.ndarray  # (N, 1024) float16
    hard: np.ndarray  # (N, C) 0/1 labels, NaN where unknown (an event clip's quiet window)
    clip: np.ndarray  # (N,) index into ``clips``
    clips: list[Clip]

    def sources(self) -> np.ndarray:
        """``(N,)`` the source of each window's clip."""
        return np.array([self.clips[i].source for i in self.clip], dtype=object)

    def in_split(self, split: str) -> np.ndarray:
        """``(N,)`` True where the window's clip belongs to ``split``."""
        return np.array([self.clips[i].split == split for i in self.clip], dtype=bool)

    def subset(self, keep: np.ndarray) -> "WindowPool":
        """The windows where ``keep`` (a boolean mask) is true; the clip list is kept whole."""
        return WindowPool(self.logmel[keep], self.teacher[keep], self.teacher_emb[keep], self.hard[keep],
                          self.clip[keep], self.clips)


def _load(clip: Clip, cache: dict) -> np.ndarray:
    if clip.path not in cache:
        x = load_audio_file(clip.path).astype(np.float32)
        cache[clip.path] = x / (np.abs(x).max() + 1e-9)
    return cache[clip.path]


def _loudness_db(x: np.ndarray) -> float:
    return 10.0 * math.log10(float(np.mean(x.astype(np.float64) ** 2)) + 1e-12)


def _peak_second_db(x: np.ndarray) -> float:
    """Loudness of the clip's loudest second (half-second steps)."""
    if len(x) <= WIN:
        return _loudness_db(x)
    return max(_loudness_db(x[s:s + WIN]) for s in range(0, len(x) - WIN + 1, WIN // 2))


def _place(x: np.ndarray, start: int) -> np.ndarray:
    """One second of ``x`` from ``start``; a shorter clip sits at ``-start`` inside silence."""
    if len(x) >= WIN:
        return x[start:start + WIN].copy()
    out = np.zeros(WIN, np.float32)
    out[-start:-start + len(x) if -start + len(x) < WIN else None] = x[:WIN + start]
    return out


def _reverb(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # A room as exponentially decaying noise: RT60 0.15-0.8 s, the direct path kept.
    rt60 = rng.uniform(0.15, 0.8)
    n = int(rt60 * RATE)
    ir = rng.standard_normal(n).astype(np.float32) * np.exp(-6.9 * np.arange(n) / n).astype(np.float32)
    ir *= rng.uniform(0.05, 0.3) / (np.sqrt(np.sum(ir ** 2)) + 1e-9)
    ir[0] = 1.0
    return fftconvolve(x, ir)[:len(x)].astype(np.float32)


def _speed(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    up = int(rng.integers(85, 116))  # 0.85x-1.15x: pitch and tempo together, as a tape would
    return resample_poly(x, 100, up).astype(np.float32)


def _augmented_window(x: np.ndarray, rng: np.random.Generator, backgrounds: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """A random second of ``x`` through the augmentation chain; also the event's loudness in dB."""
    if rng.random() < 0.4:
        x = _speed(x, rng)
    # A short clip starts anywhere that keeps at least half of it inside the window.
    start = int(rng.integers(0, len(x) - WIN + 1)) if len(x) >= WIN else -int(rng.integers(0, WIN - len(x) // 2))
    w = _place(x, start)
    if rng.random() < 0.3:
        w = _reverb(w, rng)
    event_db = _loudness_db(w)
    w = w * np.float32(10 ** (rng.uniform(-30, 0) / 20))
    if backgrounds and rng.random() < 0.6:
        bg = backgrounds[int(rng.integers(len(backgrounds)))]
        bw = _place(bg, int(rng.integers(0, len(bg) - WIN + 1)) if len(bg) >= WIN else -int(rng.integers(0, WIN - len(bg) + 1)))
        snr = rng.uniform(0, 25)
        gain = math.sqrt(np.mean(w ** 2) / (np.mean(bw ** 2) + 1e-12) / 10 ** (snr / 10))
        w = w + bw * np.float32(min(gain, 10.0))
    if rng.random() < 0.3:
        noise = rng.standard_normal(WIN).astype(np.float32)
        w = w + noise * np.float32(math.sqrt(np.mean(w ** 2) + 1e-10) * 10 ** (-rng.uniform(15, 40) / 20))
    return np.clip(w, -1.0, 1.0), event_db


def _label_row(label: str, loud: bool) -> np.ndarray:
    row = np.zeros(len(CLASSES), np.float32)
    if label == BACKGROUND:
        return row
    if not loud:
        return np.full(len(CLASSES), np.nan, np.float32)
    row[CLASSES.index(label)] = 1.0
    return row


def _finish(rows: list[tuple[np.ndarray, np.ndarray, int]], clips: list[Clip], teacher: YamnetTeacher | None,
            pp: AudioPreprocess, progress: str) -> WindowPool:
    from tqdm import tqdm

    logmel, hard, clip_idx, scores, embs = [], [], [], [], []
    for w, h, ci in tqdm(rows, desc=progress, unit="win", leave=False, disable=not progress):
        if teacher is not None:
            out = teacher.windows(w[None])
            scores.append(out.scores[0])
            embs.append(out.embedding[0].astype(np.float16))
        else:  # no teacher at hand: its columns are unknown
            scores.append(np.full(len(CLASSES), np.nan, np.float32))
            embs.append(np.zeros(1, np.float16))
        logmel.append(pp(w)[0].astype(np.float16))
        hard.append(h)
        clip_idx.append(ci)
    return WindowPool(np.stack(logmel), np.stack(scores), np.stack(embs), np.stack(hard), np.array(clip_idx), clips)


def _window_starts(n: int) -> list[int] | range:
    """Where the one-second windows of an ``n``-sample sound start when it is scored as it is: every
    half second; a sound shorter than a window is one window with the sound in its middle."""
    return range(0, n - WIN + 1, WIN // 2) if n >= WIN else [-((WIN - n) // 2)]


def _sound_scores(teacher: YamnetTeacher, x: np.ndarray) -> np.ndarray:
    """The teacher's product-class scores for a whole sound: the maximum over its windows as
    :func:`eval_windows` cuts them."""
    return teacher.windows(np.stack([_place(x, s) * EVAL_GAIN for s in _window_starts(len(x))])).scores.max(axis=0)


def _windows_of(label: str, idx: list[int], n: int, clips: list[Clip], cache: dict, rng: np.random.Generator,
                backgrounds: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, int]]:
    rows = []
    for _ in range(n):
        ci = idx[int(rng.integers(len(idx)))]
        x = _load(clips[ci], cache)
        w, event_db = _augmented_window(x, rng, backgrounds if label != BACKGROUND else [])
        rows.append((w, _label_row(label, event_db >= _peak_second_db(x) - EVENT_DB), ci))
    return rows


def build_pool(clips: list[Clip], teacher: YamnetTeacher, cfg: AudioDistillConfig, progress: str = "") -> WindowPool:
    """Augmented training windows, class-balanced, teacher-labelled after augmentation.

    With ``cfg.synthetic_clips`` and ``cfg.synthetic_windows``, that many made horns and sirens
    that the teacher vouches for (:func:`models.audio_synth.vetted_clips`) add that many windows
    each to ``vehicle`` and ``alarm``, mixed onto the same backgrounds; their clips join the pool's clip list, of source
    :data:`models.audio_synth.SYNTH_SOURCE`. The real windows are the same with or without them.
    """
    rng = np.random.default_rng(cfg.seed)
    cache: dict = {}
    backgrounds = [_load(c, cache) for c in clips if c.label == BACKGROUND]
    by_class: dict[str, list[int]] = {}
    for i, c in enumerate(clips):
        by_class.setdefault(c.label, []).append(i)
    rows = []
    for label, idx in sorted(by_class.items()):
        n = cfg.background_windows if label == BACKGROUND else cfg.windows_per_class
        rows += _windows_of(label, idx, n, clips, cache, rng, backgrounds)
    if cfg.synthetic_windows and cfg.synthetic_clips:
        made_rng = np.random.default_rng([cfg.seed, 1])  # its own stream: the real windows stay as they were
        made = vetted_clips(lambda x: _sound_scores(teacher, x), cfg.synthetic_clips, made_rng)
        clips = list(clips)
        for clip, x in made:
            cache[clip.path] = x
            clips.append(clip)
        for label in sorted({clip.label for clip, _ in made}):
            idx = [i for i in range(len(clips) - len(made), len(clips)) if clips[i].label == label]
            rows += _windows_of(label, idx, cfg.synthetic_windows, clips, cache, made_rng, backgrounds)
    return _finish(rows, clips, teacher, AudioPreprocess(window_s=1.0), progress)


def eval_windows(clips: list[Clip], teacher: YamnetTeacher | None, progress: str = "") -> WindowPool:
    """Every clip as it is, in one-second windows every half second (a short clip: one window)."""
    cache: dict = {}
    rows = []
    for ci, c in enumerate(clips):
        x = _load(c, cache)
        peak = _peak_second_db(x)
        for s in _window_starts(len(x)):
            w = _place(x, s)
            rows.append((w * EVAL_GAIN, _label_row(c.label, _loudness_db(w) >= peak - EVENT_DB), ci))
    return _finish(rows, clips, teacher, AudioPreprocess(window_s=1.0), progress)


def threshold_windows(splits: dict[str, list[Clip]], teacher: YamnetTeacher | None, progress: str = "") -> WindowPool:
    """The recordings thresholds are chosen on, as recorded: the ``train`` and ``val`` sources.

    The teacher learnt from neither; the student's scores on the ``train`` ones must come from
    students that never heard them (:func:`models.audio_student.out_of_fold_probs`).
    """
    return eval_windows(splits["train"] + splits["val"], teacher, progress)


def _clip_max(probs: np.ndarray, clip_idx: np.ndarray, n_clips: int) -> np.ndarray:
    out = np.zeros((n_clips, probs.shape[1]), np.float32)
    np.maximum.at(out, clip_idx, probs)
    return out


def _present_clips(pool: WindowPool) -> np.ndarray:
    return np.unique(pool.clip)


def _verdicts(probs: np.ndarray, pool: WindowPool, thresholds: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """``(n_clips, C)`` the classes each clip carries (any of its windows at the class's threshold),
    and ``(N,)`` whether each window carries any label."""
    at = probs >= np.array([thresholds[c] for c in CLASSES], np.float32)
    return _clip_max(at.astype(np.float32), pool.clip, len(pool.clips)) > 0, at.any(axis=1)


def clip_metrics(probs: np.ndarray, pool: WindowPool, thresholds: dict[str, float]) -> dict:
    """Per-class clip-level precision / recall / F1, macro-F1, and the false-label rate on background windows.

    A clip is labelled ``c`` when any of its windows reaches ``c``'s threshold (how a clip-level
    tagger scores: the maximum over its windows). Background windows count one by one: the share
    of them carrying any label is the rate at which a quiet scene raises a false event.

    Each class also carries the 95 % intervals of its precision and recall
    (:func:`proportion_interval`, clips as the trials) and how many sources its clips come from:
    a recall of 0.25 on four clips says little. Clips of one source resemble each
    other, so what a new place sees can stray further than the interval.
    """
    used = _present_clips(pool)
    clip_labelled, window_labelled = _verdicts(probs, pool, thresholds)
    labels = np.array([pool.clips[i].label for i in used], dtype=object)
    sources = np.array([pool.clips[i].source for i in used], dtype=object)
    truth = labels[:, None] == np.array(CLASSES, dtype=object)[None, :]
    pred = clip_labelled[used]
    per_class = {}
    f1s = []
    for k, c in enumerate(CLASSES):
        tp = int((pred[:, k] & truth[:, k]).sum())
        fp = int((pred[:, k] & ~truth[:, k]).sum())
        fn = int((~pred[:, k] & truth[:, k]).sum())
        p = tp / (tp + fp) if tp + fp else (1.0 if fn == 0 else 0.0)
        r = tp / (tp + fn) if tp + fn else 1.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        per_class[c] = {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f1, 4),
                        "clips": int(truth[:, k].sum()), "tp": tp, "fp": fp, "fn": fn,
                        "precision_ci": proportion_interval(tp, tp + fp), "recall_ci": proportion_interval(tp, tp + fn),
                        "sources": len(set(sources[truth[:, k]]))}
        if truth[:, k].any():
            f1s.append(f1)
    bg = np.isin(pool.clip, used[labels == BACKGROUND])  # the windows of the background clips
    false_rate = float(window_labelled[bg].mean()) if bg.any() else 0.0
    return {"macro_f1": round(float(np.mean(f1s)) if f1s else 0.0, 4), "false_label_rate": round(false_rate, 4),
            "per_class": per_class, "clips": int(len(used)), "background_windows": int(bg.sum()),
            "background_sources": len(set(sources[labels == BACKGROUND]))}


def proportion_interval(hits: int, trials: int) -> list[float] | None:
    """The 95 % Wilson score interval ``[low, high]`` of ``hits`` in ``trials``; None without a trial."""
    if trials <= 0:
        return None
    ci = binomtest(hits, trials).proportion_ci(confidence_level=0.95, method="wilson")
    return [round(float(ci.low), 4), round(float(ci.high), 4)]


# The ways a clip can be wrong, in the order :func:`clip_errors` lists them.
ERROR_KINDS = ("missed", "extra label", "background labelled")


def clip_errors(probs: np.ndarray, pool: WindowPool, thresholds: dict[str, float],
                teacher_thresholds: dict[str, float] | None = None) -> list[dict]:
    """The clips a scorer gets wrong, one row each, as :func:`clip_metrics` counts them.

    An event clip is wrong when it misses its class, or carries another besides; a background clip
    when any of its windows carries a label (``kind``: one of :data:`ERROR_KINDS`). Each row names
    the file, its source and class, the labels given, the clip's score for its own class against
    that class's threshold, how many of a background clip's windows were labelled, and (with
    ``teacher_thresholds``) the labels the pool's teacher scores give the same clip. Listed by
    kind, then by the most labelled windows, then by file name.
    """
    clip_labelled, window_labelled = _verdicts(probs, pool, thresholds)
    teacher_says = None if teacher_thresholds is None else _verdicts(pool.teacher, pool, teacher_thresholds)[0]
    cmax = _clip_max(probs, pool.clip, len(pool.clips))
    hits = np.bincount(pool.clip, weights=window_labelled, minlength=len(pool.clips)).astype(int)
    windows = np.bincount(pool.clip, minlength=len(pool.clips))
    rows = []
    for i in _present_clips(pool):
        clip = pool.clips[i]
        labelled = [c for k, c in enumerate(CLASSES) if clip_labelled[i, k]]
        event = clip.label != BACKGROUND
        if event:
            kind = "missed" if clip.label not in labelled else "extra label" if len(labelled) > 1 else None
        else:
            kind = "background labelled" if hits[i] else None
        if kind is None:
            continue
        row = {"kind": kind, "clip": clip.path.name, "source": clip.source, "class": clip.label, "labelled": labelled,
               "score": round(float(cmax[i, CLASSES.index(clip.label)]), 3) if event else None,
               "threshold": round(float(thresholds[clip.label]), 3) if event else None,
               "labelled_windows": None if event else f"{hits[i]} of {windows[i]}",
               "teacher_labelled": None if teacher_says is None else
               [c for k, c in enumerate(CLASSES) if teacher_says[i, k]]}
        rows.append(((ERROR_KINDS.index(kind), -hits[i] if not event else 0, row["clip"]), row))
    return [row for _, row in sorted(rows, key=lambda r: r[0])]


def choose_thresholds(probs: np.ndarray, pool: WindowPool, target_precision: float = 0.9) -> dict[str, float]:
    """Per-class thresholds on windows the scorer never learnt from, chosen for precision first.

    For each class, the thresholds at which both the clip-level precision and the window-level
    precision reach ``target_precision`` (background and other classes' windows are the
    negatives), with at most 0.5 % of background windows above them; among those, the lowest of
    the ones with the best clip-level recall. Where none of them finds a single clip of the class,
    the threshold with the best F0.5 (precision still counts twice); where no threshold finds one
    either, the lowest precise one, since only the negatives speak for it.

    The rule was picked by cross-validation over the calibration sources alone (thresholds from
    some sources' scores, judged on the others'): a threshold above every clip of its class never
    labels it, and the middle of a plateau sat above clips that unseen sources score lower.
    """
    # No threshold below 0.3: the val sources hold few background recordings, and a threshold that
    # only they vouch for lets other places' background through.
    grid = np.round(np.arange(0.30, 0.96, 0.025), 3)
    used = _present_clips(pool)
    cmax = _clip_max(probs, pool.clip, len(pool.clips))[used]
    clip_label = np.array([pool.clips[i].label for i in used])
    win_label = np.array([pool.clips[i].label for i in pool.clip])
    loud = ~np.isnan(pool.hard).any(axis=1)
    out = {}
    for k, c in enumerate(CLASSES):
        rows = []
        for t in grid:
            cp = cmax[:, k] >= t
            ctp, cfp = int((cp & (clip_label == c)).sum()), int((cp & (clip_label != c)).sum())
            cpos = int((clip_label == c).sum())
            wp = probs[:, k] >= t
            wtp = int((wp & (win_label == c) & loud).sum())
            wfp = int((wp & (win_label != c)).sum())
            bg_rate = float(wp[win_label == BACKGROUND].mean()) if (win_label == BACKGROUND).any() else 0.0
            prec = min(ctp / (ctp + cfp) if ctp + cfp else 1.0, wtp / (wtp + wfp) if wtp + wfp else 1.0)
            rec = ctp / cpos if cpos else 0.0
            f05 = 1.25 * prec * rec / (0.25 * prec + rec) if prec + rec else 0.0
            rows.append((t, prec >= target_precision and bg_rate <= 0.005, rec, f05))
        ok = [r for r in rows if r[1]]
        best = max((r[2] for r in ok), default=0.0)
        if best > 0:
            out[c] = float(min(r[0] for r in ok if r[2] >= best - 1e-9))
        elif ok and max(r[3] for r in rows) == 0:  # no threshold finds a clip: only the negatives speak
            out[c] = float(ok[0][0])
        else:
            out[c] = float(max(rows, key=lambda r: (r[3], r[0]))[0])
    return out


def source_folds(clips: list[Clip], k: int) -> list[frozenset[str]]:
    """``k`` groups of the clips' sources, about equal in clips: every clip of a source in one group.

    Deterministic: sources by clip count (largest first, then name), each to the group with the
    fewest clips so far.
    """
    count: dict[str, int] = {}
    for c in clips:
        count[c.source] = count.get(c.source, 0) + 1
    groups: list[list[str]] = [[] for _ in range(max(1, min(k, len(count))))]
    sizes = [0] * len(groups)
    for src in sorted(count, key=lambda s: (-count[s], s)):
        g = sizes.index(min(sizes))
        groups[g].append(src)
        sizes[g] += count[src]
    return [frozenset(g) for g in groups]


def split_clips(real_dir: Path, corpora: Sequence[Path] = ()) -> dict[str, list[Clip]]:
    """The real clips under ``real_dir`` and in the further ``corpora`` folders, by split."""
    clips = load_clips(real_dir, corpora)
    return {s: [c for c in clips if c.split == s] for s in SPLITS}
