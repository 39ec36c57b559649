"""Sensor data -> model input tensors, in numpy and OpenCV only.

These classes are the single definition of what each encoder sees. The fusion node calls them
on live data and training code calls the same classes on recorded data, so the two can never
disagree; their parameters travel inside the model manifest (``to_dict`` / ``from_dict``) so a
bundle always carries the preprocessing it was trained with. No torch here: the node runs on
onnxruntime + numpy.

==================  =====================================  ======================================
class               input                                  output (batch of 1, float32)
==================  =====================================  ======================================
CameraPreprocess    BGR uint8 image (H, W, 3)              (1, 3, size_h, size_w) normalised RGB
RadarPreprocess     points float (N, 6): x_m, y_m, z_m,    points (1, max_points, 5 or 8), mask
                    doppler_mps, snr_db, noise_db          (1, max_points)
AudioPreprocess     mono float samples (n,)                log-mel (1, 1, n_mels, num_frames)
==================  =====================================  ======================================

Invalid input (wrong dtype, wrong shape) raises ValueError naming what was expected. These
are programming or wiring errors, not data errors: the wire decoder has already rejected
malformed or non-finite messages.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from .radar_projection import RadarProjection
from .vocabulary import WIRE_AUDIO_RATE_HZ

__all__ = ["CameraPreprocess", "RadarPreprocess", "AudioPreprocess", "PREPROCESSORS", "pool_radar_frames"]


def _check_keys(cls_name: str, d: Mapping[str, Any], allowed: Sequence[str]) -> None:
    if not isinstance(d, Mapping):
        raise ValueError(f"{cls_name}.from_dict: expected a mapping, got {type(d).__name__}")
    for key in d:
        if key not in allowed:
            raise ValueError(f"{cls_name}.from_dict: unknown key {key!r}; allowed keys are {list(allowed)}")


def _positive_int(cls_name: str, name: str, value: Any) -> int:
    # bool is an int subclass; True as a size is certainly a mistake.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{cls_name}: {name} must be a positive integer, got {value!r}")
    return int(value)


def _float_tuple(cls_name: str, name: str, value: Any, n: int, *, positive: bool = False) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{cls_name}: {name} must be {n} numbers, got {value!r}") from None
    if len(out) != n or not all(math.isfinite(v) for v in out):
        raise ValueError(f"{cls_name}: {name} must be {n} finite numbers, got {value!r}")
    if positive and not all(v > 0 for v in out):
        raise ValueError(f"{cls_name}: {name} must all be > 0, got {value!r}")
    return out


def _finite_float(cls_name: str, name: str, value: Any, *, positive: bool = False) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{cls_name}: {name} must be a number, got {value!r}") from None
    if not math.isfinite(out) or (positive and out <= 0):
        raise ValueError(f"{cls_name}: {name} must be a finite number{' > 0' if positive else ''}, got {value!r}")
    return out


class CameraPreprocess:
    """BGR uint8 image -> normalised RGB float32 tensor ``(1, 3, H, W)``.

    Steps: resize to ``size_hw`` with ``cv2.INTER_AREA`` (an area average, which does not alias
    when shrinking a large camera frame), BGR -> RGB, scale to [0, 1], subtract ``mean_rgb`` and
    divide by ``std_rgb`` per channel. The aspect ratio is not preserved: the encoder is trained
    on the same squash, so both sides agree. Resizing first touches the full frame once; the
    channel swap then costs nothing, being the order in which the small image is read into the
    output. The area resize treats each channel alike, so the result is the same, to the bit, as
    swapping first.
    """

    KEYS = ("size_hw", "mean_rgb", "std_rgb")

    def __init__(
        self,
        size_hw: Sequence[int] = (96, 96),
        mean_rgb: Sequence[float] = (0.485, 0.456, 0.406),
        std_rgb: Sequence[float] = (0.229, 0.224, 0.225),
    ) -> None:
        name = type(self).__name__
        if not isinstance(size_hw, Sequence) or len(size_hw) != 2:
            raise ValueError(f"{name}: size_hw must be (height, width), got {size_hw!r}")
        self.size_hw: tuple[int, int] = (
            _positive_int(name, "size_hw[0]", size_hw[0]),
            _positive_int(name, "size_hw[1]", size_hw[1]),
        )
        self.mean_rgb = _float_tuple(name, "mean_rgb", mean_rgb, 3)
        self.std_rgb = _float_tuple(name, "std_rgb", std_rgb, 3, positive=True)
        # Fold the /255 scale and the normalisation into one multiply-add per pixel; shaped
        # (3, 1, 1) to broadcast over a channel-first (3, H, W) image.
        self._scale = (1.0 / (255.0 * np.asarray(self.std_rgb, dtype=np.float32))).astype(np.float32)[:, None, None]
        self._offset = (-np.asarray(self.mean_rgb, dtype=np.float32)
                        / np.asarray(self.std_rgb, dtype=np.float32))[:, None, None]

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        """Shape of the tensor ``__call__`` returns."""
        return (1, 3, self.size_hw[0], self.size_hw[1])

    def __call__(self, image_bgr: np.ndarray) -> np.ndarray:
        if not isinstance(image_bgr, np.ndarray):
            raise ValueError(f"camera image must be a numpy uint8 array (H, W, 3) BGR, got {type(image_bgr).__name__}")
        if image_bgr.dtype != np.uint8:
            raise ValueError(f"camera image must be uint8 (H, W, 3) BGR, got dtype {image_bgr.dtype}")
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.shape[0] == 0 or image_bgr.shape[1] == 0:
            raise ValueError(f"camera image must have shape (H, W, 3) with H, W > 0, got {image_bgr.shape}")
        h, w = self.size_hw
        small = image_bgr
        if small.shape[:2] != (h, w):
            small = cv2.resize(np.ascontiguousarray(small), (w, h), interpolation=cv2.INTER_AREA)  # (width, height)
        out = np.empty(self.output_shape, dtype=np.float32)
        # (H, W, BGR) read as (RGB, H, W): the channel swap and the layout change happen in the
        # one pass that converts to float and scales, written straight into the output.
        np.multiply(small.transpose(2, 0, 1)[::-1], self._scale, out=out[0])
        out[0] += self._offset
        return out

    def to_dict(self) -> dict[str, Any]:
        """Parameters as JSON-ready values (the manifest's ``preprocess`` block)."""
        return {"size_hw": list(self.size_hw), "mean_rgb": list(self.mean_rgb), "std_rgb": list(self.std_rgb)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CameraPreprocess":
        """Inverse of :meth:`to_dict`; missing keys take defaults, unknown keys raise ValueError."""
        _check_keys(cls.__name__, d, cls.KEYS)
        return cls(**d)

    def __repr__(self) -> str:
        return f"CameraPreprocess(size_hw={self.size_hw}, mean_rgb={self.mean_rgb}, std_rgb={self.std_rgb})"


def pool_radar_frames(frames: Sequence[np.ndarray], n: int) -> np.ndarray:
    """The detections of one window: those of the newest ``n`` of a radar's ``frames`` (each
    ``(N, 6)``, oldest first), in one array. Raises ValueError without a frame."""
    recent = list(frames)[-n:]
    if not recent:
        raise ValueError("radar window: no frame to pool")
    return recent[0] if len(recent) == 1 else np.concatenate(recent)


class RadarPreprocess:
    """Radar detections ``(N, 6)`` -> fixed-size padded point set plus validity mask.

    Input columns: x_m, y_m, z_m, doppler_mps, snr_db, noise_db. Output ``points (1, P, F)``
    holds x, y, z, doppler, snr each divided by ``scale`` (bringing them to roughly unit range;
    noise_db is dropped because snr already carries the signal quality), and ``mask (1, P)`` is
    1.0 for real points, 0.0 for padding. With more than ``P = max_points`` detections the
    highest-SNR ones are kept (clutter and multipath tend to be weak); kept points are ordered by
    descending SNR, ties in input order. Rows with a non-finite value are dropped. No detections
    gives an all-zero mask.

    With ``image_features`` each point also carries where it lands in the camera's picture
    (``F = 8``): u and v as fractions of the picture's width and height (clipped to -1..2; 0 for
    a point behind the camera) and 1.0 when it falls inside the picture. The projection comes
    from the rig calibration (a :class:`~fusion_node.radar_projection.RadarProjection` passed to
    the call); without one, from the nominal geometry the bundle was trained with
    (``nominal_hfov_deg``, ``nominal_aspect``, ``nominal_below_m``). A radar encoder that sees
    points where the camera sees pixels learns *where* a thing is, and a rig that mounts its
    sensors differently from the training rig still feeds it the same kind of input.

    ``stack_frames``: a window's detections are those of the radar's last ``stack_frames`` frames
    (the set's frame and the ones before it), pooled by :meth:`pool` before the call. One frame
    holds a handful of points per person, and a fifth of them go missing; a few frames together
    say where people are far better, while a walker moves about ten centimetres from one frame to the next.
    """

    KEYS = ("max_points", "scale", "image_features", "nominal_hfov_deg", "nominal_aspect", "nominal_below_m",
            "stack_frames")
    IN_COLUMNS = ("x_m", "y_m", "z_m", "doppler_mps", "snr_db", "noise_db")
    BASE_FEATURES = 5
    IMAGE_FEATURES = ("u", "v", "in_view")
    _SNR_COLUMN = 4

    def __init__(self, max_points: int = 64, scale: Sequence[float] = (10.0, 10.0, 5.0, 5.0, 30.0),
                 image_features: bool = False, nominal_hfov_deg: float = 70.0, nominal_aspect: float = 16 / 9,
                 nominal_below_m: float = 0.1, stack_frames: int = 1) -> None:
        name = type(self).__name__
        self.max_points = _positive_int(name, "max_points", max_points)
        self.stack_frames = _positive_int(name, "stack_frames", stack_frames)
        self.scale = _float_tuple(name, "scale", scale, self.BASE_FEATURES, positive=True)
        self._inv_scale = (1.0 / np.asarray(self.scale, dtype=np.float64)).astype(np.float32)
        if not isinstance(image_features, bool):
            raise ValueError(f"{name}: image_features must be true or false, got {image_features!r}")
        self.image_features = image_features
        self.nominal_hfov_deg = _finite_float(name, "nominal_hfov_deg", nominal_hfov_deg, positive=True)
        self.nominal_aspect = _finite_float(name, "nominal_aspect", nominal_aspect, positive=True)
        self.nominal_below_m = _finite_float(name, "nominal_below_m", nominal_below_m)
        if not 1.0 <= self.nominal_hfov_deg <= 179.0:
            raise ValueError(f"{name}: nominal_hfov_deg must be within 1..179, got {self.nominal_hfov_deg}")
        self._nominal = RadarProjection.nominal(self.nominal_hfov_deg, self.nominal_aspect, self.nominal_below_m) \
            if image_features else None

    @property
    def out_features(self) -> int:
        """Features per point: 5, or 8 with the image coordinates."""
        return self.BASE_FEATURES + (len(self.IMAGE_FEATURES) if self.image_features else 0)

    @property
    def output_shapes(self) -> tuple[tuple[int, int, int], tuple[int, int]]:
        """Shapes of ``(points, mask)`` that ``__call__`` returns."""
        return (1, self.max_points, self.out_features), (1, self.max_points)

    def pool(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """The detections of one window from a radar's frames (oldest first): see :func:`pool_radar_frames`."""
        return pool_radar_frames(frames, self.stack_frames)

    def image_columns(self, xyz_m: np.ndarray, projection: RadarProjection | None = None) -> np.ndarray:
        """``(N, 3)`` float32 u, v, in_view of radar points ``(N, 3)`` in metres (see the class doc)."""
        proj = projection if projection is not None else self._nominal
        if proj is None:
            raise ValueError("RadarPreprocess: image columns need image_features or a projection")
        out = np.zeros((len(xyz_m), 3), np.float32)
        if len(xyz_m):
            uv, front, inside = proj.normalised(np.asarray(xyz_m, np.float64))
            out[:, :2] = np.where(front[:, None], np.clip(uv, -1.0, 2.0), 0.0)
            out[:, 2] = inside
        return out

    def __call__(self, points: np.ndarray, projection: RadarProjection | None = None) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(points, np.ndarray):
            raise ValueError(f"radar points must be a numpy float array (N, 6), got {type(points).__name__}")
        if not np.issubdtype(points.dtype, np.floating):
            raise ValueError(f"radar points must be float32 (N, 6) [{', '.join(self.IN_COLUMNS)}], "
                             f"got dtype {points.dtype}")
        if points.ndim != 2 or points.shape[1] != len(self.IN_COLUMNS):
            raise ValueError(f"radar points must have shape (N, 6) [{', '.join(self.IN_COLUMNS)}], "
                             f"got {points.shape}")
        pts = points[:, : self.BASE_FEATURES]
        finite = np.isfinite(pts).all(axis=1)
        if not finite.all():
            pts = pts[finite]
        # Stable sort on -snr: strongest first, and equal SNRs keep their input order, so both the
        # selection (when N > max_points) and the layout are deterministic.
        order = np.argsort(-pts[:, self._SNR_COLUMN], kind="stable")[: self.max_points]
        n = len(order)
        out = np.zeros((1, self.max_points, self.out_features), dtype=np.float32)
        mask = np.zeros((1, self.max_points), dtype=np.float32)
        # Cast to float32, then scale, straight into the padded output (no float32 copy first).
        kept = pts[order]
        np.multiply(kept, self._inv_scale, out=out[0, :n, : self.BASE_FEATURES], dtype=np.float32)
        if self.image_features:
            out[0, :n, self.BASE_FEATURES:] = self.image_columns(kept[:, :3], projection)
        mask[0, :n] = 1.0
        return out, mask

    def to_dict(self) -> dict[str, Any]:
        """Parameters as JSON-ready values (the manifest's ``preprocess`` block)."""
        d: dict[str, Any] = {"max_points": self.max_points, "scale": list(self.scale)}
        if self.stack_frames > 1:
            d["stack_frames"] = self.stack_frames
        if self.image_features:
            d.update(image_features=True, nominal_hfov_deg=self.nominal_hfov_deg,
                     nominal_aspect=self.nominal_aspect, nominal_below_m=self.nominal_below_m)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RadarPreprocess":
        """Inverse of :meth:`to_dict`; missing keys take defaults, unknown keys raise ValueError."""
        _check_keys(cls.__name__, d, cls.KEYS)
        return cls(**d)

    def __repr__(self) -> str:
        return (f"RadarPreprocess(max_points={self.max_points}, scale={self.scale}"
                + (", image_features=True" if self.image_features else "")
                + (f", stack_frames={self.stack_frames}" if self.stack_frames > 1 else "") + ")")


def _hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    # HTK mel scale: 2595 * log10(1 + f / 700).
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


class AudioPreprocess:
    """Mono audio window -> log-mel spectrogram ``(1, 1, n_mels, num_frames)``.

    The last ``window_s`` seconds of the input are used (the node hands over the window ending
    at the reference time; anything older is dropped); shorter input is left-padded with zeros
    so the most recent audio stays aligned to the end of the window. Frames of ``n_fft``
    samples every ``hop`` samples, no centre padding, so
    ``num_frames = 1 + (window_samples - n_fft) // hop`` (97 with the defaults). Each frame is
    multiplied by a periodic Hann window; power spectrum ``|rfft|^2``; an HTK-mel-scale
    triangular filterbank (unit-peak triangles, ``n_mels`` bands between ``fmin_hz`` and
    ``fmax_hz``, built once here); then ``log(mel + 1e-6)``. Samples are expected in [-1, 1].
    """

    KEYS = ("sample_rate_hz", "window_s", "n_fft", "hop", "n_mels", "fmin_hz", "fmax_hz")
    LOG_FLOOR = 1e-6

    def __init__(
        self,
        sample_rate_hz: int = WIRE_AUDIO_RATE_HZ,
        window_s: float = 1.0,
        n_fft: int = 512,
        hop: int = 160,
        n_mels: int = 64,
        fmin_hz: float = 50.0,
        fmax_hz: float = 8000.0,
    ) -> None:
        name = type(self).__name__
        self.sample_rate_hz = _positive_int(name, "sample_rate_hz", sample_rate_hz)
        self.n_fft = _positive_int(name, "n_fft", n_fft)
        self.hop = _positive_int(name, "hop", hop)
        self.n_mels = _positive_int(name, "n_mels", n_mels)
        try:
            self.window_s = float(window_s)
            self.fmin_hz = float(fmin_hz)
            self.fmax_hz = float(fmax_hz)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: window_s, fmin_hz and fmax_hz must be numbers") from None
        if not (self.window_s > 0 and math.isfinite(self.window_s)):
            raise ValueError(f"{name}: window_s must be > 0, got {window_s!r}")
        nyquist = self.sample_rate_hz / 2.0
        if not (0.0 <= self.fmin_hz < self.fmax_hz <= nyquist):
            raise ValueError(f"{name}: need 0 <= fmin_hz < fmax_hz <= sample_rate_hz/2 = {nyquist}, "
                             f"got fmin_hz={fmin_hz}, fmax_hz={fmax_hz}")
        self.window_samples = int(round(self.window_s * self.sample_rate_hz))
        if self.n_fft > self.window_samples:
            raise ValueError(f"{name}: n_fft={self.n_fft} is longer than the window "
                             f"({self.window_samples} samples = {self.window_s} s)")

        # Periodic Hann (denominator n_fft, not n_fft - 1): the standard choice for STFT
        # analysis, its overlapped copies sum to a constant.
        n = np.arange(self.n_fft, dtype=np.float64)
        self._window = (0.5 - 0.5 * np.cos(2.0 * np.pi * n / self.n_fft)).astype(np.float32)

        # Triangular filters evaluated at the exact rfft bin frequencies. Band k rises from edge k
        # to a peak of 1 at edge k+1 and falls to 0 at edge k+2, edges equally spaced in mel.
        edges_hz = _mel_to_hz(np.linspace(_hz_to_mel(self.fmin_hz), _hz_to_mel(self.fmax_hz), self.n_mels + 2))
        bins_hz = np.arange(self.n_fft // 2 + 1, dtype=np.float64) * self.sample_rate_hz / self.n_fft
        lower, centre, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
        rising = (bins_hz[None, :] - lower) / (centre - lower)
        falling = (upper - bins_hz[None, :]) / (upper - centre)
        fb = np.maximum(0.0, np.minimum(rising, falling))  # (n_mels, n_bins)
        empty = np.flatnonzero(fb.sum(axis=1) == 0.0)
        if empty.size:
            # A band narrower than the FFT bin spacing catches no bin and would be a constant
            # log(1e-6) channel forever: refuse the configuration rather than train on it.
            raise ValueError(f"{name}: mel bands {empty.tolist()} contain no FFT bin (bin spacing "
                             f"{self.sample_rate_hz / self.n_fft:.2f} Hz); use a larger n_fft, fewer n_mels "
                             f"or a higher fmin_hz")
        # Stored transposed (n_bins, n_mels) so a (T, n_bins) power matrix multiplies directly.
        self._filterbank_t = np.ascontiguousarray(fb.T.astype(np.float32))
        self._centres_hz = edges_hz[1:-1].copy()

    @property
    def num_frames(self) -> int:
        """T, the number of spectrogram frames per window."""
        return 1 + (self.window_samples - self.n_fft) // self.hop

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        """Shape of the tensor ``__call__`` returns."""
        return (1, 1, self.n_mels, self.num_frames)

    @property
    def mel_centres_hz(self) -> np.ndarray:
        """Centre frequency (Hz) of each mel band, lowest first (a copy)."""
        return self._centres_hz.copy()

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        if not isinstance(samples, np.ndarray):
            raise ValueError(f"audio samples must be a 1-D numpy float32 array, got {type(samples).__name__}")
        if not np.issubdtype(samples.dtype, np.floating):
            raise ValueError(f"audio samples must be float32 (n,) in [-1, 1], got dtype {samples.dtype}")
        if samples.ndim != 1:
            raise ValueError(f"audio samples must be 1-D (n,) mono, got shape {samples.shape}")
        x = samples.astype(np.float32, copy=False)
        w = self.window_samples
        if len(x) >= w:
            x = x[len(x) - w:]
        else:
            x = np.concatenate([np.zeros(w - len(x), dtype=np.float32), x])
        # (T, n_fft) strided view of overlapping frames, no copy until the window multiply.
        frames = np.lib.stride_tricks.sliding_window_view(x, self.n_fft)[:: self.hop][: self.num_frames]
        spec = np.fft.rfft(frames * self._window, axis=1)
        power = spec.real * spec.real  # (T, n_bins); float32 as numpy >= 2 transforms float32 in single precision
        power += spec.imag * spec.imag
        mel = power.astype(np.float32, copy=False) @ self._filterbank_t  # (T, n_mels), a fresh array
        mel += np.float32(self.LOG_FLOOR)
        np.log(mel, out=mel)
        return np.ascontiguousarray(mel.T[None, None], dtype=np.float32)

    def to_dict(self) -> dict[str, Any]:
        """Parameters as JSON-ready values (the manifest's ``preprocess`` block)."""
        return {
            "sample_rate_hz": self.sample_rate_hz,
            "window_s": self.window_s,
            "n_fft": self.n_fft,
            "hop": self.hop,
            "n_mels": self.n_mels,
            "fmin_hz": self.fmin_hz,
            "fmax_hz": self.fmax_hz,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AudioPreprocess":
        """Inverse of :meth:`to_dict`; missing keys take defaults, unknown keys raise ValueError."""
        _check_keys(cls.__name__, d, cls.KEYS)
        return cls(**d)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.to_dict().items())
        return f"AudioPreprocess({params})"


# Modality -> preprocess class, in the order of fusion_node.vocabulary.MODALITIES.
PREPROCESSORS: dict[str, type] = {
    "camera": CameraPreprocess,
    "radar": RadarPreprocess,
    "audio": AudioPreprocess,
}
