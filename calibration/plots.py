"""A small line-plot writer on OpenCV (the project has no plotting library): rows of panels, PNG out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .errors import CalibrationError

__all__ = ["Plot"]


def _nice_ticks(lo: float, hi: float, n: int = 6) -> np.ndarray:
    span = hi - lo if hi > lo else 1.0
    raw = span / max(1, n)
    mag = 10 ** np.floor(np.log10(raw))
    step = min((m * mag for m in (1, 2, 5, 10) if m * mag >= raw), default=raw)
    start = np.ceil(lo / step) * step
    return np.arange(start, hi + step * 1e-9, step)


@dataclass
class _Panel:
    series: list = field(default_factory=list)  # (x, y, colour, label)
    markers: list = field(default_factory=list)  # (x, y, colour)
    xlabel: str = ""
    ylabel: str = ""
    yticks: bool = True


class Plot:
    """Panels stacked vertically; each autoscales to its data."""

    def __init__(self, width: int = 960, rows: int = 1, row_height: int = 240, title: str = ""):
        self.width, self.row_height, self.title = width, row_height, title
        self.panels = [_Panel() for _ in range(rows)]

    def line(self, row: int, x, y, colour=(0, 0, 0), label: str = "") -> None:
        x, y = np.asarray(x, float), np.asarray(y, float)
        ok = np.isfinite(x) & np.isfinite(y)
        self.panels[row].series.append((x[ok], y[ok], colour, label))

    def marker(self, row: int, x: float, y: float, colour=(0, 0, 0)) -> None:
        self.panels[row].markers.append((float(x), float(y), colour))

    def axis_labels(self, row: int, xlabel: str, ylabel: str = "", yticks: bool = True) -> None:
        self.panels[row].xlabel, self.panels[row].ylabel = xlabel, ylabel
        self.panels[row].yticks = yticks

    def render(self) -> np.ndarray:
        top = 30 if self.title else 6
        h = top + self.row_height * len(self.panels)
        img = np.full((h, self.width, 3), 255, np.uint8)
        font = cv2.FONT_HERSHEY_SIMPLEX
        if self.title:
            cv2.putText(img, self.title, (10, 21), font, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
        left, right, pad_top, pad_bottom = 58, 12, 8, 40
        for r, panel in enumerate(self.panels):
            y0 = top + r * self.row_height + pad_top
            y1 = top + (r + 1) * self.row_height - pad_bottom
            x0, x1 = left, self.width - right
            xs = [s[0] for s in panel.series if s[0].size] + [np.array([m[0]]) for m in panel.markers]
            ys = [s[1] for s in panel.series if s[1].size] + [np.array([m[1]]) for m in panel.markers]
            if not xs:
                continue
            xlo, xhi = float(min(a.min() for a in xs)), float(max(a.max() for a in xs))
            ylo, yhi = float(min(a.min() for a in ys)), float(max(a.max() for a in ys))
            if xhi <= xlo:
                xhi = xlo + 1.0
            if yhi <= ylo:
                yhi = ylo + 1.0
            margin = 0.05 * (yhi - ylo)
            ylo, yhi = ylo - margin, yhi + margin

            def px(x, y):
                return (x0 + (np.asarray(x) - xlo) / (xhi - xlo) * (x1 - x0),
                        y1 - (np.asarray(y) - ylo) / (yhi - ylo) * (y1 - y0))

            cv2.rectangle(img, (x0, y0), (x1, y1), (160, 160, 160), 1)
            for tx in _nice_ticks(xlo, xhi, 8):
                u, _ = px(tx, ylo)
                cv2.line(img, (int(u), y0), (int(u), y1), (232, 232, 232), 1)
                cv2.putText(img, f"{tx:g}", (int(u) - 12, y1 + 14), font, 0.38, (60, 60, 60), 1, cv2.LINE_AA)
            for ty in _nice_ticks(ylo, yhi, 4) if panel.yticks else []:
                _, v = px(xlo, ty)
                cv2.line(img, (x0, int(v)), (x1, int(v)), (232, 232, 232), 1)
                cv2.putText(img, f"{ty + 0.0:.3g}", (4, int(v) + 4), font, 0.38, (60, 60, 60), 1, cv2.LINE_AA)
            for x, y, colour, _ in panel.series:
                if x.size < 2:
                    continue
                u, v = px(x, y)
                pts = np.round(np.stack([u, v], axis=1) * 4).astype(np.int32)
                cv2.polylines(img, [pts], False, colour, 1, cv2.LINE_AA, 2)
            for x, y, colour in panel.markers:
                u, v = px(x, y)
                cv2.drawMarker(img, (int(u), int(v)), colour, cv2.MARKER_TRIANGLE_DOWN, 12, 2, cv2.LINE_AA)
            labels = [(colour, label) for _, _, colour, label in panel.series if label]
            if labels:
                box_w = 46 + max(cv2.getTextSize(t, font, 0.42, 1)[0][0] for _, t in labels)
                cv2.rectangle(img, (x0 + 4, y0 + 3), (x0 + box_w, y0 + 8 + 16 * len(labels)), (255, 255, 255), -1)
                cv2.rectangle(img, (x0 + 4, y0 + 3), (x0 + box_w, y0 + 8 + 16 * len(labels)), (200, 200, 200), 1)
            for k, (colour, label) in enumerate(labels):
                cv2.line(img, (x0 + 10, y0 + 14 + 16 * k), (x0 + 30, y0 + 14 + 16 * k), colour, 2)
                cv2.putText(img, label, (x0 + 36, y0 + 18 + 16 * k), font, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
            cv2.putText(img, panel.xlabel, (x0, y1 + 31), font, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
            if panel.ylabel:
                cv2.putText(img, panel.ylabel, (x1 - 8 * len(panel.ylabel) - 4, y0 + 14), font, 0.42,
                            (90, 90, 90), 1, cv2.LINE_AA)
        return img

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), self.render()):
            raise CalibrationError(f"{path}: cannot write the picture (check the folder is writable)")
        return path
