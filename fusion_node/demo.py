"""``fusion demo``: sensor processes, the node and a subscriber, on the bundled street inputs.

The demo writes a rig config for the run (ipc endpoints in a private temporary folder), starts
the node and waits for its ready line, starts one process per sensor (each waits for the node to
subscribe before playing, so no recording's start is lost), prints fused events as they arrive,
and at the end (recordings finished or ``--duration`` reached) stops the children cleanly and
prints a summary: events, rates, drops, rejects and latency percentiles.

Files named on the command line are checked before anything starts. SIGINT (Ctrl-C) and SIGTERM
stop the run the same way: every child is stopped, the summary printed, and the private folder
(sockets, logs, the sensors' shared-memory rings) removed; the exit status is 0 unless a child
failed.

The bundled inputs tell one street story but were not captured together: the camera is a real
street video, the sound a mix of real street recordings, and the radar a **simulated** TI capture
of a scripted street (``sensors/samples/SOURCES.md``). The demo says which input is which, and
that they are a side-by-side replay. ``--sim`` runs the simulator instead, whose three sensors
observe one world.
"""

from __future__ import annotations

import argparse
import json
import logging
import queue
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import yaml
import zmq

from sensors.samples import DEMO_INPUTS

from .errors import ConfigError, FusionError
from .paths import SHIPPED_MODELS
from .shm import default_shm_dir
from .stats import percentiles
from .supervisor import Child, python_module, stop_all
from .wire import decode_map

__all__ = ["add_arguments", "run", "default_models", "check_sources"]

log = logging.getLogger("fusion.demo")



def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``fusion demo``."""
    p.add_argument("--camera", default=str(DEMO_INPUTS["camera"].path), metavar="SRC",
                   help="camera source: video file, device index or URL (default: bundled real street video)")
    p.add_argument("--radar", default=str(DEMO_INPUTS["radar"].path), metavar="SRC",
                   help="radar source: .dat capture or serial:DEVICE (default: bundled SIMULATED TI capture of "
                        "a scripted street)")
    p.add_argument("--audio", default=str(DEMO_INPUTS["audio"].path), metavar="SRC",
                   help="audio source: WAV/OGG/FLAC file or mic[:DEVICE] (default: bundled mix of real street "
                        "sounds)")
    p.add_argument("--sim", action="store_true",
                   help="use the built-in tri-modal simulator (one world, three sensors that agree) instead of "
                        "the recordings")
    p.add_argument("--seed", type=int, default=0, help="simulator seed (with --sim)")
    p.add_argument("--no-camera", action="store_true", help="run without a camera (the radar sets the time; with "
                                                            "--no-radar too, sets are cut on the audio's clock)")
    p.add_argument("--no-radar", action="store_true", help="run without a radar")
    p.add_argument("--no-audio", action="store_true", help="run without a microphone")
    p.add_argument("--duration", type=float, default=12.0, metavar="S",
                   help="stop after S seconds even if recordings go on (default 12; 0 = until they end)")
    p.add_argument("--loop", action="store_true", help="loop the recordings (stop with --duration or Ctrl-C)")
    p.add_argument("--events-out", metavar="FILE.jsonl", default=None, help="also write every event here")
    p.add_argument("--models", default="default", metavar="MANIFEST",
                   help="model manifest.json; 'default' = the shipped trained models; 'none' = synchronisation "
                        "only, no labels")
    p.add_argument("--provider", default="auto", choices=["auto", "tensorrt", "cuda", "cpu"],
                   help="onnxruntime execution provider (default auto: TensorRT, CUDA, then CPU)")
    p.add_argument("--policy", default="reference", choices=["reference", "approximate", "epsilon"],
                   help="synchronisation policy (default reference)")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    p.add_argument("--mqtt", default=None, metavar="URL",
                   help="also send lifecycle events, states and Home Assistant discovery to this MQTT broker "
                        "(mqtt://HOST:PORT)")
    p.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                   help="serve the node's Prometheus metrics on PORT (/metrics)")
    p.add_argument("--event-log", default=None, metavar="FILE",
                   help="keep the node's event log here (default: a temporary file removed at the end)")
    p.add_argument("--record", metavar="FILE.mcap", default=None,
                   help="also record the run (every sensor topic and the node's topics) with `fusion record`")


def default_models() -> Path:
    """The trained model bundle shipped with the project."""
    if not SHIPPED_MODELS.exists():
        raise FusionError(f"{SHIPPED_MODELS}: the shipped models are missing; reinstall the package, or pass "
                          f"--models MANIFEST (or --models none for synchronisation only)")
    return SHIPPED_MODELS


def _read_lines(stream, q: queue.Queue) -> None:
    for line in stream:
        q.put(line)
    q.put(None)


def _json_lines(lines: queue.Queue, node: Child, timeout_s: float, idle_s: float,
                stopped: Callable[[], bool] = lambda: False):
    """JSON objects the node prints, until it closes stdout, exits, ``stopped()``, or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not stopped():
        try:
            line = lines.get(timeout=idle_s)
        except queue.Empty:
            if not node.running:
                return
            continue
        if line is None:
            return
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            continue  # a stray non-JSON line (a library's print) is not ours


def _wait_ready(node: Child, lines: queue.Queue, timeout_s: float, stopped: Callable[[], bool]) -> dict | None:
    """The node's ready line; None when the demo was stopped first."""
    for msg in _json_lines(lines, node, timeout_s, idle_s=0.1, stopped=stopped):
        if msg.get("event") == "ready":
            return msg
    if stopped():
        return None
    raise FusionError(f"the fusion node did not start (exit code {node.poll()}):\n{node.last_error(8)}")


def _describe(ev: dict, t0_ns: int) -> str:
    present = [k for k, m in ev["modalities"].items() if m["present"]]
    labels = ", ".join(f"{d['label']} {d['score']:.2f}" for d in ev["labels"]) or (
        "-" if ev.get("model") and ev["model"]["trained"] else "(untrained models: no labels)"
        if ev.get("model") else "(sync only)")
    cons = "" if ev.get("consistency") is None else f" consistency={ev['consistency']:.2f}"
    if ev.get("alerts"):
        cons += f"  ALERT {','.join(ev['alerts'])}"
    return (f"event {ev['seq']:4d}  t=+{(ev['t_ref_ns'] - t0_ns) / 1e9:6.2f}s  "
            f"present={'+'.join(present) or '-'}  missing={','.join(ev['missing']) or '-'}  "
            f"labels: {labels}{cons}  e2e={ev['latency_ms'].get('e2e', 0):.1f} ms")


# What each sensor command takes besides a file: a source of this form is not checked on disk.
SOURCE_FORMS = {"camera": "a video file, a device index or a URL", "radar": "a .dat capture or serial:DEVICE",
                "audio": "a WAV/OGG/FLAC file or mic[:DEVICE]"}


def _is_device(kind: str, src: str) -> bool:
    if kind == "camera":
        return src.isdigit() or "://" in src
    if kind == "radar":
        return src.startswith("serial:")
    return src == "mic" or src.startswith("mic:")


def check_sources(args: argparse.Namespace) -> None:
    """Every file the demo was given exists, before anything starts (ConfigError naming the first missing)."""
    if not args.sim:
        for kind in ("camera", "radar", "audio"):
            src = str(getattr(args, kind))
            if getattr(args, f"no_{kind}") or _is_device(kind, src) or Path(src).is_file():
                continue
            raise ConfigError(f"fusion demo: --{kind} {src}: no such file (a {kind} source is "
                              f"{SOURCE_FORMS[kind]}); nothing was started")
    if args.models not in ("default", "none") and not Path(args.models).is_file():
        raise ConfigError(f"fusion demo: --models {args.models}: no such manifest file (or 'default', 'none')")


class _StopSignals:
    """SIGINT and SIGTERM set a flag the demo's loops read, instead of interrupting wherever it is."""

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def __enter__(self) -> "_StopSignals":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        self.signum = signum

    def __call__(self) -> bool:
        return self.signum is not None

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def run(args: argparse.Namespace) -> int:
    check_sources(args)
    if not args.sim and args.no_camera and args.no_radar and args.no_audio:
        raise ConfigError("fusion demo: --no-camera, --no-radar and --no-audio leave no sensor; nothing was started")
    models = None
    if args.models == "default":
        models = default_models()
    elif args.models != "none":
        models = Path(args.models).resolve()
    # Sockets, logs and the sensors' shared-memory rings all live in this one folder (in shared
    # memory where there is some), so removing it leaves nothing behind, even after a kill.
    workdir = Path(tempfile.mkdtemp(prefix="fusion-demo-", dir=default_shm_dir()))
    try:
        with _StopSignals() as stopped:
            return _run_in(args, models, workdir, stopped)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run_in(args: argparse.Namespace, models: Path | None, workdir: Path, stopped: _StopSignals) -> int:
    sensors = []
    argv = {}
    shm_dir = ["--shm-dir", str(workdir)]
    for kind, enabled, src, sid in (("camera", args.sim or not args.no_camera, args.camera, "cam0"),
                                    ("radar", args.sim or not args.no_radar, args.radar, "radar0"),
                                    ("audio", args.sim or not args.no_audio, args.audio, "mic0")):
        if not enabled:
            continue
        endpoint = f"ipc://{workdir / sid}.sock"
        sensors.append({"id": sid, "kind": kind, "endpoint": endpoint})
        extra = ["--loop"] if args.loop else []
        if args.sim:
            continue
        argv[sid] = python_module("fusion_node.cli", "sensor", kind, "--source", str(src), "--sensor-id", sid,
                                  "--endpoint", endpoint, "--wait-subscriber", "20", *shm_dir, *extra)
    if args.sim:
        eps = {s["kind"]: s["endpoint"] for s in sensors}
        argv["sim"] = python_module("fusion_node.cli", "sensor", "sim", "--camera-endpoint", eps["camera"],
                                    "--radar-endpoint", eps["radar"], "--audio-endpoint", eps["audio"],
                                    "--seed", str(args.seed), "--wait-subscriber", "20", *shm_dir,
                                    *(["--duration", str(args.duration)] if args.duration else []))
    cfg = {"rig": "demo", "sensors": sensors,
           "sync": {"policy": args.policy},
           "node": {"publish_endpoint": f"ipc://{workdir / 'events'}.sock",
                    "models": None if models is None else str(models), "provider": args.provider,
                    "stats_interval_s": 1.0, "max_age_s": 30.0, "metrics_port": args.metrics_port,
                    "shm_dir": str(workdir)},
           "event_log": {"path": str(Path(args.event_log).resolve() if args.event_log else workdir / "events.sqlite")}}
    if args.mqtt:
        cfg["sinks"] = {"mqtt": {"url": args.mqtt}}
    cfg_path = workdir / "rig.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    # Started first: it is subscribed to every endpoint by the time the sensors play.
    recorder = Child("recorder", python_module("fusion_node.cli", "record", "--config", str(cfg_path), "--out",
                                               str(Path(args.record).resolve()), "--quiet"), workdir).start() \
        if args.record else None
    node = Child("node", python_module("fusion_node.cli", "node", "--config", str(cfg_path)), workdir,
                 stdout_pipe=True).start()
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_lines, args=(node.proc.stdout, lines), daemon=True).start()
    children = {}
    events: list[dict] = []
    lifecycle: list[dict] = []
    out = open(args.events_out, "w") if args.events_out else None
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    failures: list[str] = []
    reported: set[str] = set()
    ready: dict = {}
    t_start = time.monotonic()
    t_first = None
    try:
        ready = _wait_ready(node, lines, 120, stopped) or {}
        if ready:
            _announce(args, argv, ready)
            sub.setsockopt(zmq.SUBSCRIBE, b"fused")
            sub.setsockopt(zmq.SUBSCRIBE, b"lifecycle")
            sub.connect(ready["publish_endpoint"])
            for sid, a in argv.items():
                children[sid] = Child(sid, a, workdir).start()
        t_start = time.monotonic()
        # --duration counts from the first event, so slow sensor start-up (decoding a video,
        # loading the simulator's assets) does not eat into it; without any event, give up
        # after a generous start-up allowance.
        startup_allowance_s = 60.0
        t0_ns = None
        quiet_after = None
        while ready and not stopped():
            if sub.poll(100):
                topic, ev = decode_map(sub.recv_multipart())
                if topic == "lifecycle":
                    lifecycle.append(ev)
                    if not args.quiet:
                        print(f"  {ev['type'].upper():6s} {ev['kind']} {ev['label']} (log seq {ev['seq']}, "
                              f"top {ev['top_score'] if ev['top_score'] is not None else '-'})", flush=True)
                    continue
                if t_first is None:
                    t_first = time.monotonic()
                events.append(ev)
                t0_ns = t0_ns or ev["t_ref_ns"]
                if out:
                    out.write(json.dumps(ev) + "\n")
                if not args.quiet:
                    print(_describe(ev, t0_ns), flush=True)
            if stopped():
                break  # a Ctrl-C also reaches the children: their exit is no failure
            if not node.running:
                failures.append(f"node died (exit code {node.poll()}): {node.last_error()}")
                break
            for sid, child in children.items():
                code = child.poll()
                if code not in (None, 0) and sid not in reported:
                    reported.add(sid)
                    failures.append(f"{sid} died (exit code {code}): {child.last_error()}")
            now = time.monotonic()
            finished = all(c.poll() is not None for c in children.values())
            timed_out = (t_first is not None and args.duration and now - t_first >= args.duration) or (
                t_first is None and now - t_start >= startup_allowance_s + (args.duration or 0))
            if t_first is None and timed_out:
                failures.append(f"no event within {startup_allowance_s:.0f} s of starting the sensors")
            if quiet_after is None and (finished or timed_out):
                stop_all(list(children.values()))
                quiet_after = time.monotonic() + 1.0  # let the last sets reach their deadline
            if quiet_after is not None and time.monotonic() >= quiet_after:
                break
    finally:
        if stopped():  # asked to stop: everything at once; otherwise the sensors first, so the node
            stop_all([*children.values(), node], timeout_s=10)  # fuses what they sent last
        stop_all(list(children.values()))
        node.stop(timeout_s=10)
        if recorder is not None and recorder.stop(timeout_s=30) != 0:
            failures.append(f"recorder failed (exit code {recorder.poll()}): {recorder.last_error()}")
        sub.close(0)
        if out:
            out.close()
    final = next((m for m in _json_lines(lines, node, timeout_s=5, idle_s=2) if m.get("event") == "final_stats"),
                 {})
    if stopped():
        print(f"\nfusion demo: stopped by {signal.Signals(stopped.signum).name}", flush=True)
    _summary(events, final, failures, time.monotonic() - (t_first or t_start) if children else 0.0)
    if lifecycle:
        kinds: dict[str, int] = {}
        for ev in lifecycle:
            kinds[ev["type"]] = kinds.get(ev["type"], 0) + 1
        print("lifecycle events: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
              + (f" (log {ready.get('event_log')})" if args.event_log else ""))
    if args.events_out:
        print(f"fusion demo: {len(events)} events written to {args.events_out}")
    if args.record:
        print(f"fusion demo: recorded to {args.record} (fusion record --info {args.record})")
    if failures:
        return 1
    # Stopped on request, having seen no event, is no failure: the user asked.
    return 0 if events or stopped() else 1


def _announce(args: argparse.Namespace, argv: dict, ready: dict) -> None:
    """The node's endpoint, models and provider, and what the inputs are."""
    print(f"fusion demo: node ready on {ready['publish_endpoint']}, models: "
          f"{ready['models'] or 'none'}{' (untrained)' if ready['trained'] is False else ''}, "
          f"provider: {ready['provider'] or '-'}"
          f"{' (' + ready['provider_note'] + ')' if ready.get('provider_note') else ''}", flush=True)
    if args.sim:
        print(f"fusion demo: simulated world (seed {args.seed}): camera, radar and audio of one scene", flush=True)
    else:
        _print_inputs(args, argv)
    if ready.get("metrics_port"):
        print(f"fusion demo: metrics on http://127.0.0.1:{ready['metrics_port']}/metrics", flush=True)


def _print_inputs(args: argparse.Namespace, argv: dict) -> None:
    """Say which inputs are real recordings, which simulated, and that they were not recorded together."""
    bundled_only = True
    for kind, sid in (("camera", "cam0"), ("radar", "radar0"), ("audio", "mic0")):
        if sid not in argv:
            continue
        src = getattr(args, kind)
        bundled = DEMO_INPUTS[kind]
        if Path(src) == bundled.path:
            what = f"{'real recordings' if bundled.real else 'SIMULATED'}: {bundled.description}"
        else:
            what = "given on the command line"
            bundled_only = False
        print(f"fusion demo: {kind:6s} {Path(src).name if Path(src).exists() else src} ({what})", flush=True)
    if bundled_only:
        print("fusion demo: these inputs were not recorded together; this is a side-by-side replay of independent "
              "camera, radar and audio inputs", flush=True)


def _summary(events: list[dict], final: dict, failures: list[str], wall_s: float) -> None:
    print("\n=== fusion demo summary ===")
    rate = len(events) / wall_s if wall_s > 0 else 0.0
    print(f"events: {len(events)} in {wall_s:.1f} s ({rate:.1f}/s)")
    missing = {}
    for ev in events:
        for m in ev["missing"]:
            missing[m] = missing.get(m, 0) + 1
    if missing:
        print("sets with a modality missing: " + ", ".join(f"{k} {v}" for k, v in sorted(missing.items())))
    labels = {}
    for ev in events:
        for d in ev["labels"]:
            labels[d["label"]] = labels.get(d["label"], 0) + 1
    alerts: dict[str, int] = {}
    for ev in events:
        for a in ev.get("alerts", []):
            alerts[a] = alerts.get(a, 0) + 1
    if alerts:
        print("alerts: " + ", ".join(f"{k} x{v}" for k, v in sorted(alerts.items())))
    if labels:
        print("labels: " + ", ".join(f"{k} x{v}" for k, v in sorted(labels.items(), key=lambda kv: -kv[1])))
    for sid, s in final.get("sensors", {}).items():
        rej = sum(s["rejected"].values())
        print(f"  {sid:8s} {s['kind']:6s} received {s['received']:6d}  dropped {s['dropped']}  "
              f"seq gaps {s['seq_gaps']}  rejected {rej}{' ' + str(s['rejected']) if rej else ''}  "
              f"restarts {s['restarts']}{'  ended: ' + s['ended'].replace('_', ' ') if s.get('ended') else ''}")
    if final.get("rejected_unattributed"):
        print(f"  rejected (no sensor): {final['rejected_unattributed']}")
    order = ("receive", "sync_wait", "preprocess", "encode_camera", "encode_radar", "encode_audio", "head",
             "publish", "e2e")
    stages: dict[str, list[float]] = {k: [] for k in order}
    for ev in events:
        for k, v in ev["latency_ms"].items():
            stages.setdefault(k, []).append(v)
    if events:
        print("latency (ms)        p50      p90      p99      max")
        for k, vals in stages.items():
            if not vals:
                continue
            p = percentiles(vals)
            print(f"  {k:14s} {p['p50']:8.2f} {p['p90']:8.2f} {p['p99']:8.2f} {p['max']:8.2f}")
    for f in failures:
        print(f"FAILED: {f}")
