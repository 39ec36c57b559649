"""Clock offsets between sensors from their data alone: cross-correlation of activity signals.

Each recording becomes an *activity signal* on its own clock: the camera's motion energy (mean
absolute difference of consecutive grey frames), the radar's doppler energy (sum of |doppler|
over a frame's points) and the audio's onset strength (rectified rise of the log energy in 10 ms
frames). The signals are put on one 100 Hz grid, smoothed to a common bandwidth, high-passed
and normalised; their normalised cross-correlation over a bounded lag range peaks at the
offset, which a parabola through the peak refines below one grid step.

How far to trust it: the peak correlation is compared with what chance alone reaches for
signals this long and this smooth (from the effective number of independent samples), and with
the highest other peak. Both enter the ``confidence`` (0-1); ``level`` is ``high``, ``medium`` or
``low``. Recordings that were not captured together give a low confidence, not a confident
wrong offset.

Sign: ``offset_s`` is the clock offset of the sensor relative to the reference in the rig-file
convention, ``t_reference = t_sensor + offset``: an event at sensor time t is at reference time
t + offset.

What makes a good recording: 30-60 s with a dozen or more sharp events that every sensor sees
at the same instant, e.g. striking a hanging corner reflector, or dropping a book in front of
the rig. Slow or continuous activity gives broad peaks; an event whose sound comes at the end of
its motion (a hand clap) biases the estimate by part of the motion's duration.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fusion_node.errors import ConfigError, SensorError
from fusion_node.rig import Clock, Provenance, load_rig, now_iso, update_rig_sensor
from sensors.audio import RATE_HZ, load_audio_file
from sensors.ti_mmwave import iter_capture

from .errors import CalibrationError
from .plots import Plot

__all__ = [
    "ActivitySignal",
    "OffsetEstimate",
    "frames_activity",
    "video_activity",
    "radar_activity",
    "radar_capture_activity",
    "audio_activity",
    "audio_file_activity",
    "estimate_offset",
    "run_time",
    "GRID_HZ",
]

GRID_HZ = 100.0


@dataclass
class ActivitySignal:
    """An activity signal of one sensor: values at times (seconds, the sensor's file time base)."""

    name: str
    kind: str
    t_s: np.ndarray
    value: np.ndarray
    period_s: float  # the sensor's own sampling period (sets the smoothing)

    @property
    def duration_s(self) -> float:
        return float(self.t_s[-1] - self.t_s[0]) if self.t_s.size else 0.0

    def shifted(self, seconds: float) -> "ActivitySignal":
        """The same signal with its time base moved by ``seconds`` (e.g. a known file start time)."""
        return ActivitySignal(self.name, self.kind, self.t_s + seconds, self.value, self.period_s)


def frames_activity(frames, fps: float, name: str = "camera", width: int = 160) -> ActivitySignal:
    """Motion energy of an iterable of frames (BGR or grey): mean |difference| of consecutive frames.

    Frames are shrunk to ``width`` pixels wide first. The difference of frames i-1 and i measures
    the motion between them and is stamped at their midpoint, (i - 0.5) / fps.
    """
    import cv2

    prev = None
    values, times = [], []
    for i, frame in enumerate(frames):
        if frame.ndim == 3:
            frame = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        h, w = frame.shape
        if w > width:
            frame = cv2.resize(frame, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
        frame = frame.astype(np.float32)
        if prev is not None:
            values.append(float(np.mean(np.abs(frame - prev))))
            times.append((i - 0.5) / fps)
        prev = frame
    return ActivitySignal(name, "camera", np.array(times), np.array(values), 1.0 / fps)


def video_activity(path: str | Path, *, fps: float | None = None, max_seconds: float | None = None,
                   name: str = "camera", progress: bool = True) -> ActivitySignal:
    """:func:`frames_activity` of a video file (frame i at i / fps on the file's time base)."""
    import cv2
    from tqdm import tqdm

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"--video {path}: no such file")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise CalibrationError(f"--video {path}: OpenCV cannot open it (codec? try converting it to MJPG or H.264)")
    rate = fps or cap.get(cv2.CAP_PROP_FPS) or 0.0
    if not 0 < rate < 1000:
        cap.release()
        raise ConfigError(f"--video {path}: the file does not state its frame rate; pass --video-fps")
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    limit = int(max_seconds * rate) if max_seconds else None
    if limit is not None:
        total = min(total, limit) if total else limit

    def frames():
        n = 0
        while limit is None or n < limit:
            ok, frame = cap.read()
            if not ok:
                return
            n += 1
            yield frame

    try:
        sig = frames_activity(tqdm(frames(), total=total or None, desc=f"{name} motion", unit="frame",
                                   disable=not progress, leave=False), rate, name=name)
    finally:
        cap.release()
    if sig.value.size < 10:
        raise CalibrationError(f"--video {path}: only {sig.value.size + 1} frames could be read; need a few seconds")
    return sig


def radar_activity(frames, period_s: float, name: str = "radar") -> ActivitySignal:
    """Doppler energy of radar frames: sum of |doppler| over each frame's points.

    Frame times come from the radar's frame counter, (frame_number - first) * period, so
    dropped frames leave gaps instead of shifting later frames.
    """
    frames = list(frames)
    if not frames:
        return ActivitySignal(name, "radar", np.zeros(0), np.zeros(0), period_s)
    first = frames[0].frame_number
    t = np.array([(f.frame_number - first) * period_s for f in frames], dtype=np.float64)
    v = np.array([float(np.abs(f.points[:, 3]).sum()) if f.num_points else 0.0 for f in frames])
    order = np.argsort(t, kind="stable")
    t, v = t[order], v[order]
    keep = np.concatenate([[True], np.diff(t) > 0])  # a wrapped or repeated counter: keep the first
    return ActivitySignal(name, "radar", t[keep], v[keep], period_s)


def radar_capture_activity(path: str | Path, period_s: float, name: str = "radar") -> ActivitySignal:
    """:func:`radar_activity` of a TI out-of-box-demo ``.dat`` capture."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"--radar {path}: no such file")
    try:
        sig = radar_activity(iter_capture(path), period_s, name=name)
    except ValueError as exc:
        raise CalibrationError(f"--radar: {exc}") from None
    if sig.value.size < 10:
        raise CalibrationError(f"--radar {path}: only {sig.value.size} frames; need a few seconds")
    return sig


def audio_activity(samples: np.ndarray, rate_hz: int, name: str = "audio", frame_s: float = 0.01,
                   hop_s: float = 0.005) -> ActivitySignal:
    """Onset strength of audio: the rectified window-to-window rise of the log energy.

    Energy in ``frame_s`` windows every ``hop_s``; the rise from one window to the next is stamped
    at the middle of the stretch the later window adds (where the onset that caused it lies).
    """
    x = np.asarray(samples, dtype=np.float64).ravel()
    n, hop = max(1, int(round(frame_s * rate_hz))), max(1, int(round(hop_s * rate_hz)))
    if x.size < n + 2 * hop:
        return ActivitySignal(name, "audio", np.zeros(0), np.zeros(0), hop_s)
    count = 1 + (x.size - n) // hop
    csum = np.concatenate([[0.0], np.cumsum(x * x)])
    starts = np.arange(count) * hop
    energy = (csum[starts + n] - csum[starts]) / n
    log_e = np.log10(energy + 1e-10)
    rise = np.maximum(np.diff(log_e), 0.0)
    # an onset that raises window j over window j-1 lies in the part of window j that window j-1
    # does not cover, [start_j + n - hop, start_j + n): stamp the rise at its middle
    t = (starts[1:] + n - hop / 2 - 0.5) / rate_hz
    return ActivitySignal(name, "audio", t, rise, hop / rate_hz)


def audio_file_activity(path: str | Path, name: str = "audio", max_seconds: float | None = None) -> ActivitySignal:
    """:func:`audio_activity` of a WAV/OGG/FLAC file (mixed to mono, 16 kHz)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"--audio {path}: no such file")
    try:
        samples = load_audio_file(path, name)
    except SensorError as exc:
        raise CalibrationError(str(exc)) from None
    if max_seconds:
        samples = samples[: int(max_seconds * RATE_HZ)]
    sig = audio_activity(samples, RATE_HZ, name=name)
    if sig.value.size < 10:
        raise CalibrationError(f"--audio {path}: too short for a time calibration; need a few seconds")
    return sig


# --- the estimator -------------------------------------------------------------------------------


def _to_grid(sig: ActivitySignal, grid: np.ndarray, sigma_s: float) -> np.ndarray:
    """Resample onto ``grid`` (linear, NaN outside the signal), smooth, high-pass, normalise."""
    from scipy.ndimage import gaussian_filter1d, uniform_filter1d

    y = np.full(grid.size, np.nan)
    if sig.t_s.size < 2:
        return y
    inside = (grid >= sig.t_s[0]) & (grid <= sig.t_s[-1])
    # clip the top so that one huge event cannot carry the whole correlation
    v = np.maximum(sig.value, 0.0)
    top = np.percentile(v, 99.9)
    v = np.minimum(v, top) if top > 0 else v
    y[inside] = np.interp(grid[inside], sig.t_s, v)
    idx = np.flatnonzero(inside)
    if idx.size < 4:
        return y
    seg = y[idx[0]: idx[-1] + 1]
    step = grid[1] - grid[0]
    if sigma_s > 0:
        seg = gaussian_filter1d(seg, sigma_s / step, mode="nearest")
    trend = uniform_filter1d(seg, size=max(3, int(round(2.0 / step))), mode="nearest")
    seg = seg - trend
    sd = seg.std()
    seg = (seg - seg.mean()) / sd if sd > 0 else seg * 0.0
    y[idx[0]: idx[-1] + 1] = seg
    return y


def _lagged_corr(a: np.ndarray, b: np.ndarray, max_lag: int, min_overlap: int) -> tuple[np.ndarray, np.ndarray]:
    """Pearson correlation of a[n] with b[n - L] for L in [-max_lag, max_lag], over the overlap."""
    lags = np.arange(-max_lag, max_lag + 1)
    corr = np.full(lags.size, np.nan)
    overlap = np.zeros(lags.size, int)
    n = a.size
    for k, L in enumerate(lags):
        if L >= 0:
            x, y = a[L:], b[: n - L]
        else:
            x, y = a[: n + L], b[-L:]
        ok = np.isfinite(x) & np.isfinite(y)
        m = int(ok.sum())
        overlap[k] = m
        if m < min_overlap:
            continue
        xs, ys = x[ok], y[ok]
        xs = xs - xs.mean()
        ys = ys - ys.mean()
        den = np.sqrt((xs * xs).sum() * (ys * ys).sum())
        if den > 0:
            corr[k] = float((xs * ys).sum() / den)
    return corr, overlap


def _acf_halfwidth(x: np.ndarray, max_k: int = 200) -> float:
    """Lag (grid steps) where the autocorrelation first falls to one half: the width of events."""
    r = _acf(x, max_k)
    below = np.flatnonzero(r < 0.5)
    if below.size == 0 or below[0] == 0:
        return float(max_k)
    k = int(below[0])
    return float(k - 1 + (r[k - 1] - 0.5) / max(r[k - 1] - r[k], 1e-12))


def _match_bandwidth(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Smooth the signal with the narrower events so that both autocorrelations have one width.

    Sharp audio onsets against broad motion bursts correlate weakly although they line up;
    widening the sharp one to the other's width raises the peak without moving it. For Gaussian
    smoothing, the squared autocorrelation half-widths add: extra sigma = sqrt(dw^2 / 2) / 1.1774.
    """
    from scipy.ndimage import gaussian_filter1d

    wa, wb = _acf_halfwidth(a), _acf_halfwidth(b)
    narrow, wide = (a, wb) if wa < wb else (b, wa)
    w_narrow = min(wa, wb)
    extra = np.sqrt(max(0.0, wide * wide - w_narrow * w_narrow) / 2.0) / 1.1774
    if extra < 0.5:
        return a, b
    ok = np.isfinite(narrow)
    idx = np.flatnonzero(ok)
    seg = gaussian_filter1d(narrow[idx[0]: idx[-1] + 1], extra, mode="nearest")
    seg = (seg - seg.mean()) / (seg.std() or 1.0)
    out = narrow.copy()
    out[idx[0]: idx[-1] + 1] = seg
    return (out, b) if narrow is a else (a, out)


def _acf(x: np.ndarray, max_k: int) -> np.ndarray:
    x = x[np.isfinite(x)]
    x = x - x.mean()
    den = float((x * x).sum()) or 1.0
    return np.array([float((x[: x.size - k] * x[k:]).sum()) / den for k in range(min(max_k, x.size - 1))])


@dataclass
class OffsetEstimate:
    """Clock offset of ``sensor`` relative to ``reference`` (t_reference = t_sensor + offset_s)."""

    reference: str
    sensor: str
    offset_s: float
    peak_corr: float
    second_corr: float
    n_eff: float
    chance_corr: float
    confidence: float
    level: str
    overlap_s: float
    lags_s: np.ndarray = field(repr=False)
    corr: np.ndarray = field(repr=False)
    at_edge: bool = False  # the best lag is the end of the lag range (confidence then 0)

    @property
    def peak_ratio(self) -> float:
        """Main peak over the highest other peak (inf when there is none)."""
        return self.peak_corr / self.second_corr if self.second_corr > 1e-9 else float("inf")

    def as_dict(self) -> dict:
        return {"reference": self.reference, "sensor": self.sensor, "offset_ms": self.offset_s * 1e3,
                "confidence": self.confidence, "level": self.level, "peak_corr": self.peak_corr,
                "second_peak_corr": self.second_corr,
                "peak_ratio": None if not np.isfinite(self.peak_ratio) else self.peak_ratio,
                "chance_corr": self.chance_corr, "effective_samples": self.n_eff, "overlap_s": self.overlap_s,
                "at_lag_range_edge": self.at_edge}


def estimate_offset(reference: ActivitySignal, sensor: ActivitySignal, *, max_lag_s: float = 2.0,
                    grid_hz: float = GRID_HZ, min_overlap_s: float = 5.0) -> OffsetEstimate:
    """Offset of ``sensor``'s clock against ``reference``'s from their activity signals.

    Both signals are resampled on a common ``grid_hz`` grid, smoothed with a Gaussian of half
    the coarser sensor's period, high-passed (2 s moving average removed) and normalised; the
    Pearson correlation is taken at every lag within +-``max_lag_s`` over the overlapping part,
    and the best lag refined with a parabola through its neighbours.

    Confidence: ``chance_corr`` is the correlation that the highest of the lag range's
    independent tries reaches by chance for unrelated signals (from the effective number of
    independent samples, Bartlett's formula); ``second_corr`` the highest correlation further
    than the main peak's width from it. ``confidence = s * d`` with ``s = (peak / chance - 1) / 2``
    (how far the peak stands above chance: full at three times the chance level) and
    ``d = 1 - second / peak`` (how unambiguous it is), both clipped to [0, 1]; 0 when the best lag
    is the end of the lag range.
    Levels: high >= 0.4, medium >= 0.15, low below.
    """
    if reference.t_s.size < 4 or sensor.t_s.size < 4:
        raise CalibrationError(f"{reference.name}/{sensor.name}: an activity signal has fewer than 4 samples")
    step = 1.0 / grid_hz
    max_lag = int(np.ceil(max_lag_s * grid_hz))
    t0 = min(reference.t_s[0], sensor.t_s[0]) - max_lag_s
    t1 = max(reference.t_s[-1], sensor.t_s[-1]) + max_lag_s
    grid = t0 + np.arange(int(np.ceil((t1 - t0) / step)) + 1) * step
    sigma = 0.5 * max(reference.period_s, sensor.period_s, 2 * step)
    a = _to_grid(reference, grid, sigma)
    b = _to_grid(sensor, grid, sigma)
    a, b = _match_bandwidth(a, b)
    min_overlap = int(min_overlap_s * grid_hz)
    corr, overlap = _lagged_corr(a, b, max_lag, min_overlap)
    lags_s = np.arange(-max_lag, max_lag + 1) * step
    if not np.any(np.isfinite(corr)):
        longest = int(overlap.max()) * step
        raise CalibrationError(
            f"{reference.name} and {sensor.name} overlap by at most {longest:.1f} s within +-{max_lag_s:g} s of lag; "
            f"at least {min_overlap_s:g} s of common recording is needed (raise --max-lag-s if the clocks differ "
            f"by more, or give the files' start times)")
    c = np.where(np.isfinite(corr), corr, -np.inf)
    k = int(np.argmax(c))
    peak = float(c[k])
    frac = 0.0
    if 0 < k < c.size - 1 and np.isfinite(c[k - 1]) and np.isfinite(c[k + 1]):
        den = c[k - 1] - 2 * c[k] + c[k + 1]
        if den < 0:
            frac = float(np.clip(0.5 * (c[k - 1] - c[k + 1]) / den, -0.5, 0.5))
    offset = (k - max_lag + frac) * step
    # width of the main peak: down to half its height (at least the smoothing scale)
    half = peak / 2
    lo = k
    while lo > 0 and c[lo - 1] > half:
        lo -= 1
    hi = k
    while hi < c.size - 1 and c[hi + 1] > half:
        hi += 1
    guard = max(k - lo, hi - k, int(round(4 * sigma * grid_hz))) + 1
    others = np.concatenate([c[: max(0, k - guard)], c[k + guard + 1:]])
    others = others[np.isfinite(others)]
    second = float(max(0.0, others.max())) if others.size else 0.0
    # effective independent samples (Bartlett) and the chance level of the best of many lags
    m = int(overlap[k])
    ra, rb = _acf(a, 400), _acf(b, 400)
    kk = min(ra.size, rb.size)
    s = 1.0 + 2.0 * float(np.sum(ra[1:kk] * rb[1:kk])) if kk > 1 else 1.0
    n_eff = max(2.0, m / max(1.0, s))
    corr_len = max(1.0, s) * step
    tries = max(2.0, 2 * max_lag_s / corr_len)
    chance = float(min(0.95, np.sqrt(2.0 * np.log(tries)) / np.sqrt(n_eff)))
    strength = float(np.clip((peak / chance - 1.0) / 2.0, 0.0, 1.0)) if peak > 0 else 0.0
    distinct = float(np.clip(1.0 - second / peak, 0.0, 1.0)) if peak > 0 else 0.0
    confidence = strength * distinct
    at_edge = k in (0, c.size - 1) or not (np.isfinite(c[max(0, k - 1)]) and np.isfinite(c[min(c.size - 1, k + 1)]))
    if at_edge:  # the best lag is the end of the range: the true peak may lie beyond it
        confidence = 0.0
    level = "high" if confidence >= 0.4 else "medium" if confidence >= 0.15 else "low"
    return OffsetEstimate(reference.name, sensor.name, float(offset), peak, second, float(n_eff), chance,
                          float(confidence), level, m * step, lags_s, corr, at_edge)


# --- the command ---------------------------------------------------------------------------------


def _plot(signals: dict[str, ActivitySignal], estimates: list[OffsetEstimate], reference: str,
          out_path: Path) -> Path:
    """Picture: each activity signal on the reference clock after correction, and the correlation curves."""
    colours = {"camera": (40, 90, 220), "radar": (60, 160, 60), "audio": (200, 110, 30)}
    plot = Plot(width=960, rows=2, row_height=240, title=f"time calibration against {reference}")
    shifts = {reference: 0.0, **{e.sensor: e.offset_s for e in estimates}}
    for row, (name, sig) in enumerate(signals.items()):
        t = sig.t_s + shifts.get(name, 0.0)
        v = sig.value / (np.percentile(sig.value, 99.9) or 1.0)
        shift = f", shifted {shifts[name] * 1e3:+.1f} ms" if name != reference else ", reference"
        plot.line(0, t, np.clip(v, 0, 1.0) - 1.2 * row, colours.get(sig.kind, (0, 0, 0)),
                  label=f"{name} ({sig.kind}{shift})")
    plot.axis_labels(0, "time on the reference clock (s), each signal shifted by its estimated offset", "activity",
                     yticks=False)
    for e in estimates:
        sig = signals[e.sensor]
        plot.line(1, e.lags_s * 1e3, e.corr, colours.get(sig.kind, (0, 0, 0)),
                  label=f"{e.sensor}: {e.offset_s * 1e3:+.1f} ms, conf {e.confidence:.2f} ({e.level})")
        plot.marker(1, e.offset_s * 1e3, e.peak_corr, colours.get(sig.kind, (0, 0, 0)))
    plot.axis_labels(1, "lag (ms)", "correlation")
    return plot.save(out_path)


def run_time(rig_path: str | Path, reference: str, *, video: str | None = None, radar: str | None = None,
             audio: str | None = None, camera_id: str | None = None, radar_id: str | None = None,
             audio_id: str | None = None, radar_period_ms: float = 100.0, video_fps: float | None = None,
             starts_s: dict[str, float] | None = None, max_lag_s: float = 2.0, max_seconds: float | None = None,
             accept_low: bool = False, progress: bool = True, echo=print) -> dict:
    """The ``fusion calibrate time`` command: estimate, report, and write confident offsets to the rig file.

    Sources are any two or more of video/radar/audio; the one belonging to ``reference`` (a
    sensor id in the rig file) is the reference. Sensor ids default to the rig file's first
    sensor of each kind (cam0, radar0, mic0 if it has none; sensors missing from the file are added).
    Each offset written is ``reference's clock_offset_ns + estimate``, so
    the reference keeps its own offset to the rig clock. Low-confidence estimates are reported
    but not written unless ``accept_low``; CalibrationError lists them.
    """
    rig_path = Path(rig_path)
    rig = load_rig(rig_path)

    default_ids = {"camera": "cam0", "radar": "radar0", "audio": "mic0"}

    def pick(kind: str, given: str | None) -> str:
        if given:
            if rig.has(given):
                rig.sensor(given, kind=kind)
            return given  # a sensor not in the file yet is added to it
        for s in rig.sensors:
            if s.kind == kind:
                return s.id
        return default_ids[kind]

    sources: dict[str, tuple[str, str]] = {}
    if video:
        sources[pick("camera", camera_id)] = ("camera", video)
    if radar:
        sources[pick("radar", radar_id)] = ("radar", radar)
    if audio:
        sources[pick("audio", audio_id)] = ("audio", audio)
    if len(sources) < 2:
        raise ConfigError("fusion calibrate time: give at least two of --video, --radar, --audio")
    if reference not in sources:
        raise ConfigError(f"--reference {reference}: not one of the sensors given data ({', '.join(sources)}); "
                          f"name the sensor id whose recording is --video/--radar/--audio")
    starts_s = starts_s or {}
    signals: dict[str, ActivitySignal] = {}
    for sid, (kind, path) in sources.items():
        if kind == "camera":
            sig = video_activity(path, fps=video_fps, max_seconds=max_seconds, name=sid, progress=progress)
        elif kind == "radar":
            sig = radar_capture_activity(path, radar_period_ms / 1000.0, name=sid)
        else:
            sig = audio_file_activity(path, name=sid, max_seconds=max_seconds)
        signals[sid] = sig.shifted(starts_s.get(kind, 0.0))
    estimates = [estimate_offset(signals[reference], signals[sid], max_lag_s=max_lag_s)
                 for sid in signals if sid != reference]
    ref_clock = rig.sensor(reference).clock if rig.has(reference) else Clock()
    date = now_iso()
    written, refused = [], []
    echo(f"fusion calibrate time: offsets against {reference} "
         f"({', '.join(f'{s}: {Path(p).name}' for s, (_, p) in sources.items())})")
    for e in estimates:
        echo(f"  {e.sensor}: offset {e.offset_s * 1e3:+.1f} ms (t_{reference} = t_{e.sensor} + offset)  "
             f"confidence {e.confidence:.2f} ({e.level}): peak r {e.peak_corr:.2f}, next peak {e.second_corr:.2f}, "
             f"chance {e.chance_corr:.2f}, {e.overlap_s:.0f} s overlap")
        if e.at_edge:
            echo(f"    the best lag is the end of the +-{max_lag_s:g} s range: widen --max-lag-s or give the files' "
                 f"start times")
        if e.level == "low" and not accept_low:
            refused.append(e)
            continue
        offset_ns = ref_clock.clock_offset_ns + int(round(e.offset_s * 1e9))
        old = rig.sensor(e.sensor).clock if rig.has(e.sensor) else Clock()
        prov = Provenance(
            date=date,
            method=(f"cross-correlation of activity signals ({signals[e.sensor].kind} vs {signals[reference].kind} "
                    f"{reference}), {GRID_HZ:g} Hz grid, lags +-{max_lag_s:g} s, parabolic peak"),
            residual=None, confidence=round(e.confidence, 3),
            details={"offset_to_reference_ms": round(e.offset_s * 1e3, 3), "reference": reference,
                     "peak_corr": round(e.peak_corr, 3), "second_peak_corr": round(e.second_corr, 3),
                     "level": e.level})
        update_rig_sensor(rig_path, e.sensor, signals[e.sensor].kind,
                          clock=Clock(clock_offset_ns=offset_ns, clock_drift_ppm=old.clock_drift_ppm,
                                      clock_epoch_ns=old.clock_epoch_ns, provenance=prov))
        written.append(e.sensor)
    picture = _plot(signals, estimates, reference, rig_path.with_name(f"{rig_path.stem}_time.png"))
    report = {"command": "time", "rig": str(rig_path), "reference": reference,
              "estimates": [e.as_dict() for e in estimates], "written": written,
              "not_written": [e.sensor for e in refused], "picture": str(picture)}
    report_path = rig_path.with_name(f"{rig_path.stem}_time.json")
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    what = f"wrote {rig_path} ({', '.join(written)}: clock)" if written else f"{rig_path} unchanged"
    echo(f"  {what}, picture {picture}, report {report_path}")
    if refused:
        names = ", ".join(f"{e.sensor} (confidence {e.confidence:.2f})" for e in refused)
        raise CalibrationError(
            f"no trustworthy offset for {names}: left unchanged in {rig_path}. The recordings may not overlap or "
            f"share no events: record 30-60 s with a dozen sharp events all sensors see (strike a corner "
            f"reflector), or pass --accept-low-confidence to write it anyway")
    return report
