"""``fusion replay``: a recording played back as the rig it came from, or through the core alone.

Two modes:

* **Republish** (default). One XPUB socket per recorded sensor, bound to the endpoint it was
  recorded from (or ``--endpoint ID=EP``; an ``ipc://`` one whose folder is gone gets a private
  folder), sending each recorded message when its publish time
  comes round again (scaled by ``--speed``), on the wire format the sensor used: a node
  subscribed to these endpoints cannot tell the replay from the rig. The header's times are
  moved onto the replaying host's clock (capture times shifted by one offset, ``t_publish_ns``
  stamped at sending), since a node rejects messages captured longer ago than ``max_age_s``;
  ``--original-times`` sends the recorded bytes unchanged instead. ``--loop`` plays the
  recording again and again, times and sequence numbers running on as a looping sensor's do.
  At a ``--speed`` other than 1 every time is scaled around the start, so audio chunks overlap
  (or leave gaps) on the rig clock; ``--as-fast-as-possible`` sends the recorded bytes as they
  are, as fast as subscribers take them (for tools that read recorded times; a node would
  reject a rig running ahead of its clock, see ``--through-core``).
* **Through the core** (``--through-core``). No sockets, no clocks: the recorded messages go to
  a :class:`fusion_node.core.FusionCore` arriving at their recorded publish times (on the rig
  clock: the moment an idle node on the same host would have had them; the recorder's own
  arrival times say more about the recorder's load than the rig), stepped at each arrival and
  at each sync deadline, as the node's loop would. What the node measures with its clock is
  replaced by recorded times (the core's stage timer reads the simulated time, so receive,
  preprocess, encode, head and publish latencies are 0 and e2e runs from the newest capture to
  the release), and the node run id in ``event_id`` is 0. The events are therefore the same byte for byte on
  every run on one machine (and equal within float tolerance across machines): the base of the
  regression tests (:mod:`fusion_node.regression`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import msgpack
import yaml
import zmq

from .config import RigConfig
from .core import FusionCore
from .errors import ConfigError
from .cpu_runtime import ModelRuntime
from .manifest import load_manifest
from .node import limit_threads
from .paths import SHIPPED_MODELS
from .recording import Recording, SensorChannel
from .tap import connectable, stop_on_signals
from .wire import TOPICS, decode

__all__ = ["Republisher", "through_core", "reference_key", "label_agreement", "add_parser", "run",
           "resolve_models"]

# Pause between the end of one pass of a looped recording and the start of the next.
LOOP_GAP_NS = 50_000_000


def _sleep_until(t_ns: int, stop: Callable[[], bool], clock: Callable[[], int]) -> None:
    while not stop():
        left = t_ns - clock()
        if left <= 0:
            return
        time.sleep(min(left, 50_000_000) / 1e9)


class Republisher:
    """Publishes a recording's sensor messages as the sensor processes that made them did."""

    def __init__(self, recording: Recording, endpoints: dict[str, str] | None = None, *, speed: float = 1.0,
                 fast: bool = False, loop: bool = False, original_times: bool = False,
                 context: zmq.Context | None = None, clock: Callable[[], int] = time.monotonic_ns):
        if not speed > 0:
            raise ConfigError(f"replay speed must be positive, got {speed}")
        self.rec = recording
        self.speed = float(speed)
        self.fast = fast
        self.loop = loop
        self.restamp = not (original_times or fast)
        self.clock = clock
        self.ctx = context or zmq.Context.instance()
        self.sent: Counter = Counter()
        self.passes = 0
        self.sensors: dict[str, SensorChannel] = {s.sensor_id: s for s in recording.sensors}
        unknown = sorted(set(endpoints or {}) - set(self.sensors))
        if unknown:
            raise ConfigError(f"--endpoint names sensors the recording does not hold: {unknown} "
                              f"(recorded: {sorted(self.sensors)})")
        self.sockets: dict[str, zmq.Socket] = {}
        self.endpoints: dict[str, str] = {}
        self._ipc_dir: Path | None = None
        for sid, s in self.sensors.items():
            endpoint = (endpoints or {}).get(sid) or self._bindable(sid, s.endpoint)
            sock = self.ctx.socket(zmq.XPUB)
            sock.setsockopt(zmq.SNDHWM, TOPICS[s.kind].queue_bound)
            sock.setsockopt(zmq.LINGER, 500)
            if fast:
                sock.setsockopt(zmq.XPUB_NODROP, 1)  # as fast as subscribers take it, losing nothing
            try:
                sock.bind(endpoint)
            except zmq.ZMQError as exc:
                sock.close(0)
                self.close()
                raise ConfigError(f"replay {sid}: cannot bind {endpoint}: {exc} (is the sensor or another replay "
                                  f"still running? pass --endpoint {sid}=ENDPOINT)") from None
            self.sockets[sid] = sock
            self.endpoints[sid] = sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def _bindable(self, sensor_id: str, endpoint: str) -> str:
        """The recorded endpoint, or for an ``ipc://`` one whose folder is gone (a demo's private
        folder) a fresh one in a folder of the replay's own."""
        if not endpoint.startswith("ipc://") or Path(endpoint[len("ipc://"):]).parent.is_dir():
            return endpoint
        if self._ipc_dir is None:
            self._ipc_dir = Path(tempfile.mkdtemp(prefix="fusion-replay-"))
        return f"ipc://{self._ipc_dir}/{sensor_id}"

    def wait_for_subscribers(self, timeout_s: float) -> bool:
        """Wait until every socket has a subscriber (True), or the timeout passes (False)."""
        deadline = time.monotonic() + timeout_s
        waiting = set(self.sockets)
        while waiting and time.monotonic() < deadline:
            for sid in list(waiting):
                if self.sockets[sid].poll(10, zmq.POLLIN):
                    self.sockets[sid].recv()  # the subscription message
                    waiting.discard(sid)
        return not waiting

    def _frames(self, frames: list[bytes], t_pass: int, base: int, seq_offset: int) -> list[bytes]:
        """The frames to send: times moved so that recorded ``base`` falls at ``t_pass`` (scaled by
        the speed), ``t_publish_ns`` now, ``seq`` advanced by ``seq_offset``."""
        if not self.restamp and not seq_offset:
            return frames
        try:
            head = msgpack.unpackb(frames[1], raw=False, strict_map_key=False)
        except Exception:  # msgpack raises several unrelated types on garbage: sent as recorded
            return frames
        if not isinstance(head, dict) or not all(isinstance(head.get(k), int) for k in ("seq", "t_capture_ns")):
            return frames  # a recorded invalid message goes out as it was
        if self.restamp:
            head["t_capture_ns"] = t_pass + int((head["t_capture_ns"] - base) / self.speed)
            head["t_publish_ns"] = self.clock()
        head["seq"] += seq_offset
        return [frames[0], msgpack.packb(head, use_bin_type=True), *frames[2:]]

    def _send(self, sock: zmq.Socket, frames: list[bytes], stop: Callable[[], bool]) -> bool:
        if not self.fast:
            sock.send_multipart(frames, copy=False)
            return True
        while not stop():  # XPUB_NODROP: a full queue says so instead of dropping
            try:
                sock.send_multipart(frames, zmq.NOBLOCK, copy=False)
                return True
            except zmq.Again:
                sock.poll(50, zmq.POLLOUT)
        return False

    def run(self, stop: Callable[[], bool] = lambda: False) -> dict:
        """Play the recording (again and again with ``loop``) until it ends or ``stop()``."""
        spans: dict[tuple[str, int], int] = {}  # (sensor, run_id) -> seq span of one pass
        base = None
        t_pass = self.clock()
        while not stop():
            last_due = t_pass
            for m in self.rec.wire_messages():
                if stop():
                    break
                base = m.publish_time_ns if base is None else base
                due = t_pass + int((m.publish_time_ns - base) / self.speed)
                last_due = due
                if not self.fast:
                    _sleep_until(due, stop, self.clock)
                run_id, seq = _run_seq(m.frames)
                if self.passes == 0 and run_id is not None:
                    spans[(m.sensor_id, run_id)] = max(spans.get((m.sensor_id, run_id), 0), seq + 1)
                offset = self.passes * spans.get((m.sensor_id, run_id), 0) if run_id is not None else 0
                frames = self._frames(m.frames, t_pass, base, offset)
                if self._send(self.sockets[m.sensor_id], frames, stop):
                    self.sent[m.sensor_id] += 1
            self.passes += 1
            if not self.loop or base is None:
                break
            t_pass = last_due + LOOP_GAP_NS
        return {"sent": dict(self.sent), "passes": self.passes}

    def rig_configs(self, publish_endpoint: str | None = None) -> list[RigConfig]:
        """The recorded rig configs with the sensors' endpoints replaced by the replay's."""
        out = []
        for cfg in self.rec.rigs():
            sensors = [s.model_copy(update={"endpoint": connectable(self.endpoints.get(s.id, s.endpoint))})
                       for s in cfg.sensors]
            node = cfg.node if publish_endpoint is None else cfg.node.model_copy(
                update={"publish_endpoint": publish_endpoint})
            out.append(cfg.model_copy(update={"sensors": sensors, "node": node}))
        return out

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()
        if self._ipc_dir is not None:
            shutil.rmtree(self._ipc_dir, ignore_errors=True)
            self._ipc_dir = None


def _run_seq(frames: list[bytes]) -> tuple[int | None, int]:
    try:
        head = msgpack.unpackb(frames[1], raw=False, strict_map_key=False)
        return int(head["run_id"]), int(head["seq"])
    except Exception:  # an invalid recorded message: no run to continue
        return None, 0


def write_config(cfgs: Sequence[RigConfig], path: str | Path) -> Path:
    """A rig config file for ``cfgs``: the one-rig form, or ``rigs:`` with the shared node block."""
    dumped = [c.model_dump(mode="json", exclude_none=True) for c in cfgs]
    if len(dumped) == 1:
        data = dumped[0]
    else:
        node = dumped[0]["node"]
        data = {"rigs": [{k: v for k, v in d.items() if k != "node"} for d in dumped], "node": node}
    path = Path(path)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# -- through the core -------------------------------------------------------------------------

def resolve_models(choice: str | None, recorded: str | None) -> Path | None:
    """``recorded`` (what the recording's node used, if that file exists here, else the shipped
    models), ``default`` (the shipped models), ``none``, or a manifest path."""
    if choice in (None, "recorded"):
        if recorded and Path(recorded).exists():
            return Path(recorded)
        choice = "default"
    if choice == "default":
        if not SHIPPED_MODELS.exists():
            raise ConfigError(f"no shipped models at {SHIPPED_MODELS}; pass --models MANIFEST or --models none")
        return SHIPPED_MODELS
    if choice == "none":
        return None
    path = Path(choice)
    if not path.exists():
        raise ConfigError(f"--models {choice}: no such manifest")
    return path


def through_core(recording: Recording, *, models: str | None = "recorded", provider: str = "cpu",
                 rigs: Iterable[str] | None = None) -> Iterator[dict]:
    """Fused events of the recorded messages run through a fresh core per rig, deterministically."""
    cfgs = [c for c in recording.rigs() if rigs is None or c.rig in set(rigs)]
    if not cfgs:
        raise ConfigError(f"{recording.path}: no such rig (recorded: {[c.rig for c in recording.rigs()]})")
    manifest = resolve_models(models, cfgs[0].node.models)
    runtime = None
    if manifest is not None:
        limit_threads(1)  # one thread: the same float summation order on every run
        runtime = ModelRuntime(load_manifest(manifest), provider=provider, intra_op_threads=1)
    now = {"t": 0}
    cores = [FusionCore(c, runtime, timer=lambda: now["t"], run_id=0, calibration=recording.calibration(c.rig))
             for c in cfgs]
    route = {s.id: core for core in cores for s in core.cfg.sensors}

    def step(core: FusionCore, t_ns: int, batch: list) -> list[dict]:
        now["t"] = t_ns
        return [core.finish_event(ev, t_ns) for ev in core.step(t_ns, batch)]

    def deadlines_until(t_ns: int | None) -> Iterator[dict]:
        # Sets whose deadline passes before the next arrival are released at their deadline,
        # as the node's loop (which wakes at the earliest deadline) releases them.
        while True:
            due = [(d, i) for i, core in enumerate(cores) if (d := core.next_deadline_ns()) is not None]
            if not due:
                return
            d, i = min(due)
            if (t_ns is not None and d > t_ns) or d < now["t"]:
                return
            before = cores[i].next_deadline_ns()
            yield from step(cores[i], d, [])
            if cores[i].next_deadline_ns() == before:
                return  # nothing was released: no progress to make before the next arrival

    for m in recording.wire_messages(list(route)):
        core = route[m.sensor_id]
        # Arrival: the moment the sensor sent it, on the rig clock (never before the last step).
        t_arrival = max(now["t"], core.to_rig_ns(core.sensors[m.sensor_id], m.publish_time_ns))
        yield from deadlines_until(t_arrival)
        yield from step(core, t_arrival, [(t_arrival, decode(m.frames, shm=False))])
    yield from deadlines_until(None)


# -- comparing events ---------------------------------------------------------------------------

def reference_key(event: dict) -> tuple | None:
    """What identifies a set across runs: the rig and its reference member (the first member,
    the driver), by sensor id and sequence number; a set made on a clock tick (no frame sensor
    alive) by its reference time."""
    members = event.get("members") or []
    if not members:
        return (event.get("rig"), "tick", event["t_ref_ns"]) if "t_ref_ns" in event else None
    return event.get("rig"), members[0]["sensor_id"], members[0]["seq"]


def label_agreement(a: Sequence[dict], b: Sequence[dict]) -> dict:
    """How many sets of ``a`` are also in ``b``, and in how many of those the labels are the same."""
    index = {reference_key(ev): ev for ev in b}
    matched = same = 0
    differ = []
    for ev in a:
        other = index.get(reference_key(ev))
        if other is None:
            continue
        matched += 1
        mine, theirs = [d["label"] for d in ev["labels"]], [d["label"] for d in other["labels"]]
        if mine == theirs:
            same += 1
        else:
            differ.append({"key": reference_key(ev), "a": mine, "b": theirs})
    return {"a": len(a), "b": len(b), "matched": matched, "same_labels": same, "differ": differ}


# -- the command --------------------------------------------------------------------------------

def _endpoint_overrides(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        sid, sep, endpoint = item.partition("=")
        if not sep or not sid or not endpoint:
            raise ConfigError(f"--endpoint takes SENSOR_ID=ENDPOINT, got {item!r}")
        out[sid] = endpoint
    return out


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``replay`` subcommand."""
    p = sub.add_parser("replay", help="play a recording back as its rig, or through the fusion core",
                       description="Republish a recording's sensor messages on their endpoints as the sensor "
                                   "processes did, or (--through-core) run them through the fusion core alone, "
                                   "deterministically. See docs/recording.md.")
    p.add_argument("recording", help="the .mcap file (fusion record, fusion demo --record)")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, default=1.0, help="playback rate (default 1: real time)")
    pace.add_argument("--as-fast-as-possible", action="store_true",
                      help="send as fast as subscribers take messages, with the recorded bytes unchanged")
    p.add_argument("--loop", action="store_true", help="play again at the end (stop with Ctrl-C)")
    p.add_argument("--endpoint", action="append", default=[], metavar="SENSOR_ID=ENDPOINT",
                   help="publish this sensor on another endpoint than the recorded one (repeatable)")
    p.add_argument("--original-times", action="store_true",
                   help="send the recorded headers unchanged (a node rejects captures older than its max_age_s)")
    p.add_argument("--wait-subscriber", type=float, default=0.0, metavar="S",
                   help="wait up to S seconds for a subscriber on every endpoint before playing")
    p.add_argument("--config-out", metavar="RIG.yaml",
                   help="write the recorded rig config with the replay's endpoints, for `fusion node --config`")
    p.add_argument("--publish", metavar="ENDPOINT", default=None,
                   help="with --config-out: the node's publish endpoint to write (default: the recorded one)")
    p.add_argument("--through-core", action="store_true",
                   help="no sockets: run the recorded messages through the fusion core with recorded times")
    p.add_argument("--events-out", metavar="FILE.jsonl", help="with --through-core: write the events here")
    p.add_argument("--models", default="recorded", metavar="MANIFEST",
                   help="with --through-core: 'recorded' (the recording's models if present here, else the "
                        "shipped ones), 'default' (shipped), 'none' (sync only) or a manifest.json")
    p.add_argument("--provider", default="cpu", choices=["auto", "tensorrt", "cuda", "cpu"],
                   help="with --through-core: onnxruntime execution provider (default cpu)")
    p.add_argument("--rig", action="append", default=None, help="with --through-core: only this rig (repeatable)")
    p.add_argument("--compare-live", action="store_true",
                   help="with --through-core: compare the labels with the node's events in the recording")
    p.set_defaults(func=run)


def _run_core(args: argparse.Namespace, rec: Recording) -> int:
    out = open(args.events_out, "w") if args.events_out else None
    events = []
    labels: Counter = Counter()
    try:
        for ev in through_core(rec, models=args.models, provider=args.provider, rigs=args.rig):
            line = json.dumps(ev)
            if out:
                out.write(line + "\n")
            else:
                print(line)
            labels.update(d["label"] for d in ev["labels"])
            if args.compare_live:
                events.append(ev)
    finally:
        if out:
            out.close()
    summary = {"event": "through_core", "labels": dict(labels), "events_out": args.events_out}
    if args.compare_live:
        live = [body for _, body in rec.node_messages("fused")]
        agreement = label_agreement(events, live)
        summary["compare_live"] = {k: v for k, v in agreement.items() if k != "differ"}
        summary["compare_live"]["differ"] = agreement["differ"][:10]
    print(json.dumps(summary), file=sys.stderr if out is None else sys.stdout, flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    """``fusion replay``."""
    with Recording(args.recording) as rec:
        if args.through_core:
            return _run_core(args, rec)
        stop = stop_on_signals()
        pub = Republisher(rec, _endpoint_overrides(args.endpoint), speed=args.speed, fast=args.as_fast_as_possible,
                          loop=args.loop, original_times=args.original_times)
        try:
            if args.config_out:
                write_config(pub.rig_configs(args.publish), args.config_out)
            print(json.dumps({"event": "replay_ready", "endpoints": pub.endpoints, "config": args.config_out}),
                  flush=True)
            if args.wait_subscriber > 0 and not pub.wait_for_subscribers(args.wait_subscriber):
                print(f"fusion replay: no subscriber on some endpoints after {args.wait_subscriber} s; playing anyway",
                      file=sys.stderr)
            done = pub.run(stop)
        finally:
            pub.close()
        print(json.dumps({"event": "replay_done", **done}), flush=True)
    return 0
