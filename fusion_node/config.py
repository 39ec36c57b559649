"""The rig configuration: one typed, validated model loaded once and passed down.

A config file is YAML in one of two forms, both described key by key by
``fusion node --print-config-schema``:

* **one rig**: ``rig``, ``sensors``, ``sync``, ``calibration_file`` and ``node`` at the top level;
* **several rigs in one node**: a ``rigs:`` list of rigs (each without a ``node`` block) and one
  top-level ``node`` block they share (one process, one publish socket, one model runtime)::

      rigs:
        - rig: bay-1
          calibration_file: bay-1-calibration.yaml
          sensors: [{id: cam1, kind: camera, endpoint: ipc:///run/fusion/cam1}, ...]
        - rig: bay-2
          sensors: [{id: cam2, kind: camera, endpoint: ipc:///run/fusion/cam2}, ...]
      node:
        publish_endpoint: tcp://127.0.0.1:5560
        models: models/manifest.json

Unknown keys are rejected and every error names the file and the key at fault. File paths in a
config (``calibration_file``, ``node.models``, ``node.batched_models``) are resolved against the
config file's folder while it is validated. A sensor's clock (offset and drift against the rig
clock) is not a config key: it lives in the rig calibration file (:mod:`fusion_node.rig`) that
``calibration_file`` names, the one place clocks are modelled.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import ConfigError
from .vocabulary import FRAME_MODALITIES, Modality
from .wire import TOPICS

__all__ = ["SensorConfig", "SyncConfig", "NodeConfig", "RigSpec", "RigConfig", "MultiRigConfig", "load_config",
           "load_rigs", "config_from_dict", "rigs_from_dict", "read_yaml", "config_schema", "LifecycleConfig",
           "EventLogConfig", "LabelsConfig", "AlertsConfig", "FaultsConfig", "MqttTlsConfig", "MqttConfig",
           "SinksConfig", "endpoint_problem"]

# ZeroMQ transports an endpoint may name; without one ZeroMQ answers only "Invalid argument".
_ENDPOINT = re.compile(r"^(tcp|ipc|inproc|pgm|epgm|udp|ws|wss|vmci)://\S+$")


def endpoint_problem(endpoint: str) -> str | None:
    """Why ``endpoint`` is no ZeroMQ endpoint (one line), or None when it is one."""
    if _ENDPOINT.match(endpoint):
        return None
    hint = f"; did you mean tcp://{endpoint}?" if "://" not in endpoint and ":" in endpoint else ""
    return (f"{endpoint!r} is not a ZeroMQ endpoint: it needs a transport, as in tcp://HOST:PORT or "
            f"ipc:///PATH{hint}")


def _valid_endpoint(value: str) -> str:
    problem = endpoint_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _resolve(value: str | None, info: ValidationInfo) -> str | None:
    """A relative path in a config file is relative to that file's folder."""
    base = (info.context or {}).get("base_dir")
    if value is None or base is None or Path(value).is_absolute():
        return value
    return str((Path(base) / value).resolve())


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SensorConfig(_Strict):
    """One sensor the node subscribes to."""

    id: str = Field(description="sensor_id the sensor publishes under; unique within the rig",
                    min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    kind: Modality = Field(description="modality, which is also the wire topic")
    endpoint: str = Field(description="ZeroMQ endpoint the sensor's publisher binds, e.g. "
                                      "tcp://10.0.0.5:5551 or ipc:///run/fusion/cam0")
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
    public_key_file: str | None = Field(
        None, description="the sensor's CURVE public key (its NAME.key from `fusion keys new`, relative to the "
                          "config file): the node connects with CURVE and refuses a publisher that cannot prove "
                          "this key; needs node.secret_key_file. Required for a network endpoint unless "
                          "node.insecure")

    @field_validator("public_key_file")
    @classmethod
    def _key_relative_to_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _resolve(value, info)

    @field_validator("endpoint")
    @classmethod
    def _endpoint_has_a_transport(cls, value: str) -> str:
        return _valid_endpoint(value)

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
                                 "epsilon: message_filters ApproximateEpsilonTime. With one frame sensor each of "
                                 "its messages is a set; with none (microphones only) a set every audio_hop_s")
    driver: str | None = Field(None, description="sensor id that sets the reference time (reference policy); "
                                                 "default: the first camera, else the first radar")
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
    audio_hop_s: float | None = Field(None, gt=0, le=10, description="a rig with no camera or radar (audio only): "
                                                                     "a set every this much captured audio; "
                                                                     "default: a quarter of the audio window (the "
                                                                     "model's, else audio_window_s)")


class FaultsConfig(_Strict):
    """Detection of faulty but alive sensors (fusion_node.faults): thresholds per fault kind."""

    enabled: bool = Field(True, description="watch every sensor for sensor_fault:<id>:<kind>; a faulty sensor's "
                                            "modality is left out of the fusion while its fault lasts")
    window_s: float = Field(1.0, gt=0, le=2.0, description="capture time over which each kind's symptoms are "
                                                           "averaged; a fault is raised about raise_fraction x "
                                                           "this after its onset")
    raise_fraction: float = Field(0.9, gt=0, le=1, description="share of the window's messages showing a symptom "
                                                               "that raises the fault")
    clear_fraction: float = Field(0.5, ge=0, lt=1, description="the fault clears when that share falls below this "
                                                              "(hysteresis); for clipped, below this times "
                                                              "audio_clipped_share")
    camera_covered_std_max: float = Field(
        5.0, ge=0, description="covered: largest spatial standard deviation (grey levels 0-255, frame sampled "
                               "about 80 px wide); the real videos measured 10 or more, the street video darkened and blurred "
                               "to a covered lens 1.5 at most")
    camera_covered_mean_max: float = Field(
        100.0, ge=0, le=255, description="covered: largest mean grey level; a uniform bright frame (glare, a lit "
                                         "wall) is not a covered lens")
    camera_frozen_changed_max: float = Field(
        0.002, ge=0, lt=1, description="frozen: largest share of sampled pixels that changed at all since the "
                                       "previous frame (a burnt-in clock may tick on a frozen picture)")
    audio_silent_rms_max: float = Field(
        3.2e-5, gt=0, description="silent: largest RMS of a chunk (full scale 1.0; 3.2e-5 is -90 dBFS, under "
                                  "any microphone's noise floor and about one 16-bit step)")
    audio_clip_level: float = Field(0.99, gt=0, le=1, description="clipped: a sample at or beyond this |value| is "
                                                                  "at full scale")
    audio_clipped_share: float = Field(
        0.1, gt=0, le=1, description="clipped: share of the window's samples at full scale that raises the fault "
                                     "(100 ms of a 1 s window; real recordings measured 0.001 at most, so a short "
                                     "clipped transient does not raise it)")
    audio_stuck_history_s: float = Field(0.5, ge=0, le=5, description="stuck: a chunk repeating exactly any stretch "
                                                                      "of this much past audio is stuck (a driver "
                                                                      "replaying its buffer)")

    @model_validator(mode="after")
    def _levels(self) -> "FaultsConfig":
        if self.clear_fraction >= self.raise_fraction:
            raise ValueError("clear_fraction must be below raise_fraction (hysteresis)")
        return self


class NodeConfig(_Strict):
    """The fusion node process itself."""

    publish_endpoint: str = Field("tcp://127.0.0.1:5560",
                                  description="ZeroMQ endpoint the node binds for fused events and stats")
    models: str | None = Field(None, description="path to a model manifest.json (relative to the config file); "
                                                 "null runs synchronisation only, with no labels")
    provider: Literal["auto", "tensorrt", "cuda", "cpu"] = Field(
        "auto", description="onnxruntime execution provider; auto tries TensorRT, then CUDA, then CPU")
    io_binding: bool = Field(False, description="with provider cuda or tensorrt: run the GPU runtime (inputs and "
                                                "outputs in fixed device buffers, CUDA graphs, TensorRT engine "
                                                "cache); falls back to the plain runtime when no GPU is usable")
    batched_models: str | None = Field(None, description="with io_binding: a batch-N copy of the model bundle "
                                                         "(manifest.json, relative to the config file) for "
                                                         "encoding the sets of several rigs in one call")
    intra_op_threads: int = Field(1, ge=1, le=64, description="onnxruntime threads per session")
    stats_interval_s: float = Field(1.0, gt=0, description="period of the stats topic")
    max_age_s: float = Field(5.0, gt=0, description="reject messages captured longer ago than this (rig clock)")
    max_future_s: float = Field(0.5, gt=0, description="reject messages captured further ahead than this")
    shm_dir: str | None = Field(None, description="folder holding the sensors' shared-memory rings; "
                                                  "default: /dev/shm, else the temp folder")
    stall_ms: float = Field(100.0, gt=0, description="a node loop turn (receive, admit, fuse, publish) longer "
                                                     "than this is counted as a stall in the stats topic")
    secret_key_file: str | None = Field(
        None, description="the node's CURVE key pair (NAME.key_secret from `fusion keys new`, mode 0600, relative "
                          "to the config file): its client key towards the sensors with a public_key_file, and "
                          "its server key on publish_endpoint when allow_subscribers is set")
    allow_subscribers: list[str] | None = Field(
        None, min_length=1, description="public key files (NAME.key) or folders of them: the only consumers "
                                        "allowed to subscribe to publish_endpoint, which then speaks CURVE; "
                                        "required for a network publish_endpoint unless insecure")
    insecure: bool = Field(False, description="allow plain (unencrypted, unauthenticated) tcp endpoints that are "
                                              "reachable from the network; ipc:// and loopback tcp are always "
                                              "allowed plain")
    metrics_port: int | None = Field(None, ge=0, le=65535, description="serve Prometheus metrics on this TCP port "
                                                                      "at /metrics (0: any free port, printed in "
                                                                      "the ready line); null: no metrics server")
    metrics_address: str = Field("127.0.0.1", description="address the metrics server binds (0.0.0.0 for a "
                                                          "Prometheus on another host)")

    @field_validator("publish_endpoint")
    @classmethod
    def _publish_endpoint_has_a_transport(cls, value: str) -> str:
        return _valid_endpoint(value)

    @field_validator("models", "batched_models")
    @classmethod
    def _relative_to_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _resolve(value, info)

    @field_validator("secret_key_file", "allow_subscribers")
    @classmethod
    def _keys_relative_to_file(cls, value, info: ValidationInfo):
        return [_resolve(v, info) for v in value] if isinstance(value, list) else _resolve(value, info)


class LifecycleConfig(_Strict):
    """How per-set fused records become occurrences with a start, updates and an end (fusion_node.lifecycle)."""

    min_duration_s: float = Field(0.5, ge=0, description="a label must hold this long (reference time, gaps within "
                                                         "max_gap_s) before its occurrence starts; 0: at once")
    hysteresis: float = Field(0.1, ge=0, le=1, description="a started occurrence goes on while its score stays "
                                                           "above the label's threshold minus this")
    max_gap_s: float = Field(1.0, gt=0, description="longest stretch of reference time without the label that "
                                                    "still counts as one occurrence; longer and it ends")
    end_timeout_s: float = Field(3.0, gt=0, description="node time without any fused record (or without an "
                                                        "alert's condition) after which open occurrences end")
    update_interval_s: float = Field(1.0, ge=0, description="least time between two updates of one occurrence")
    update_score_delta: float = Field(0.05, ge=0, le=1, description="a rise of the top score by this much is a "
                                                                    "material change worth an update")
    drift_alert_ppm: float = Field(500.0, gt=0, description="a tracked clock drift beyond this raises clock_drift")
    sensor_grace_s: float = Field(10.0, ge=0, description="a sensor never heard from raises sensor_failed this "
                                                          "long after the node started (in records: after the rig's "
                                                          "first message, and at least its liveness timeout); only "
                                                          "then does a driver that never started hand the reference "
                                                          "over")
    snapshots: bool = Field(True, description="keep a JPEG of the camera frame at each occurrence's top score")
    snapshot_quality: int = Field(85, ge=1, le=100, description="JPEG quality of snapshots")


class LabelsConfig(_Strict):
    """How per-set probabilities become an event's labels: smoothing over sets, with hysteresis (fusion_node.labels)."""

    smoothing: bool = Field(True, description="smooth and hold labels; false: a label is every class whose "
                                              "probability in this one set reaches its threshold")
    smoothing_sets: int = Field(5, ge=1, le=100, description="a class's smoothed probability is the mean of its "
                                                             "last this many sets (1: no averaging)")
    release_ratio: float = Field(0.8, gt=0, le=1, description="a label that is on stays on until its smoothed "
                                                              "probability falls below threshold x this")
    min_on_sets: int = Field(5, ge=1, le=1000, description="a label that turned on stays on for at least this "
                                                           "many sets")


class AlertsConfig(_Strict):
    """When the cross-modal alerts fire: ``drift`` (fusion_node.drift) and ``modalities_disagree`` (fusion_node.alerts)."""

    drift_fraction: float = Field(0.15, gt=0, lt=1, description="drift: a bound pair's cross-modal similarity "
                                                                "fallen by this fraction of its baseline")
    drift_sustain_s: float = Field(5.0, ge=0, description="drift: the fall must hold this long (reference time) "
                                                          "before the alert fires")
    drift_warmup_sets: int = Field(50, ge=1, le=100_000, description="drift: sets with both modalities of a pair "
                                                                     "present whose median similarity is the "
                                                                     "pair's baseline")
    drift_clear_s: float = Field(2.0, ge=0, description="drift: the similarity must be back above half the fall "
                                                        "for this long before the alert clears")
    disagree_sustain_s: float = Field(1.5, ge=0, description="modalities_disagree: consistency below the model's "
                                                             "threshold, with two or more modalities present, "
                                                             "for this long (reference time) before it fires")
    disagree_clear_s: float = Field(1.0, ge=0, description="modalities_disagree: the modalities must agree again "
                                                           "for this long before the alert clears")


class EventLogConfig(_Strict):
    """The durable log of lifecycle events and alerts (SQLite, WAL; fusion_node.eventlog)."""

    path: str | None = Field(None, description="SQLite file (relative to the config file); null: "
                                               "<cache>/events/<first rig>.sqlite")
    max_age_days: float = Field(30.0, gt=0, description="events older than this are deleted")
    max_mb: float = Field(256.0, gt=0, description="oldest events (and their snapshots) are deleted while the "
                                                   "log is larger than this")

    @field_validator("path")
    @classmethod
    def _relative_to_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _resolve(value, info)


class MqttTlsConfig(_Strict):
    """TLS towards the MQTT broker."""

    ca_file: str | None = Field(None, description="CA certificate file; null: the system's trust store")
    cert_file: str | None = Field(None, description="client certificate (mutual TLS)")
    key_file: str | None = Field(None, description="client key (mutual TLS)")
    insecure: bool = Field(False, description="skip the broker hostname check (testing only)")

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _relative_to_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _resolve(value, info)


class MqttConfig(_Strict):
    """The MQTT sink: lifecycle events, states, availability and Home Assistant discovery."""

    url: str = Field(description="broker URL: mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (TLS); user and password "
                                 "may be given as mqtt://USER:PASSWORD@HOST:PORT", pattern=r"^mqtts?://")
    username: str | None = Field(None, description="user name (overrides the URL's)")
    password: str | None = Field(None, description="password (overrides the URL's)")
    password_env: str | None = Field(None, description="name of an environment variable holding the password")
    tls: MqttTlsConfig | None = Field(None, description="TLS settings (mqtts:// turns TLS on with defaults)")
    topic_prefix: str = Field("fusion", min_length=1, pattern=r"^[^#+]+$", description="first level of every topic")
    qos: Literal[0, 1, 2] = Field(1, description="QoS of events and alerts (1: at least once, duplicates carry "
                                                 "the same seq)")
    client_id: str | None = Field(None, description="MQTT client id; default fusion-<prefix>-<first rig>")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive")
    queue_size: int = Field(1000, ge=1, le=1_000_000, description="events held while the broker is unreachable; "
                                                                 "beyond it the oldest are dropped (counted)")
    discovery: bool = Field(True, description="publish Home Assistant MQTT discovery configs")
    discovery_prefix: str = Field("homeassistant", min_length=1, description="Home Assistant discovery prefix")
    stats_interval_s: float = Field(10.0, gt=0, description="period of <prefix>/<rig>/stats")


class SinksConfig(_Strict):
    """Where lifecycle events go besides the node's own socket and log."""

    mqtt: MqttConfig | None = Field(None, description="MQTT broker (null: no MQTT)")


class RigSpec(_Strict):
    """One rig: its name, sensors, synchronisation and calibration file (an entry of ``rigs:``)."""

    rig: str = Field(description="rig name carried in every fused event", min_length=1, max_length=64)
    sensors: list[SensorConfig] = Field(min_length=1, description="the sensors the node subscribes to")
    sync: SyncConfig = Field(default_factory=SyncConfig, description="synchronisation policy")
    faults: FaultsConfig = Field(default_factory=FaultsConfig, description="faulty-sensor detection")
    calibration_file: str | None = Field(
        None, description="the rig calibration file (relative to the config file; `fusion calibrate` writes it): "
                          "each sensor's clock offset and drift against the rig clock, intrinsics and extrinsics; "
                          "null: every sensor's clock is the rig clock")

    @field_validator("calibration_file")
    @classmethod
    def _relative_to_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _resolve(value, info)

    @model_validator(mode="after")
    def _check(self) -> "RigSpec":
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
        for sid, bound in (self.sync.inter_message_lower_bounds_ms or {}).items():
            if sid not in ids or self.sensor(sid).kind == "audio" or bound < 0:
                raise ValueError(f"sync.inter_message_lower_bounds_ms.{sid}: must name a camera or radar sensor "
                                 f"with a bound >= 0")
        return self

    @property
    def driver(self) -> SensorConfig | None:
        """The sensor setting reference times: sync.driver, else the first camera, else the first radar;
        None for a rig of microphones only, whose sets are cut on the audio's own clock."""
        if self.sync.driver is not None:
            return next(s for s in self.sensors if s.id == self.sync.driver)
        for kind in FRAME_MODALITIES:
            found = next((s for s in self.sensors if s.kind == kind), None)
            if found is not None:
                return found
        return None

    def sensor(self, sensor_id: str) -> SensorConfig | None:
        return next((s for s in self.sensors if s.id == sensor_id), None)


class RigConfig(RigSpec):
    """A whole rig with the settings of the node that serves it: what one fusion core runs on."""

    node: NodeConfig = Field(default_factory=NodeConfig, description="node settings")
    lifecycle: LifecycleConfig = Field(default_factory=LifecycleConfig, description="event lifecycle")
    labels: LabelsConfig = Field(default_factory=LabelsConfig, description="label smoothing and hysteresis")
    alerts: AlertsConfig = Field(default_factory=AlertsConfig, description="drift and disagreement alerts")
    event_log: EventLogConfig = Field(default_factory=EventLogConfig, description="durable event log")
    sinks: SinksConfig = Field(default_factory=SinksConfig, description="event sinks (MQTT)")


class MultiRigConfig(_Strict):
    """Several rigs served by one node process: a ``rigs:`` list and the node settings they share."""

    rigs: list[RigSpec] = Field(min_length=1, description="the rigs this node serves; each without a node block")
    node: NodeConfig = Field(default_factory=NodeConfig, description="node settings shared by every rig")
    lifecycle: LifecycleConfig = Field(default_factory=LifecycleConfig, description="event lifecycle, every rig")
    labels: LabelsConfig = Field(default_factory=LabelsConfig, description="label smoothing and hysteresis, "
                                                                           "every rig (state kept per rig)")
    alerts: AlertsConfig = Field(default_factory=AlertsConfig, description="drift and disagreement alerts, every "
                                                                           "rig (state kept per rig)")
    event_log: EventLogConfig = Field(default_factory=EventLogConfig, description="one durable log for every rig")
    sinks: SinksConfig = Field(default_factory=SinksConfig, description="event sinks (MQTT), every rig")

    @model_validator(mode="after")
    def _check(self) -> "MultiRigConfig":
        for what, values in (("rig names", [r.rig for r in self.rigs]),
                             ("sensor ids", [s.id for r in self.rigs for s in r.sensors]),
                             ("sensor endpoints", [s.endpoint for r in self.rigs for s in r.sensors])):
            dup = sorted({v for v in values if values.count(v) > 1})
            if dup:
                raise ValueError(f"{what} must be unique across rigs (messages are routed by sensor_id), "
                                 f"repeated: {dup}")
        return self

    def rig_configs(self) -> list[RigConfig]:
        """One :class:`RigConfig` per rig, each carrying the shared node settings."""
        return [RigConfig(**dict(r), node=self.node, lifecycle=self.lifecycle, labels=self.labels,
                          alerts=self.alerts, event_log=self.event_log, sinks=self.sinks) for r in self.rigs]


def _format_errors(source: str, err: ValidationError) -> str:
    lines = [f"{source}: invalid rig config"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; `fusion node --print-config-schema` lists every key)"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def _validate(model: type[BaseModel], data: object, source: str, base_dir: Path | None) -> BaseModel:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a rig config must be a YAML mapping at the top level")
    try:
        return model.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as err:
        raise ConfigError(_format_errors(source, err)) from None


def config_from_dict(data: object, source: str = "<config>", base_dir: Path | None = None) -> RigConfig:
    """Validate a one-rig config mapping; raises ConfigError naming the source and each key at fault."""
    if isinstance(data, dict) and "rigs" in data:
        raise ConfigError(f"{source}: this is a several-rig config (rigs:); load it with load_rigs")
    return _validate(RigConfig, data, source, base_dir)


def rigs_from_dict(data: object, source: str = "<config>", base_dir: Path | None = None) -> list[RigConfig]:
    """Validate either form; one :class:`RigConfig` per rig (a list of one for the one-rig form)."""
    if isinstance(data, dict) and "rigs" in data:
        return _validate(MultiRigConfig, data, source, base_dir).rig_configs()
    return [config_from_dict(data, source, base_dir)]


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
    """Load and validate a one-rig YAML file; relative paths in it resolve against its folder."""
    path = Path(path)
    return config_from_dict(read_yaml(path), str(path), path.parent)


def load_rigs(path: str | Path) -> list[RigConfig]:
    """Load a config file of either form: one :class:`RigConfig` per rig."""
    path = Path(path)
    return rigs_from_dict(read_yaml(path), str(path), path.parent)


def config_schema() -> dict:
    """JSON schema of a config file (either form), every field described."""
    return TypeAdapter(Union[RigConfig, MultiRigConfig]).json_schema()
