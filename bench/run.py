"""Run the real pipeline under load and measure it: publishers, node, and an independent subscriber.

:func:`run_pipeline` starts, as separate processes, the fusion node (``fusion node`` on a
generated config: one rig, or N rigs in the ``rigs:`` form), the event subscriber
(:mod:`bench.subscriber`) and one synthetic publisher process per modality
(:mod:`bench.synth`) serving every rig at real rates, open loop. After a warm-up it measures
for ``duration`` seconds and returns latency histograms, drops and cold-start figures.

End-to-end latency of an event = its arrival at the subscriber minus the intended capture
time of its newest member (camera or radar frame). A camera frame captured inside the
measurement window that produced no event is a miss: counted in ``drops`` and recorded as
infinitely late in ``e2e_with_misses_ms``.

:func:`find_max_rigs` searches (doubling, then bisecting) the largest number of rigs whose
``e2e_with_misses_ms.p99`` stays within one camera frame period.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import yaml

from fusion_node.errors import FusionError

from .hist import LatencyHistogram

__all__ = ["run_pipeline", "find_max_rigs", "start_node", "STAGES", "FRAME_PERIOD_MS"]

ROOT = Path(__file__).resolve().parents[1]
CAMERA_PERIOD_NS = 1_000_000_000 // 30
FRAME_PERIOD_MS = 1000.0 / 30.0
TAIL_S = 0.5
# Event latency keys -> report stage names, in pipeline order.
STAGES = (("receive", "transport"), ("sync_wait", "sync_wait"), ("preprocess", "preprocess"),
          ("encode_camera", "encode_camera"), ("encode_radar", "encode_radar"), ("encode_audio", "encode_audio"),
          ("head", "head"), ("publish", "publish"))


class _Proc:
    """A child process whose stdout JSON lines are read on a thread and whose stderr goes to a log."""

    def __init__(self, name: str, argv: list[str], workdir: Path):
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(ROOT)
        self.t_spawn_ns = time.monotonic_ns()
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.DEVNULL,
                                  text=True, env=env, cwd=workdir)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.p.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_json(self, event: str, timeout_s: float) -> dict | None:
        """The next JSON line with ``"event": event``; None on timeout or when the process ends."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                return None
            if line is None:
                self.lines.put(None)  # keep the end marker for later callers
                return None
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                continue
            if msg.get("event") == event:
                return msg

    def cpu_seconds(self) -> float | None:
        try:
            fields = Path(f"/proc/{self.p.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return None

    def error(self, lines: int = 6) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def stop(self, timeout_s: float = 10.0) -> int | None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGINT)
            try:
                self.p.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self._log.close()
        return self.p.returncode


def _rig_config(n: int, workdir: Path, manifest: Path | None, provider: str, deadline_ms: float | None,
                wait_for_audio: bool = True, io_binding: bool = False) -> dict:
    rigs = []
    for i in range(n):
        sync: dict = {"policy": "reference", "driver": f"cam{i}", "wait_for_audio": wait_for_audio}
        if deadline_ms is not None:
            sync["deadline_ms"] = float(deadline_ms)
        rigs.append({"rig": f"rig{i}", "sensors": [
            {"id": f"cam{i}", "kind": "camera", "endpoint": f"ipc://{workdir}/c{i}.sock"},
            {"id": f"radar{i}", "kind": "radar", "endpoint": f"ipc://{workdir}/r{i}.sock"},
            {"id": f"mic{i}", "kind": "audio", "endpoint": f"ipc://{workdir}/a{i}.sock"},
        ], "sync": sync})
    node = {"publish_endpoint": f"ipc://{workdir}/events.sock", "models": None if manifest is None else str(manifest),
            "provider": provider, "io_binding": io_binding, "stats_interval_s": 0.5, "max_age_s": 30.0}
    log = {"path": str(workdir / "events.sqlite")}  # each run its own event log, removed with the workdir
    if n == 1:
        return {**rigs[0], "node": node, "event_log": log}
    return {"rigs": rigs, "node": node, "event_log": log}


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def run_pipeline(rigs: int = 1, duration_s: float = 20.0, warmup_s: float = 2.0, provider: str = "cpu",
                 manifest: Path | None = None, deadline_ms: float | None = None, frame_size=(640, 480),
                 radar_points: int = 256, shm: bool = True, progress: bool = True, label: str = "",
                 events_out: Path | None = None, wait_for_audio: bool = True, io_binding: bool = False) -> dict:
    """Run the pipeline once; returns the measured figures (see the module docstring)."""
    workdir = Path(tempfile.mkdtemp(prefix="fzb-"))
    procs: list[_Proc] = []
    try:
        return _run(workdir, procs, rigs, duration_s, warmup_s, provider, manifest, deadline_ms, frame_size,
                    radar_points, shm, progress, label, wait_for_audio, io_binding)
    finally:
        if events_out is not None and (workdir / "events.jsonl").exists():
            shutil.copyfile(workdir / "events.jsonl", events_out)
        for p in reversed(procs):
            p.stop(5)
        shutil.rmtree(workdir, ignore_errors=True)


def start_node(workdir: Path, procs: list, cfg: dict, what: str = "bench") -> tuple[_Proc, dict, _Proc, int]:
    """Write ``cfg``, start the node and the subscriber (events to ``workdir/events.jsonl``).

    Returns the node, its ready line, the subscriber and when the node was ready (monotonic ns).
    """
    (workdir / "rig.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    node = _Proc("node", _python("-m", "fusion_node", "node", "--config", str(workdir / "rig.yaml")), workdir)
    procs.append(node)
    ready = node.wait_json("ready", 180)
    if ready is None:
        raise FusionError(f"{what}: the node did not start:\n{node.error()}")
    t_ready = time.monotonic_ns()
    sub = _Proc("subscriber", _python("-m", "bench.subscriber", "--endpoint", ready["publish_endpoint"],
                                      "--out", str(workdir / "events.jsonl")), workdir)
    procs.append(sub)
    if sub.wait_json("ready", 60) is None:
        raise FusionError(f"{what}: the subscriber saw no stats from the node:\n{sub.error()}")
    return node, ready, sub, t_ready


def _run(workdir, procs, rigs, duration_s, warmup_s, provider, manifest, deadline_ms, frame_size, radar_points,
         shm, progress, label, wait_for_audio=True, io_binding=False) -> dict:
    cfg = _rig_config(rigs, workdir, manifest, provider, deadline_ms, wait_for_audio, io_binding)
    node, ready, sub, t_ready = start_node(workdir, procs, cfg)
    events_path = workdir / "events.jsonl"

    # Publishers go on for a moment after the window, so the window's last sets find the radar
    # frame and audio chunk that follow them, as every set in a continuous stream does.
    seconds = warmup_s + duration_s + TAIL_S
    synths = {}
    for kind, prefix in (("camera", "cam"), ("radar", "radar"), ("audio", "mic")):
        letter = {"camera": "c", "radar": "r", "audio": "a"}[kind]
        argv = ["-m", "bench.synth", "--kind", kind, "--seconds", str(seconds),
                "--size", f"{frame_size[0]}x{frame_size[1]}", "--points", str(radar_points)]
        for i in range(rigs):
            argv += ["--sensor", f"{prefix}{i}=ipc://{workdir}/{letter}{i}.sock"]
        if not shm:
            argv.append("--no-shm")
        synths[kind] = _Proc(f"synth-{kind}", _python(*argv), workdir)
        procs.append(synths[kind])
    for kind, p in synths.items():
        if p.wait_json("ready", 60) is None:
            raise FusionError(f"bench: the {kind} publisher did not start:\n{p.error()}")

    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=round(seconds + 0.2, 1), unit="s", desc=label or f"{rigs} rig(s)", leave=False,
                       bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s")
        except ImportError:
            bar = None
    done = {}
    t_bar = time.monotonic()
    deadline = time.monotonic() + seconds + 60
    cpu_before = node.cpu_seconds()
    t_cpu0 = time.monotonic()
    while len(done) < len(synths) and time.monotonic() < deadline:
        for kind, p in synths.items():
            if kind in done:
                continue
            msg = p.wait_json("done", 0.25 / len(synths))
            if msg is not None:
                done[kind] = msg
            elif p.p.poll() not in (None, 0):
                raise FusionError(f"bench: the {kind} publisher died:\n{p.error()}")
        if bar is not None:
            bar.update(min(bar.total, round(time.monotonic() - t_bar, 1)) - bar.n)
        if node.p.poll() is not None:
            raise FusionError(f"bench: the node died:\n{node.error()}")
    if bar is not None:
        bar.close()
    if len(done) < len(synths):
        raise FusionError("bench: the publishers did not finish in time")
    node_cpu = None
    cpu_after = node.cpu_seconds()
    if cpu_before is not None and cpu_after is not None:
        node_cpu = round(100.0 * (cpu_after - cpu_before) / max(1e-9, time.monotonic() - t_cpu0), 1)
    # Sets still pending are released by their deadline at the latest: let them through.
    drain_s = (deadline_ms if deadline_ms is not None else 200.0) / 1000.0 + 0.3
    node.wait_json("never", drain_s)  # a bounded wait for stragglers, not a synchronisation
    sub.p.send_signal(signal.SIGINT)
    sub_done = sub.wait_json("done", 30) or {}
    node.p.send_signal(signal.SIGINT)
    final = node.wait_json("final_stats", 30) or {}
    for p in (sub, node, *synths.values()):
        p.stop(10)

    return _analyse(events_path, rigs, done, ready, node, t_ready, warmup_s, duration_s, final, sub_done, node_cpu,
                    shm)


def _expected_frames(rigs: int, t0: int, t_lo: int, t_hi: int, t_end: int) -> dict[str, set[int]]:
    """Per rig, the intended capture times of camera frames inside [t_lo, t_hi) (and before t_end)."""
    out = {}
    for i in range(rigs):
        phase = t0 + (i * CAMERA_PERIOD_NS) // rigs
        times = set()
        k = 0
        while True:
            t = phase + k * CAMERA_PERIOD_NS
            if t >= min(t_hi, t_end):
                break
            if t >= t_lo:
                times.add(t)
            k += 1
        out[f"rig{i}"] = times
    return out


def _analyse(events_path: Path, rigs: int, done: dict, ready: dict, node: _Proc, t_ready: int, warmup_s: float,
             duration_s: float, final: dict, sub_done: dict, node_cpu: float | None, shm: bool) -> dict:
    t0 = done["camera"]["t0_ns"]
    t_end = t0 + int((warmup_s + duration_s) * 1e9)  # the window ends TAIL_S before the publishers stop
    t_lo = t0 + int(warmup_s * 1e9)
    expected = _expected_frames(rigs, t0, t_lo, t_end, t_end)
    e2e, e2e_miss, e2e_nosync, e2e_node, deliver = (LatencyHistogram() for _ in range(5))
    stages = {name: LatencyHistogram() for _, name in STAGES}
    first_arrival = None
    got: dict[str, set[int]] = {r: set() for r in expected}
    # Where in the 100 ms cycle the three streams share (30, 20 and 50 Hz) a camera frame falls
    # decides what its set waits for: this splits e2e by that phase.
    by_phase: dict[str, dict[str, LatencyHistogram]] = {}
    offsets = {f"rig{i}": (i * CAMERA_PERIOD_NS) // rigs for i in range(rigs)}
    events_total = 0
    missing_modal: Counter = Counter()
    with open(events_path) as f:
        for line in f:
            ev = json.loads(line)
            events_total += 1
            if first_arrival is None or ev["t_arrival_ns"] < first_arrival:
                first_arrival = ev["t_arrival_ns"]
            t_cam = ev["t_camera_ns"]
            if t_cam is None or t_cam not in expected.get(ev["rig"], ()):
                continue  # warm-up, or after the window
            if t_cam in got[ev["rig"]]:
                continue
            got[ev["rig"]].add(t_cam)
            lat = ev["latency_ms"]
            total = (ev["t_arrival_ns"] - ev["t_newest_ns"]) / 1e6
            e2e.record(total)
            e2e_miss.record(total)
            # The part of the sync wait spent after the newest member was captured: a set whose
            # newest member came after its reference frame waited for that member, and that wait
            # is not inside e2e (which starts at the newest member's capture).
            after_newest = max(0.0, lat.get("sync_wait", 0.0) - (ev["t_newest_ns"] - ev["t_ref_ns"]) / 1e6)
            e2e_nosync.record(total - after_newest)
            phase = f"{round(((t_cam - t0 - offsets[ev['rig']]) % 100_000_000) / 1e6, 1) % 100.0:g}"
            ph = by_phase.setdefault(phase, {"e2e": LatencyHistogram(), "sync_wait": LatencyHistogram()})
            ph["e2e"].record(total)
            ph["sync_wait"].record(lat.get("sync_wait", 0.0))
            if "e2e" in lat:
                e2e_node.record(lat["e2e"])
            deliver.record((ev["t_arrival_ns"] - ev["t_publish_ns"]) / 1e6)
            for key, name in STAGES:
                if key in lat:
                    stages[name].record(lat[key])
            for m in ev["missing"]:
                missing_modal[m.rstrip("0123456789")] += 1
    stages["deliver"] = deliver
    n_expected = sum(len(v) for v in expected.values())
    n_got = sum(len(v) for v in got.values())
    misses = n_expected - n_got
    e2e_miss.record_miss(misses)

    per_rig_stats = final.get("rigs") or ({final["rig"]: final} if "rig" in final else {})
    dropped = seq_gaps = 0
    rejected: Counter = Counter()
    released_deadline = 0
    for st in per_rig_stats.values():
        for s in st.get("sensors", {}).values():
            dropped += s.get("dropped", 0)
            seq_gaps += s.get("seq_gaps", 0)
            rejected.update(s.get("rejected", {}))
        rejected.update(st.get("rejected_unattributed", {}))
        released_deadline += st.get("sync", {}).get("released_deadline", 0)

    return {
        "rigs": rigs,
        "e2e_ms": e2e.summary(),
        "e2e_with_misses_ms": e2e_miss.summary(),
        "e2e_excl_sync_wait_ms": e2e_nosync.summary(),
        "e2e_to_node_publish_ms": e2e_node.summary(),
        "stages_ms": {name: h.summary() for name, h in stages.items()},
        "e2e_by_camera_phase_ms": {k: {"e2e": v["e2e"].summary(), "sync_wait": v["sync_wait"].summary()}
                                   for k, v in sorted(by_phase.items(), key=lambda kv: float(kv[0]))},
        "drops": misses,
        "drops_detail": {
            "frames_expected": n_expected, "events_in_window": n_got, "missed": misses,
            "node_buffer_dropped": dropped, "seq_gaps": seq_gaps, "rejected": dict(rejected),
            "sets_released_at_deadline": released_deadline,
            "events_with_missing_modality": dict(missing_modal),
        },
        "events_total": events_total,
        "events_seen_by_subscriber": sub_done.get("events"),
        "cold_start": {
            "node_ready_ms": round((t_ready - node.t_spawn_ns) / 1e6, 1),
            "model_load_ms": ready.get("model_load_ms"),
            "first_event_ms": None if first_arrival is None else round((first_arrival - t0) / 1e6, 3),
        },
        "publishers": {k: {"behind_max_ms": v.get("behind_max_ms"), "shm": v.get("shm"),
                           "sent": sum(v.get("sent", {}).values())} for k, v in done.items()},
        "node_cpu_percent": node_cpu,
        "shm": shm,
        "provider": ready.get("provider"),
        "provider_note": ready.get("provider_note"),
        "cdf": {"e2e": e2e.cdf(), "e2e_excl_sync_wait": e2e_nosync.cdf()},
    }


def realtime(result: dict) -> bool:
    p99 = result["e2e_with_misses_ms"]["p99"]
    return p99 is not None and p99 <= FRAME_PERIOD_MS


def find_max_rigs(run: Callable[[int], dict], limit: int = 64, log: Callable[[str], None] = print) -> dict:
    """Largest N with ``realtime(run(N))``: double until it fails, then bisect. ``run(N)`` runs N rigs."""
    trials = []

    def trial(n: int) -> bool:
        res = run(n)
        ok = realtime(res)
        trials.append({"rigs": n, "p99_ms": res["e2e_with_misses_ms"]["p99"], "p50_ms": res["e2e_ms"]["p50"],
                       "misses": res["drops"], "node_cpu_percent": res.get("node_cpu_percent"), "realtime": ok})
        log(f"bench: {n} rig(s): e2e p99 {res['e2e_with_misses_ms']['p99']} ms (misses counted), "
            f"{'within' if ok else 'over'} {FRAME_PERIOD_MS:.1f} ms")
        return ok

    good, bad = 0, None
    n = 1
    while n <= limit:
        if trial(n):
            good = n
            n *= 2
        else:
            bad = n
            break
    if bad is not None:
        lo, hi = good, bad
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if trial(mid):
                lo = mid
            else:
                hi = mid
        good = lo
    return {"max_rigs_realtime": good, "limit": limit, "trials": trials, "criterion":
            f"e2e p99 (misses counted as infinitely late) <= {FRAME_PERIOD_MS:.1f} ms"}
