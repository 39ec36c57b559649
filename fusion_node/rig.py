"""The rig calibration file: per sensor, its intrinsics, its pose in the rig frame and its clock.

One YAML file per rig (example: ``examples/rig_calibration.yaml``). Every key is described by
the models below (``rig_schema()`` gives the JSON schema); unknown keys are rejected, and every
validation error names the file, the sensor and the key.

Conventions
-----------
* **Rig frame.** A right-handed frame in metres, chosen per rig. By default (and this is what
  ``fusion calibrate extrinsics`` assumes when the camera has no extrinsics yet) it is the
  optical frame of the reference camera: x right, y down, z forward along the optical axis.
* **Extrinsics** give a sensor's pose in the rig frame as the sensor-to-rig transform
  ``p_rig = R @ p_sensor + t``, with ``R`` stored as a rotation vector (axis times angle, in
  radians, OpenCV's Rodrigues convention) under ``rotation_rvec_rad`` and ``t`` under
  ``translation_m``. Sensor frames: camera optical frame (x right, y down, z forward); TI radar
  frame (x right, y forward along boresight, z up); microphone: its capsule position (rotation
  unused).
* **Clock.** ``t_rig_ns = t_sensor_ns + clock_offset_ns + clock_drift_ppm * 1e-6 *
  (t_sensor_ns - clock_epoch_ns)``: the offset is added to a sensor's timestamps to put them on
  the rig clock (the same sign as ``clock_offset_ns`` in the node's rig config), and a positive
  drift means the sensor clock runs slow against the rig clock.
* **Provenance.** Each of intrinsics, extrinsics and clock says how it was obtained: when,
  by which method, with which residual (and its unit) and, for estimates from data, a
  confidence in [0, 1].
"""

from __future__ import annotations

import datetime as _dt
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from fusion_node.errors import ConfigError

__all__ = [
    "Provenance",
    "Distortion",
    "Intrinsics",
    "Extrinsics",
    "Clock",
    "SensorCalibration",
    "Rig",
    "load_rig",
    "save_rig",
    "rig_from_dict",
    "update_rig_sensor",
    "rig_schema",
    "now_iso",
    "DEFAULT_RIG_FRAME",
]

DEFAULT_RIG_FRAME = ("optical frame of the reference camera: x right, y down, z forward along the "
                     "optical axis, metres")


def now_iso() -> str:
    """The current UTC time as an ISO 8601 string with seconds, for provenance dates."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Provenance(_Strict):
    """How a calibrated quantity was obtained."""

    date: str = Field(description="when it was obtained: ISO 8601 date or date-time, e.g. 2024-05-01 or "
                                  "2024-05-01T14:03:00+00:00")
    method: str = Field(min_length=1, description="how it was obtained, in words: tool, target, data used, e.g. "
                                                  "'checkerboard 9x6, 25 mm squares, 14 views, cv2.calibrateCamera'")
    residual: float | None = Field(None, ge=0, description="size of what the fit left unexplained, in "
                                                           "residual_unit (e.g. RMS reprojection error); "
                                                           "null when not measured")
    residual_unit: str | None = Field(None, min_length=1, max_length=16,
                                      description="unit of residual, e.g. px, ms, m, deg")
    confidence: float | None = Field(None, ge=0, le=1, description="for estimates from data: how much to "
                                                                   "trust it, 0 (none) to 1; null when not "
                                                                   "applicable")
    details: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="further figures of the fit, e.g. views used, inliers, outliers")

    @field_validator("date", mode="before")
    @classmethod
    def _date(cls, value: Any) -> Any:
        if isinstance(value, (_dt.date, _dt.datetime)):  # YAML parses unquoted dates
            return value.isoformat()
        if isinstance(value, str):
            try:
                _dt.datetime.fromisoformat(value)
            except ValueError:
                raise ValueError(f"not an ISO 8601 date or date-time: {value!r} (write e.g. 2024-05-01 "
                                 f"or 2024-05-01T14:03:00+00:00)") from None
        return value

    @model_validator(mode="after")
    def _unit(self) -> "Provenance":
        if self.residual is not None and self.residual_unit is None:
            raise ValueError("residual_unit is required when residual is given (e.g. px, ms, m)")
        return self


class Distortion(_Strict):
    """Brown-Conrady lens distortion, OpenCV's 5-coefficient model (k1, k2, p1, p2, k3)."""

    k1: float = Field(0.0, description="radial distortion, r^2 term (dimensionless, normalised image coordinates)")
    k2: float = Field(0.0, description="radial distortion, r^4 term")
    p1: float = Field(0.0, description="tangential distortion, first coefficient")
    p2: float = Field(0.0, description="tangential distortion, second coefficient")
    k3: float = Field(0.0, description="radial distortion, r^6 term")


class Intrinsics(_Strict):
    """A camera's pinhole intrinsics and lens distortion, for one image size."""

    width_px: int = Field(ge=1, le=16384, description="image width the intrinsics apply to, pixels")
    height_px: int = Field(ge=1, le=16384, description="image height the intrinsics apply to, pixels")
    fx_px: float = Field(gt=0, description="focal length along x, pixels")
    fy_px: float = Field(gt=0, description="focal length along y, pixels")
    cx_px: float = Field(description="principal point x, pixels (0 = centre of the leftmost pixel column)")
    cy_px: float = Field(description="principal point y, pixels (0 = centre of the top pixel row)")
    distortion: Distortion = Field(default_factory=Distortion, description="lens distortion coefficients")
    provenance: Provenance | None = Field(None, description="how the intrinsics were obtained")

    @property
    def camera_matrix(self) -> np.ndarray:
        """The 3x3 camera matrix K."""
        return np.array([[self.fx_px, 0.0, self.cx_px], [0.0, self.fy_px, self.cy_px], [0.0, 0.0, 1.0]])

    @property
    def dist_coeffs(self) -> np.ndarray:
        """Distortion coefficients in OpenCV order (k1, k2, p1, p2, k3)."""
        d = self.distortion
        return np.array([d.k1, d.k2, d.p1, d.p2, d.k3], dtype=np.float64)

    @property
    def size(self) -> tuple[int, int]:
        """Image size as (width, height)."""
        return self.width_px, self.height_px


class Extrinsics(_Strict):
    """A sensor's pose in the rig frame: the sensor-to-rig transform p_rig = R p_sensor + t."""

    rotation_rvec_rad: tuple[float, float, float] = Field(
        description="rotation R of the sensor-to-rig transform as a rotation vector (unit axis times angle, "
                    "radians; OpenCV Rodrigues convention)")
    translation_m: tuple[float, float, float] = Field(
        description="translation t of the sensor-to-rig transform: the sensor origin in the rig frame, metres")
    provenance: Provenance | None = Field(None, description="how the extrinsics were obtained")


class Clock(_Strict):
    """How a sensor's timestamps map onto the rig clock."""

    clock_offset_ns: int = Field(0, description="added to the sensor's timestamps to put them on the rig clock, "
                                                "nanoseconds")
    clock_drift_ppm: float = Field(0.0, ge=-10_000, le=10_000,
                                   description="growth of the rig-minus-sensor offset per second of sensor time, "
                                               "microseconds per second (ppm); positive = sensor clock slow")
    clock_epoch_ns: int = Field(0, description="sensor time at which clock_offset_ns was measured; the drift "
                                               "term counts from here, nanoseconds")
    provenance: Provenance | None = Field(None, description="how the offset (and drift) were obtained")

    def to_rig_ns(self, t_sensor_ns: int | np.ndarray) -> int | np.ndarray:
        """Map sensor timestamps (ns) to the rig clock."""
        if isinstance(t_sensor_ns, np.ndarray):
            drift = np.round(self.clock_drift_ppm * 1e-6 * (t_sensor_ns - self.clock_epoch_ns).astype(np.float64))
            return t_sensor_ns + self.clock_offset_ns + drift.astype(np.int64)
        return int(t_sensor_ns + self.clock_offset_ns
                   + round(self.clock_drift_ppm * 1e-6 * (t_sensor_ns - self.clock_epoch_ns)))


class SensorCalibration(_Strict):
    """Everything calibrated about one sensor."""

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$",
                    description="sensor_id, as in the node's rig config and on the wire")
    kind: Literal["camera", "radar", "audio"] = Field(description="modality: camera, radar or audio")
    intrinsics: Intrinsics | None = Field(None, description="cameras only: pinhole intrinsics and distortion; "
                                                            "null until calibrated")
    extrinsics: Extrinsics | None = Field(None, description="pose in the rig frame; null until calibrated")
    clock: Clock = Field(default_factory=Clock, description="mapping of the sensor's timestamps to the rig clock")

    @model_validator(mode="after")
    def _kind(self) -> "SensorCalibration":
        if self.intrinsics is not None and self.kind != "camera":
            raise ValueError(f"key 'intrinsics': only cameras have intrinsics, this sensor is a {self.kind} "
                             f"(remove the key, or set kind: camera)")
        return self


class Rig(_Strict):
    """A rig's calibration: its name, its frame and its sensors."""

    rig: str = Field(min_length=1, max_length=64, description="rig name (as in the node's rig config)")
    rig_frame: str = Field(DEFAULT_RIG_FRAME, min_length=1,
                           description="what the rig frame is, in words (axes, origin, unit)")
    sensors: list[SensorCalibration] = Field(min_length=1, description="the calibrated sensors")

    @model_validator(mode="after")
    def _unique(self) -> "Rig":
        ids = [s.id for s in self.sensors]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"sensor ids must be unique, repeated: {dup}")
        return self

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.sensors]

    def has(self, sensor_id: str) -> bool:
        return sensor_id in self.ids

    def sensor(self, sensor_id: str, kind: str | None = None) -> SensorCalibration:
        """The sensor named ``sensor_id``; ConfigError naming the rig and the known ids if absent."""
        for s in self.sensors:
            if s.id == sensor_id:
                if kind is not None and s.kind != kind:
                    raise ConfigError(f"rig {self.rig!r}: sensor {sensor_id!r} is a {s.kind}, expected a {kind}")
                return s
        raise ConfigError(f"rig {self.rig!r}: no sensor {sensor_id!r} (sensors: {', '.join(self.ids)})")

    def with_sensor(self, sensor: SensorCalibration) -> "Rig":
        """A copy with ``sensor`` replacing the entry of the same id (or appended); others kept."""
        sensors = list(self.sensors)
        for i, s in enumerate(sensors):
            if s.id == sensor.id:
                sensors[i] = sensor
                break
        else:
            sensors.append(sensor)
        return Rig.model_validate({**self.model_dump(), "sensors": [s.model_dump() for s in sensors]})


def _format_errors(source: str, data: Any, errors: list[dict]) -> str:
    lines = [f"{source}: invalid rig calibration file"]
    sensors = data.get("sensors") if isinstance(data, dict) else None
    for e in errors:
        loc = list(e["loc"])
        where = ""
        if len(loc) >= 2 and loc[0] == "sensors" and isinstance(loc[1], int):
            index = loc[1]
            sid = None
            if isinstance(sensors, list) and index < len(sensors) and isinstance(sensors[index], dict):
                sid = sensors[index].get("id")
            where = f"sensor {sid!r} (sensors[{index}])" if sid is not None else f"sensors[{index}]"
            loc = loc[2:]
        key = ".".join(str(p) for p in loc)
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; `fusion_node.rig.rig_schema()` lists every key)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        elif e["type"] not in ("missing", "extra_forbidden") and isinstance(e.get("input"), (str, int, float)):
            msg += f" (got {e['input']!r})"
        parts = [p for p in (where, f"key {key!r}" if key else "") if p]
        lines.append(f"  {', '.join(parts) or '(top level)'}: {msg}")
    return "\n".join(lines)


def rig_from_dict(data: Any, source: str = "<rig>") -> Rig:
    """Validate a rig mapping; ConfigError names the source, the sensor and each key at fault."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a rig calibration file must be a YAML mapping at the top level "
                          f"(see examples/rig_calibration.yaml)")
    try:
        return Rig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(source, data, err.errors())) from None


def load_rig(path: str | Path) -> Rig:
    """Load and validate a rig calibration YAML file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such rig calibration file (start from examples/rig_calibration.yaml, or "
                          f"let `fusion calibrate intrinsics --out {path}` create it)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read rig calibration file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return rig_from_dict(data, str(path))


class _Dumper(yaml.SafeDumper):
    """Block style, except short lists of numbers (vectors) and the distortion map, kept on one line."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


def _represent_dict(dumper: yaml.SafeDumper, data: dict) -> yaml.Node:
    flow = set(data) == {"k1", "k2", "p1", "p2", "k3"}
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=flow)


_Dumper.add_representer(list, _represent_list)
_Dumper.add_representer(dict, _represent_dict)

_HEADER = ("# Rig calibration (schema: calibration/rig.py; conventions: docs/calibration.md).\n"
           "# Written by `fusion calibrate`; entries of sensors not being calibrated are kept as they were.\n")


def save_rig(rig: Rig, path: str | Path, *, merge: bool = False) -> Path:
    """Write ``rig`` to ``path`` as YAML (atomically: a temporary file, then a rename).

    Round-trips with :func:`load_rig`. With ``merge``, sensors that the file at ``path`` holds
    but ``rig`` does not are kept (after ``rig``'s own); without, the file becomes exactly ``rig``.
    Comments of a hand-written file are not preserved. To change one sensor's entries in place,
    see :func:`update_rig_sensor`.
    """
    path = Path(path)
    if merge and path.exists():
        on_disk = load_rig(path)
        for s in on_disk.sensors:
            if not rig.has(s.id):
                rig = rig.with_sensor(s)
    data = rig.model_dump(mode="json", exclude_none=True)
    for s in data["sensors"]:
        for key in ("intrinsics", "extrinsics"):
            prov = s.get(key, {}).get("provenance") if isinstance(s.get(key), dict) else None
            if prov is not None and not prov.get("details"):
                prov.pop("details", None)
        prov = s["clock"].get("provenance")
        if prov is not None and not prov.get("details"):
            prov.pop("details", None)
    text = _HEADER + yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        mode = path.stat().st_mode & 0o777
    else:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


_UNSET: Any = object()


def update_rig_sensor(path: str | Path, sensor_id: str, kind: str, *, intrinsics: Intrinsics | None = _UNSET,
                      extrinsics: Extrinsics | None = _UNSET, clock: Clock | None = _UNSET,
                      rig_name: str | None = None) -> Rig:
    """Set some of one sensor's entries in the rig file at ``path`` and save it.

    The file is created (rig named ``rig_name`` or after the file) when it does not exist; the
    sensor is added when absent. Entries not passed, and all other sensors, are kept unchanged.
    Returns the rig as written.
    """
    path = Path(path)
    if path.exists():
        rig = load_rig(path)
    else:
        rig = None
    updates: dict[str, Any] = {}
    if intrinsics is not _UNSET:
        updates["intrinsics"] = intrinsics
    if extrinsics is not _UNSET:
        updates["extrinsics"] = extrinsics
    if clock is not _UNSET:
        updates["clock"] = clock if clock is not None else Clock()
    if rig is not None and rig.has(sensor_id):
        current = rig.sensor(sensor_id)
        if current.kind != kind:
            raise ConfigError(f"{path}: sensor {sensor_id!r} is a {current.kind} in this file, not a {kind} "
                              f"(pick another --sensor-id, or fix key 'kind')")
        sensor = current.model_copy(update=updates)
    else:
        sensor = SensorCalibration(id=sensor_id, kind=kind)
        sensor = sensor.model_copy(update=updates)
    try:
        sensor = SensorCalibration.model_validate(sensor.model_dump())
    except ValidationError as err:
        errors = [{**e, "loc": ("sensors", 0, *e["loc"])} for e in err.errors()]
        raise ConfigError(_format_errors(str(path), {"sensors": [{"id": sensor_id}]}, errors)) from None
    if rig is None:
        name = rig_name or (path.stem.replace("_", "-") or "rig")
        rig = Rig(rig=name[:64], sensors=[sensor])
    else:
        rig = rig.with_sensor(sensor)
    save_rig(rig, path)
    return rig


def rig_schema() -> dict:
    """JSON schema of the rig calibration file, every key described."""
    return Rig.model_json_schema()
