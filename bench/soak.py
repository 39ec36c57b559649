"""Soak: the real node at nominal rates for a long run, its memory sampled, growth bounded.

``python -m bench.soak --duration 600 --json bench/results/soak-DATE.json`` starts the same
processes as ``fusion bench`` (:mod:`bench.run`): the node on a generated one-rig config with the
shipped models, the independent subscriber and the three synthetic publishers at nominal rates
(camera 640x480 at 30 Hz through the shared-memory ring, radar 256 points at 20 Hz, audio 20 ms
chunks at 50 Hz), open loop. Every ``--sample`` seconds it reads the node's ``/proc/PID/status``
(VmRSS and its anonymous, file and shared-memory parts) and counts its open file descriptors
and threads.

Verdict: after ``--warmup`` seconds (model arenas, the shared-memory ring's pages and the
latency windows reach their steady size), the median RSS of the last minute may exceed the
median of the first minute after warm-up by at most :data:`BOUND_MIB`. Why that bound: the
node receives 100 messages a second; over the 9 measured minutes of the 10-minute soak that is
54,000 messages, so 8 MiB is about 155 bytes per message. The leak the node once had (a
per-``sensor_id`` entry left for each forged handle) kept about 236 bytes per message; a leak of
anything a message creates (a dict entry, an array header, a lease) is at least that size and
would fail the soak, while allocator noise (a few hundred KiB either way, measured) stays far
below it. File descriptors and threads must not grow at all.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from fusion_node.errors import FusionError

from .machine import load_average, machine_info
from .run import ROOT, _Proc, _python, _rig_config, start_node

__all__ = ["soak", "node_memory", "verdict", "BOUND_MIB", "main"]

BOUND_MIB = 8.0
DEFAULT_MODELS = ROOT / "models" / "default" / "manifest.json"
_FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM", "Threads")


def node_memory(pid: int) -> dict:
    """The memory fields of ``/proc/PID/status`` (kB, as the kernel gives them), threads and open fds."""
    out: dict = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in _FIELDS:
                out[key] = int(value.split()[0])
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def _window_median(samples: list[dict], key: str, t_lo: float, t_hi: float) -> float:
    values = [s[key] for s in samples if t_lo <= s["t_s"] < t_hi]
    return float(statistics.median(values)) if values else float("nan")


def verdict(samples: list[dict], warmup_s: float, window_s: float = 60.0, bound_mib: float = BOUND_MIB) -> dict:
    """Growth of the node's RSS (and parts) from the first window after warm-up to the last window."""
    t_end = samples[-1]["t_s"]
    window_s = min(window_s, max(1e-9, (t_end - warmup_s) / 3))  # short runs: thirds of what is measured
    first = (warmup_s, warmup_s + window_s)
    last = (t_end - window_s + 1e-9, t_end + 1)
    out: dict = {"warmup_s": warmup_s, "window_s": round(window_s, 1), "bound_mib": bound_mib}
    for key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
        a, b = _window_median(samples, key, *first), _window_median(samples, key, *last)
        out[key] = {"after_warmup_mib": round(a / 1024, 2), "end_mib": round(b / 1024, 2),
                    "growth_mib": round((b - a) / 1024, 2)}
    measured = [s for s in samples if s["t_s"] >= warmup_s]
    if len(measured) >= 2:
        ts = [s["t_s"] for s in measured]
        rss = [s["VmRSS"] / 1024 for s in measured]
        slope = statistics.linear_regression(ts, rss).slope if len(set(ts)) > 1 else 0.0
        out["VmRSS"]["slope_mib_per_hour"] = round(slope * 3600, 2)
    out["fds"] = {"after_warmup": measured[0]["fds"], "end": samples[-1]["fds"]} if measured else {}
    out["threads"] = {"after_warmup": measured[0]["Threads"], "end": samples[-1]["Threads"]} if measured else {}
    out["ok"] = bool(measured) and out["VmRSS"]["growth_mib"] <= bound_mib \
        and out["fds"]["end"] <= out["fds"]["after_warmup"] and out["threads"]["end"] <= out["threads"]["after_warmup"]
    return out


def soak(duration_s: float = 600.0, warmup_s: float | None = None, sample_s: float = 5.0,
         manifest: Path | None = DEFAULT_MODELS, provider: str = "cpu", log=print) -> dict:
    """Run the pipeline for ``duration_s`` sampling the node; returns samples, stats and the verdict."""
    warmup_s = min(60.0, duration_s / 5) if warmup_s is None else warmup_s
    if duration_s <= warmup_s:
        raise FusionError(f"soak: --duration ({duration_s} s) must exceed the warm-up ({warmup_s} s)")
    workdir = Path(tempfile.mkdtemp(prefix="fzs-"))
    procs: list[_Proc] = []
    try:
        return _soak(workdir, procs, duration_s, warmup_s, sample_s, manifest, provider, log)
    finally:
        for p in reversed(procs):
            p.stop(5)
        shutil.rmtree(workdir, ignore_errors=True)


def _soak(workdir, procs, duration_s, warmup_s, sample_s, manifest, provider, log) -> dict:
    node, ready, sub, _ = start_node(workdir, procs, _rig_config(1, workdir, manifest, provider, None), "soak")
    synths = {}
    for kind, sid, letter in (("camera", "cam0", "c"), ("radar", "radar0", "r"), ("audio", "mic0", "a")):
        synths[kind] = _Proc(f"synth-{kind}", _python("-m", "bench.synth", "--kind", kind, "--seconds",
                                                      str(duration_s), "--sensor", f"{sid}=ipc://{workdir}/{letter}0.sock"),
                             workdir)
        procs.append(synths[kind])
    for kind, p in synths.items():
        if p.wait_json("ready", 60) is None:
            raise FusionError(f"soak: the {kind} publisher did not start:\n{p.error()}")

    t0 = time.monotonic()
    samples = []
    next_log = 0.0
    camera = synths["camera"]
    done = None
    while done is None:
        if node.p.poll() is not None:
            raise FusionError(f"soak: the node died:\n{node.error()}")
        t = time.monotonic() - t0
        samples.append({"t_s": round(t, 2), **node_memory(node.p.pid)})
        if t >= next_log:
            log(f"soak: {t:6.0f} s  node RSS {samples[-1]['VmRSS'] / 1024:7.1f} MiB  fds {samples[-1]['fds']}")
            next_log += 60.0
        # The camera publisher's end is the soak's end; waiting for it is the sampling period.
        done = camera.wait_json("done", sample_s)
        if done is None and time.monotonic() - t0 > duration_s + 120:
            raise FusionError("soak: the camera publisher did not finish in time")
    samples.append({"t_s": round(time.monotonic() - t0, 2), **node_memory(node.p.pid)})
    sent = {kind: (p.wait_json("done", 30) or {}).get("sent", {}) for kind, p in synths.items() if kind != "camera"}
    sent["camera"] = done.get("sent", {})
    sub.p.send_signal(signal.SIGINT)
    sub_done = sub.wait_json("done", 30) or {}
    node.p.send_signal(signal.SIGINT)
    final = node.wait_json("final_stats", 30) or {}
    return {"samples": samples, "verdict": verdict(samples, warmup_s), "sent": sent,
            "events": sub_done.get("events"), "final_stats": final, "node_cpu_s": node.cpu_seconds(),
            "ready": {k: ready.get(k) for k in ("provider", "models", "trained", "model_load_ms")}}


def _summary(samples: list[dict]) -> dict:
    rss = [s["VmRSS"] / 1024 for s in samples]
    return {"n": len(samples), "min_mib": round(min(rss), 2), "max_mib": round(max(rss), 2),
            "first_mib": round(rss[0], 2), "last_mib": round(rss[-1], 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=600.0, metavar="S", help="soak length (default 600)")
    p.add_argument("--warmup", type=float, default=None, metavar="S",
                   help="seconds before growth is measured (default: 60, or a fifth of a shorter soak)")
    p.add_argument("--sample", type=float, default=5.0, metavar="S", help="RSS sampling period (default 5)")
    p.add_argument("--models", default=str(DEFAULT_MODELS), metavar="MANIFEST",
                   help="model bundle (default: the shipped models; 'none': synchronisation only)")
    p.add_argument("--json", default=None, metavar="FILE", help="write the figures here")
    args = p.parse_args(argv)
    command = " ".join(["python -m bench.soak", *(argv if argv is not None else sys.argv[1:])])
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    load_before = load_average()
    try:
        result = soak(args.duration, args.warmup, args.sample, None if args.models == "none" else Path(args.models))
    except FusionError as exc:
        print(f"soak: error: {exc}", file=sys.stderr)
        return 1
    result.update(command=command, started=started, duration_s=args.duration, sample_s=args.sample,
                  rss_summary=_summary(result["samples"]),
                  machine={**machine_info(result["ready"]["provider"]), "load_average_start": load_before,
                           "load_average_end": load_average()})
    v = result["verdict"]
    print(json.dumps({"verdict": v, "rss_summary": result["rss_summary"], "events": result["events"]}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if v["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
