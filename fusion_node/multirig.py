"""Several rigs served by one node: the ``rigs:`` config form and message routing.

The single-rig config (``rig``, ``sensors``, ``sync``, ``node`` at the top level) stays valid. A
node serving several rigs takes a ``rigs:`` list instead, each entry a rig without its own
``node`` block, and one top-level ``node`` block that all rigs share (one process, one publish
socket, one model runtime)::

    rigs:
      - rig: bay-1
        sensors: [{id: cam1, kind: camera, endpoint: ipc:///run/fusion/cam1}, ...]
        sync: {policy: reference}
      - rig: bay-2
        sensors: [{id: cam2, kind: camera, endpoint: ipc:///run/fusion/cam2}, ...]
    node:
      publish_endpoint: tcp://127.0.0.1:5560
      models: models/manifest.json

Sensor ids are unique across all rigs: the node routes every message to the rig owning its
``sensor_id``. Rig names and sensor endpoints are unique too. The one rig-specific node setting,
``rig_file`` (the rig's calibration file), may be given per rig: ``node: {rig_file: bay-1.yaml}``
inside a rig entry; every other node key belongs in the shared block.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .config import NodeConfig, RigConfig, _format_errors, config_from_dict, load_config, read_yaml
from .errors import ConfigError

__all__ = ["MultiRigConfig", "rigs_from_dict", "load_rigs", "RigRouter"]

# Node settings that are file paths, resolved against the config file (as load_config does).
NODE_PATH_KEYS = ("models", "rig_file")


class MultiRigConfig(BaseModel):
    """Several rigs in one node process."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rigs: list[RigConfig] = Field(min_length=1, description="the rigs this node serves; each without a node block")
    node: NodeConfig = Field(default_factory=NodeConfig, description="node settings shared by every rig")

    @model_validator(mode="before")
    @classmethod
    def _no_rig_node_blocks(cls, data):
        if isinstance(data, dict) and isinstance(data.get("rigs"), list):
            for i, entry in enumerate(data["rigs"]):
                if isinstance(entry, dict) and "node" in entry:
                    raise ValueError(f"rigs[{i}] has a node block: with several rigs the node settings are "
                                     f"shared, put them in the top-level node block (only rig_file may be "
                                     f"given per rig)")
        return data

    @model_validator(mode="after")
    def _check(self) -> "MultiRigConfig":
        names = [r.rig for r in self.rigs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"rig names must be unique, repeated: {dup}")
        ids = [s.id for r in self.rigs for s in r.sensors]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"sensor ids must be unique across rigs (messages are routed by sensor_id), "
                             f"repeated: {dup}")
        eps = [s.endpoint for r in self.rigs for s in r.sensors]
        dup = sorted({e for e in eps if eps.count(e) > 1})
        if dup:
            raise ValueError(f"sensor endpoints must be unique across rigs, repeated: {dup}")
        return self

    def rig_configs(self) -> list[RigConfig]:
        """One full :class:`RigConfig` per rig, each carrying the shared node settings."""
        return [r.model_copy(update={"node": self.node}) for r in self.rigs]


PER_RIG_NODE_KEYS = ("rig_file",)


def rigs_from_dict(data: object, source: str = "<config>") -> list[RigConfig]:
    """Validate either config form; returns one RigConfig per rig (a list of one for the single form)."""
    if not (isinstance(data, dict) and "rigs" in data):
        return [config_from_dict(data, source)]
    overrides: list[dict] = []
    if isinstance(data.get("rigs"), list):
        entries = []
        for i, entry in enumerate(data["rigs"]):
            own: dict = {}
            if isinstance(entry, dict) and isinstance(entry.get("node"), dict) \
                    and set(entry["node"]) <= set(PER_RIG_NODE_KEYS):
                entry = dict(entry)
                own = entry.pop("node")
            entries.append(entry)
            overrides.append(own)
        data = {**data, "rigs": entries}
    try:
        cfgs = MultiRigConfig.model_validate(data).rig_configs()
    except ValidationError as err:
        raise ConfigError(_format_errors(source, err)) from None
    out = []
    for i, (cfg, own) in enumerate(zip(cfgs, overrides)):
        if own:
            try:
                node = NodeConfig.model_validate({**cfg.node.model_dump(), **own})
            except ValidationError as err:
                raise ConfigError(_format_errors(f"{source}: rigs.{i}.node", err)) from None
            cfg = cfg.model_copy(update={"node": node})
        out.append(cfg)
    return out


def load_rigs(path: str | Path) -> list[RigConfig]:
    """Load a single-rig or ``rigs:`` config file; relative node paths resolve against the file.

    The single-rig form is loaded by :func:`fusion_node.config.load_config` itself.
    """
    path = Path(path)
    data = read_yaml(path)
    if not (isinstance(data, dict) and "rigs" in data):
        return [load_config(path)]
    out = []
    for cfg in rigs_from_dict(data, str(path)):
        updates = {key: str((path.parent / value).resolve()) for key in NODE_PATH_KEYS
                   if (value := getattr(cfg.node, key, None)) and not Path(value).is_absolute()}
        if updates:
            cfg = cfg.model_copy(update={"node": cfg.node.model_copy(update=updates)})
        out.append(cfg)
    return out


class RigRouter:
    """sensor_id -> index of the rig that owns it."""

    def __init__(self, cfgs: list[RigConfig]):
        self.index = {s.id: i for i, cfg in enumerate(cfgs) for s in cfg.sensors}

    def __call__(self, sensor_id: str) -> int | None:
        return self.index.get(sensor_id)
