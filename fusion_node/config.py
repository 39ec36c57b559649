"""The rig configuration: one typed, validated model loaded once and passed down.

A rig config is a YAML file naming the rig, the sensors the node subscribes to, how their
streams are synchronised, and which models run. Every field is described below (and by
``fusion node --print-config-schema``); unknown keys are rejected, and every error names the
file and the key at fault.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError
from .wire import TOPICS

__all__ = ["SensorConfig", "SyncConfig", "NodeConfig", "RigConfig", "load_config", "config_from_dict", "read_yaml"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SensorConfig(_Strict):
    """One sensor the node subscribes to."""

    id: str = Field(description="sensor_id the sensor publishes under; unique within the rig",
                    min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    kind: Literal["camera", "radar", "audio"] = Field(description="modality, which is also the wire topic")
    endpoint: str = Field(description="ZeroMQ endpoint the sensor's publisher binds, e.g. "
                                      "tcp://10.0.0.5:5551 or ipc:///run/fusion/cam0")
    clock_offset_ns: int = Field(0, description="added to the sensor's t_capture_ns to put it on the rig clock "
                                                "(nanoseconds)")
    liveness_timeout_s: float | None = Field(
        None, gt=0, description="silence after which the sensor is reported dead and its modality marked "
                                "missing; default: max(1 s, 10 nominal periods of its topic)")
    queue_bound: int | None = Field(None, ge=1, le=10_000,
                                    description="per-sensor buffer length (drop-oldest, counted); "
                                                "default: the topic's queue bound")
    shm: bool | None = Field(None, description="take shared-memory payload handles from this sensor (same host "
                                               "only); default: on for ipc:// endpoints, off otherwise")

    @property
    def shm_enabled(self) -> bool:
        return self.endpoint.startswith("ipc://") if self.shm is None else self.shm

    @property
    def liveness_timeout_ns(self) -> int:
        if self.liveness_timeout_s is not None:
            return int(self.liveness_timeout_s * 1e9)
        return max(1_000_000_000, 10 * TOPICS[self.kind].period_ns)

    @property
    def buffer_len(self) -> int:
        return self.queue_bound or TOPICS[self.kind].queue_bound


class SyncConfig(_Strict):
    """How sensor streams are grouped into sets."""

    policy: Literal["reference", "approximate", "epsilon"] = Field(
        "reference", description="reference: the driver camera sets the time, others contribute their nearest "
                                 "message, released when complete or at the deadline (live default); "
                                 "approximate: message_filters ApproximateTime over the frame sensors; "
                                 "epsilon: message_filters ApproximateEpsilonTime")
    driver: str | None = Field(None, description="sensor id that sets the reference time (reference policy); "
                                                 "default: the first camera")
    tolerance_ms: float = Field(75.0, gt=0, description="largest |t - t_ref| for a non-driver frame to join a set")
    deadline_ms: float = Field(200.0, gt=0, description="release an incomplete set this long after its reference "
                                                        "time, with the missing modalities marked")
    wait_for_audio: bool = Field(True, description="hold a set until audio covers its reference time (up to one "
                                                   "chunk, 20 ms); false releases it with the audio received so "
                                                   "far (the window's last few ms may be missing, see coverage)")
    audio_window_s: float = Field(1.0, gt=0, le=10, description="length of the audio window ending at the "
                                                               "reference time")
    queue_size: int = Field(10, ge=1, le=1000, description="approximate/epsilon: per-topic queue size; "
                                                          "reference: pending reference frames kept")
    age_penalty: float = Field(0.1, ge=0, description="approximate: message_filters age penalty")
    max_interval_ms: float | None = Field(None, gt=0, description="approximate: largest spread inside a set")
    inter_message_lower_bounds_ms: dict[str, float] | None = Field(
        None, description="approximate: per sensor id, the least time between two of its messages (ms); "
                          "lets a set be published before the next message arrives")
    epsilon_ms: float = Field(50.0, gt=0, description="epsilon: largest distance from the pivot")


class NodeConfig(_Strict):
    """The fusion node process itself."""

    publish_endpoint: str = Field("tcp://127.0.0.1:5560",
                                  description="ZeroMQ endpoint the node binds for fused events and stats")
    models: str | None = Field(None, description="path to a model manifest.json (relative to the config file); "
                                                 "null runs synchronisation only, with no labels")
    rig_file: str | None = Field(None, description="rig calibration file (calibration/rig.py; relative to the "
                                                   "config file): its clock offsets and drifts replace the "
                                                   "sensors' clock_offset_ns")
    provider: Literal["auto", "tensorrt", "cuda", "cpu"] = Field(
        "auto", description="onnxruntime execution provider; auto tries TensorRT, then CUDA, then CPU")
    intra_op_threads: int = Field(1, ge=1, le=64, description="onnxruntime threads per session")
    stats_interval_s: float = Field(1.0, gt=0, description="period of the stats topic")
    max_age_s: float = Field(5.0, gt=0, description="reject messages captured longer ago than this (rig clock)")
    max_future_s: float = Field(0.5, gt=0, description="reject messages captured further ahead than this")
    shm_dir: str | None = Field(None, description="folder holding the sensors' shared-memory rings; "
                                                  "default: /dev/shm, else the temp folder")
    stall_ms: float = Field(100.0, gt=0, description="a node loop turn (receive, admit, fuse, publish) longer "
                                                     "than this is counted as a stall in the stats topic")


class RigConfig(_Strict):
    """A whole rig: its name, sensors, synchronisation and node settings."""

    rig: str = Field(description="rig name carried in every fused event", min_length=1, max_length=64)
    sensors: list[SensorConfig] = Field(min_length=1, description="the sensors the node subscribes to")
    sync: SyncConfig = Field(default_factory=SyncConfig, description="synchronisation policy")
    node: NodeConfig = Field(default_factory=NodeConfig, description="node settings")

    @model_validator(mode="after")
    def _check(self) -> "RigConfig":
        ids = [s.id for s in self.sensors]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"sensor ids must be unique, repeated: {sorted(dup)}")
        kinds = [s.kind for s in self.sensors]
        for kind in kinds:
            if kinds.count(kind) > 1:
                raise ValueError(f"one {kind} per rig (got {kinds.count(kind)}); run a rig per set of sensors")
        if self.sync.driver is not None:
            if self.sync.driver not in ids:
                raise ValueError(f"sync.driver {self.sync.driver!r} is not one of the sensors {ids}")
            if self.sensor(self.sync.driver).kind == "audio":
                raise ValueError("sync.driver must be a camera or radar: audio is cut as a window, not matched")
        if self.sync.policy == "reference" and self.driver is None:
            raise ValueError("the reference policy needs a camera (or sync.driver) to set the reference time")
        for sid, bound in (self.sync.inter_message_lower_bounds_ms or {}).items():
            if sid not in ids or self.sensor(sid).kind == "audio" or bound < 0:
                raise ValueError(f"sync.inter_message_lower_bounds_ms.{sid}: must name a camera or radar sensor "
                                 f"with a bound >= 0")
        if self.sync.policy != "reference" and sum(k != "audio" for k in kinds) < 2:
            raise ValueError(f"policy {self.sync.policy!r} needs two or more camera/radar sensors")
        return self

    @property
    def driver(self) -> SensorConfig | None:
        if self.sync.driver is not None:
            return next(s for s in self.sensors if s.id == self.sync.driver)
        return next((s for s in self.sensors if s.kind == "camera"), None)

    def sensor(self, sensor_id: str) -> SensorConfig | None:
        return next((s for s in self.sensors if s.id == sensor_id), None)


def _format_errors(source: str, err: ValidationError) -> str:
    lines = [f"{source}: invalid rig config"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; `fusion node --print-config-schema` lists every key)"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def config_from_dict(data: object, source: str = "<config>") -> RigConfig:
    """Validate a config mapping; raises ConfigError naming the source and each key at fault."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a rig config must be a YAML mapping at the top level")
    try:
        return RigConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(source, err)) from None


def read_yaml(path: str | Path, what: str = "rig config") -> object:
    """Parse a YAML file; ConfigError names the file when it cannot be read or parsed."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what} ({exc.strerror})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def load_config(path: str | Path) -> RigConfig:
    """Load and validate a rig YAML file. A relative ``node.models`` resolves against the file."""
    path = Path(path)
    cfg = config_from_dict(read_yaml(path), str(path))
    updates = {key: str((path.parent / value).resolve())
               for key, value in (("models", cfg.node.models), ("rig_file", cfg.node.rig_file))
               if value and not Path(value).is_absolute()}
    if updates:
        cfg = cfg.model_copy(update={"node": cfg.node.model_copy(update=updates)})
    return cfg


def config_schema() -> dict:
    """JSON schema of the rig config, every field described."""
    return RigConfig.model_json_schema()

