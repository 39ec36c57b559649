"""The pretrained vision teachers, run on onnxruntime (CPU) for labelling frames at training time.

- :class:`YoloxTeacher`: the YOLOX-nano COCO detector. Letterbox to 416 (longer side 416, top-left
  on a canvas filled with 114, BGR float 0-255, CHW), decode the 3549 grid cells of strides 8, 16
  and 32, score = objectness x class score, per-class non-maximum suppression at IoU 0.45. Boxes
  come back in frame pixels with their COCO class.
- :class:`MobileNetTeacher`: MobileNetV2 (ImageNet); its 1280-d global-pool embedding is the
  general image embedding the camera student is taught to reproduce.

Both are read by path (the teachers are not part of the product and never ship) and take the
providers explicitly, so a machine with an accelerator still labels the same way.

COCO classes map to the product's visual classes (:data:`COCO_TO_VISUAL`):

- ``person`` -> person.
- ``car``, ``truck``, ``bus``, ``motorcycle`` -> vehicle: motorised road vehicles, the ones a
  radar returns as a large target and a microphone hears as an engine. ``bicycle`` is left out:
  a ridden bicycle already yields ``person`` through its rider (COCO boxes the rider as a person),
  and a parked one is scenery, not an event; calling it a vehicle would make the camera disagree
  with the radar and the microphone, which see and hear a walking-speed, engine-less target.
- ``dog`` -> dog. (``cat`` is not mapped: the product has no cat class, and the detector does
  tell the two apart on the development data's dog video, every frame a ``dog``.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fusion_node.vocabulary import CLASSES

__all__ = ["VISUAL_CLASSES", "COCO_TO_VISUAL", "PRESENT_SCORE", "EMPTY_SCORE", "YOLOX_SIZE", "Detections",
           "YoloxTeacher", "MobileNetTeacher", "letterbox", "decode_yolox", "nms", "session"]

# The product classes a camera can see, in CLASSES order.
VISUAL_CLASSES: tuple[str, ...] = tuple(c for c in CLASSES if c in ("person", "vehicle", "dog"))

# COCO 80-class index (the detector's class order) -> visual class.
COCO_TO_VISUAL: dict[int, str] = {0: "person", 2: "vehicle", 3: "vehicle", 5: "vehicle", 7: "vehicle",
                                  16: "dog"}
# Their COCO names, checked against a label file when one lies beside the model.
_COCO_NAMES = {0: "person", 2: "car", 3: "motorcycle", 5: "bus", 7: "truck", 16: "dog"}

YOLOX_SIZE = 416
# The detector "says present" at 0.5, the score at which its published person counts are made;
# it "says empty" below 0.25. Frames between the two are ambiguous and left out of the rates.
PRESENT_SCORE = 0.5
EMPTY_SCORE = 0.25
_STRIDES = (8, 16, 32)
_PAD_VALUE = 114


def session(path: Path, threads: int = 1, providers: tuple[str, ...] = ("CPUExecutionProvider",)):
    """An onnxruntime session with a fixed thread count and explicit providers."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"teacher model not found: {path}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=list(providers))


def letterbox(frame_bgr: np.ndarray, size: int = YOLOX_SIZE) -> tuple[np.ndarray, float]:
    """``(1, 3, size, size)`` float32 detector input and the resize ratio (canvas px per frame px)."""
    h, w = frame_bgr.shape[:2]
    ratio = min(size / h, size / w)
    nh, nw = int(round(h * ratio)), int(round(w * ratio))
    canvas = np.full((size, size, 3), _PAD_VALUE, np.uint8)
    canvas[:nh, :nw] = cv2.resize(frame_bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], dtype=np.float32), ratio


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    cols, rows, strides = [], [], []
    for s in _STRIDES:
        n = size // s
        r, c = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        cols.append(c.ravel())
        rows.append(r.ravel())
        strides.append(np.full(n * n, s))
    return np.stack([np.concatenate(cols), np.concatenate(rows)], 1).astype(np.float32), \
        np.concatenate(strides).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best score first. ``boxes`` are x0, y0, x1, y1."""
    order = np.argsort(-scores, kind="stable")
    area = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        ix0 = np.maximum(boxes[i, 0], boxes[rest, 0])
        iy0 = np.maximum(boxes[i, 1], boxes[rest, 1])
        ix1 = np.minimum(boxes[i, 2], boxes[rest, 2])
        iy1 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = (ix1 - ix0).clip(0) * (iy1 - iy0).clip(0)
        overlap = inter / np.maximum(area[i] + area[rest] - inter, 1e-9)
        order = rest[overlap <= iou]
    return np.array(keep, dtype=np.int64)


@dataclass
class Detections:
    """Detector output for one frame: boxes ``(N, 4)`` x0, y0, x1, y1 in frame pixels, scores, COCO classes."""

    boxes: np.ndarray
    scores: np.ndarray
    coco: np.ndarray
    frame_hw: tuple[int, int]

    def visual(self) -> list[tuple[str, float, float, float]]:
        """``(visual class, centre x / width, centre y / height, score)`` of the boxes that map to one."""
        h, w = self.frame_hw
        out = []
        for (x0, y0, x1, y1), s, c in zip(self.boxes, self.scores, self.coco):
            cls = COCO_TO_VISUAL.get(int(c))
            if cls is not None:
                out.append((cls, float(np.clip((x0 + x1) / 2 / w, 0, 1)), float(np.clip((y0 + y1) / 2 / h, 0, 1)),
                            float(s)))
        return out

    def best(self) -> dict[str, float]:
        """The highest score per visual class (0 where none)."""
        out = dict.fromkeys(VISUAL_CLASSES, 0.0)
        for cls, _, _, s in self.visual():
            out[cls] = max(out[cls], s)
        return out


def decode_yolox(output: np.ndarray, ratio: float, frame_hw: tuple[int, int], *, conf: float = 0.1,
                 iou: float = 0.45, size: int = YOLOX_SIZE) -> Detections:
    """Decode the raw ``(1, 3549, 85)`` output: boxes in frame pixels, score = objectness x class."""
    pred = np.asarray(output, dtype=np.float32).reshape(-1, 85)
    grid, strides = _grid(size)
    if len(pred) != len(grid):
        raise ValueError(f"YOLOX output has {len(pred)} cells, expected {len(grid)} for a {size}px input")
    cxy = (pred[:, :2] + grid) * strides[:, None]
    wh = np.exp(np.minimum(pred[:, 2:4], 10.0)) * strides[:, None]
    cls_scores = pred[:, 4:5] * pred[:, 5:]
    coco = cls_scores.argmax(1)
    scores = cls_scores[np.arange(len(pred)), coco]
    sel = scores >= conf
    boxes = np.concatenate([cxy - wh / 2, cxy + wh / 2], 1)[sel] / ratio
    scores, coco = scores[sel], coco[sel]
    h, w = frame_hw
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    # Per-class suppression: offset each class's boxes far apart so that one pass never lets a
    # person suppress the bicycle it rides.
    keep = nms(boxes + (coco[:, None] * 4.0 * max(h, w)), scores, iou) if len(scores) else np.zeros(0, np.int64)
    return Detections(boxes[keep], scores[keep], coco[keep], (h, w))


class YoloxTeacher:
    """YOLOX-nano by path; :meth:`detect` returns the frame's :class:`Detections`."""

    def __init__(self, path: Path, threads: int = 1, providers: tuple[str, ...] = ("CPUExecutionProvider",)):
        self.path = Path(path)
        labels = self.path.with_name("coco_labels.txt")
        if labels.is_file():
            # The label file may list the 91 COCO ids with "n/a" gaps; the detector's 80 outputs
            # follow the names without them.
            names = [n.strip() for n in labels.read_text().splitlines() if n.strip() and n.strip() != "n/a"]
            wrong = {i: (n, names[i]) for i, n in _COCO_NAMES.items() if i >= len(names) or names[i] != n}
            if wrong:
                raise ValueError(f"{labels}: class order differs from COCO's 80-class order at {wrong}")
        self.session = session(self.path, threads, providers)
        self.input = self.session.get_inputs()[0].name

    def detect(self, frame_bgr: np.ndarray, conf: float = 0.1, iou: float = 0.45) -> Detections:
        """Detections in ``frame_bgr`` (uint8 BGR, any size) with score >= ``conf``."""
        x, ratio = letterbox(frame_bgr)
        out = self.session.run(None, {self.input: x})[0]
        return decode_yolox(out, ratio, frame_bgr.shape[:2], conf=conf, iou=iou)


class MobileNetTeacher:
    """MobileNetV2 by path; :meth:`embed` returns the 1280-d global-pool embedding."""

    SIZE = 224
    DIM = 1280

    def __init__(self, path: Path, threads: int = 1, providers: tuple[str, ...] = ("CPUExecutionProvider",)):
        self.session = session(Path(path), threads, providers)
        self.input = self.session.get_inputs()[0].name

    def embed(self, frame_bgr: np.ndarray) -> np.ndarray:
        """``(1280,)`` float32 embedding of ``frame_bgr`` (RGB squashed to 224, (x - 128) / 128, NHWC)."""
        rgb = cv2.cvtColor(cv2.resize(frame_bgr, (self.SIZE, self.SIZE), interpolation=cv2.INTER_AREA),
                           cv2.COLOR_BGR2RGB)
        x = ((rgb.astype(np.float32) - 128.0) / 128.0)[None]
        out = self.session.run(["embedding"], {self.input: x})[0]
        return out.reshape(self.DIM).astype(np.float32)
