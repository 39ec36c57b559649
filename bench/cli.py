"""``fusion bench``: the latency benchmark, its baselines, and the JSON + HTML report.

``add_parser(sub)`` registers the subcommand on the ``fusion`` command's subparsers. With
``--compare OLD`` it times the ``--models`` bundle against another instead (:mod:`bench.compare`).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shlex
import sys
import time
from pathlib import Path

from fusion_node.errors import FusionError
from fusion_node.manifest import load_manifest
from fusion_node.paths import SHIPPED_MODELS
from sensors.camera import parse_size

from . import compare, machine, report, transport
from .models import fused_step_baseline, gpu_step_baseline, prepare
from .run import find_max_rigs, run_pipeline

__all__ = ["add_parser", "run"]

TARGETS = {
    "e2e_p50_ms": 4.0,
    "e2e_p99_ms": 10.0,
    "ort_speedup_over_torch": 2.0,
    "shm_speedup_over_zmq_copy_1080p": 5.0,
}


def add_parser(sub) -> argparse.ArgumentParser:
    b = sub.add_parser(
        "bench", help="measure end-to-end and per-stage latency of the real processes",
        description="Run synthetic sensor publishers (camera 640x480 at 30 Hz, radar up to 256 points at 20 Hz, "
                    "audio 16 kHz in 20 ms chunks), the node and an independent subscriber as real processes, "
                    "open loop; report end-to-end and per-stage latency percentiles, drops and cold start; "
                    "time torch eager vs onnxruntime on the fused step and ZeroMQ (copy, zero-copy), the "
                    "shared-memory path, eCAL and Zenoh moving camera frames between two processes. Writes "
                    "JSON (--json) and a self-contained HTML report (--report).")
    b.add_argument("--rigs", type=int, default=1, metavar="N", help="rigs served by the one node (default 1)")
    b.add_argument("--duration", type=float, default=20.0, metavar="S",
                   help="measured seconds, after the warm-up (default 20)")
    b.add_argument("--warmup", type=float, default=2.0, metavar="S", help="seconds excluded at the start (default 2)")
    b.add_argument("--provider", default="cpu", choices=["cpu", "cuda", "tensorrt"],
                   help="onnxruntime execution provider (default cpu)")
    b.add_argument("--json", metavar="FILE", default=None, help="write the results here")
    b.add_argument("--report", metavar="DIR", default=None, help="write the HTML report (index.html) here")
    b.add_argument("--find-max-rigs", action="store_true",
                   help="also search the largest rig count whose e2e p99 stays within one camera frame (33.3 ms)")
    b.add_argument("--max-rigs-limit", type=int, default=32, metavar="N", help="search no further than N rigs")
    b.add_argument("--search-duration", type=float, default=None, metavar="S",
                   help="measured seconds per search trial (default: --duration, at most 10)")
    b.add_argument("--deadline-ms", type=float, default=None, metavar="MS",
                   help="sync.deadline_ms of the generated rigs (default: the config default, 200)")
    b.add_argument("--no-audio-wait", action="store_true",
                   help="generated rigs set sync.wait_for_audio: false (sets leave without waiting for the audio "
                        "chunk that covers the camera frame)")
    b.add_argument("--size", type=parse_size, default=(640, 480), metavar="WxH", help="camera frame size (default 640x480)")
    b.add_argument("--radar-points", type=int, default=256, metavar="N", help="radar points per frame, at most")
    b.add_argument("--no-shm", action="store_true", help="send camera frames as plain ZeroMQ frames")
    b.add_argument("--models", default=None, metavar="MANIFEST",
                   help="model bundle for the node (default: an untrained bundle exported from the same torch "
                        "modules the torch baseline runs)")
    b.add_argument("--no-baselines", action="store_true", help="skip the torch vs onnxruntime fused-step baseline")
    b.add_argument("--no-transports", action="store_true", help="skip the transport comparison")
    b.add_argument("--transport-frames", type=int, default=300, metavar="N",
                   help="frames per transport and size (default 300, at 60 Hz)")
    b.add_argument("--iobinding", action="store_true",
                   help="GPU providers: run the node on the IO-binding runtime (device buffers, CUDA graphs; "
                        "fusion_node.gpu_runtime) and time it in the fused-step baseline too")
    b.add_argument("--compare", default=None, metavar="MANIFEST",
                   help="time the --models bundle against this one instead: pipeline runs in pairs, the order "
                        "alternating, each figure judged as the ratio within its pair (no baselines, transports "
                        "or rig search)")
    b.add_argument("--pairs", type=int, default=5, metavar="N", help="with --compare: pairs of runs (default 5)")
    b.add_argument("--tolerance", type=float, default=0.05, metavar="F",
                   help="with --compare: a median ratio up to 1 + F counts as no worse (default 0.05)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=run)
    return b


def _get(d: dict, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def evaluate_targets(res: dict) -> dict:
    """Each target, the value reached, and whether it is met (None where not measured)."""
    out = {}
    p50, p99 = _get(res, "e2e_ms", "p50"), _get(res, "e2e_with_misses_ms", "p99")
    out["e2e_p50_ms"] = {"target": f"<= {TARGETS['e2e_p50_ms']}", "value": p50,
                         "met": None if p50 is None else p50 <= TARGETS["e2e_p50_ms"]}
    out["e2e_p99_ms"] = {"target": f"<= {TARGETS['e2e_p99_ms']}", "value": p99,
                         "met": None if p99 is None else p99 <= TARGETS["e2e_p99_ms"]}
    sp = _get(res, "baselines", "speedup_p50")
    out["ort_speedup_over_torch"] = {"target": f">= {TARGETS['ort_speedup_over_torch']}", "value": sp,
                                     "met": None if sp is None else sp >= TARGETS["ort_speedup_over_torch"]}
    shm = _get(res, "transport", "shm", "1920x1080", "p50_ms")
    zc = _get(res, "transport", "zmq_copy", "1920x1080", "p50_ms")
    ecal = _get(res, "transport", "ecal", "1920x1080", "p50_ms")
    ratio = round(zc / shm, 2) if shm and zc else None
    out["shm_speedup_over_zmq_copy_1080p"] = {"target": f">= {TARGETS['shm_speedup_over_zmq_copy_1080p']}",
                                              "value": ratio,
                                              "met": None if ratio is None else
                                              ratio >= TARGETS["shm_speedup_over_zmq_copy_1080p"]}
    inplace = _get(res, "transport", "shm_inplace", "1920x1080", "p50_ms")
    ratio_in = round(zc / inplace, 2) if inplace and zc else None
    out["shm_inplace_speedup_over_zmq_copy_1080p"] = {
        "target": f">= {TARGETS['shm_speedup_over_zmq_copy_1080p']} (frame produced in the ring slot)",
        "value": ratio_in, "met": None if ratio_in is None else ratio_in >= TARGETS["shm_speedup_over_zmq_copy_1080p"]}
    out["shm_at_or_below_ecal_1080p"] = {"target": "shm p50 <= eCAL p50", "value": [shm, ecal],
                                         "met": None if shm is None or ecal is None else shm <= ecal}
    return out


def run(args: argparse.Namespace) -> int:
    if args.rigs < 1:
        raise FusionError("fusion bench: --rigs must be at least 1")
    if args.duration <= 0 or args.warmup < 0:
        raise FusionError("fusion bench: --duration must be > 0 and --warmup >= 0")
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    started = time.time()
    command = "fusion bench " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 1 \
        and sys.argv[1] == "bench" else "fusion bench"

    if args.compare is not None:
        return _run_compare(args, say, command, started)

    torch_models = None
    manifest = Path(args.models).resolve() if args.models else None
    if manifest is None or not args.no_baselines:
        try:
            say("bench: preparing models (exported once, then cached)")
            m, encoders, head = prepare()
            torch_models = (m, encoders, head)
            manifest = manifest or m
        except ImportError as exc:
            if manifest is None:
                manifest = SHIPPED_MODELS
            say(f"bench: torch unavailable ({exc}); no torch baseline")

    say(f"bench: {args.rigs} rig(s), {args.warmup:g} s warm-up + {args.duration:g} s measured, "
        f"provider {args.provider}")
    common = dict(manifest=manifest, **_pipeline_options(args))
    res = run_pipeline(rigs=args.rigs, duration_s=args.duration, warmup_s=args.warmup, **common)
    info = machine.machine_info(res.get("provider"), res.get("provider_note"))
    out: dict = {
        "schema": 1,
        "command": command,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": info,
        "config": _config(args, str(manifest) if manifest else None),
        **res,
        "max_rigs_realtime": None,
    }
    say(f"bench: e2e p50 {res['e2e_ms']['p50']} ms, p99 {res['e2e_with_misses_ms']['p99']} ms "
        f"(misses counted), {res['drops']} missed of {res['drops_detail']['frames_expected']} frames")

    if args.find_max_rigs:
        search_s = args.search_duration or min(args.duration, 10.0)
        say(f"bench: searching the largest real-time rig count ({search_s:g} s per trial)")
        found = find_max_rigs(lambda n: run_pipeline(rigs=n, duration_s=search_s, warmup_s=args.warmup,
                                                     label=f"{n} rig(s)", **common),
                              limit=args.max_rigs_limit, log=say)
        out["max_rigs_realtime"] = found["max_rigs_realtime"]
        out["max_rigs_search"] = found

    if not args.no_baselines and torch_models is not None:
        say("bench: fused step, torch eager vs onnxruntime")

        out["baselines"] = fused_step_baseline(*torch_models, provider=args.provider)
        if args.provider != "cpu":
            out["baselines"]["iobinding"] = gpu_step_baseline(torch_models[0], provider=args.provider)
    else:
        out["baselines"] = {"ort_step_ms": None, "torch_step_ms": None,
                            "unavailable": "skipped (--no-baselines)" if args.no_baselines else "torch not installed"}

    if not args.no_transports:
        kinds = transport.TRANSPORTS
        bar = None
        if not args.quiet:
            try:
                from tqdm import tqdm

                bar = tqdm(total=len(kinds) * len(transport.SIZES), desc="transports", leave=False)
            except ImportError:
                pass
        say("bench: moving frames between two processes: " + ", ".join(kinds))
        out["transport"] = transport.run_transports(frames=args.transport_frames, rate_hz=60.0,
                                                    progress=bar.update if bar else None)
        out["transport_versions"] = transport.versions()
        if bar:
            bar.close()
    else:
        out["transport"] = {}

    out["targets"] = evaluate_targets(out)
    out["machine"]["load_average_end"] = machine.load_average()
    out["wall_s"] = round(time.time() - started, 1)
    text = json.dumps(out, indent=2)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
        say(f"bench: results written to {args.json}")
    if args.report:
        path = report.write_report(out, Path(args.report))
        say(f"bench: report written to {path}")
    if not args.json and not args.report:
        print(text)
    else:
        _print_summary(out)
    return 0


def _pipeline_options(args: argparse.Namespace) -> dict:
    """The run_pipeline options every run of one command shares (rig count and durations aside)."""
    return dict(provider=args.provider, deadline_ms=args.deadline_ms, wait_for_audio=not args.no_audio_wait,
                frame_size=args.size, radar_points=args.radar_points, shm=not args.no_shm,
                progress=not args.quiet, io_binding=args.iobinding)


def _config(args: argparse.Namespace, models: str | None) -> dict:
    """The result's ``config``: what the runs were asked to do."""
    return {"rigs": args.rigs, "duration_s": args.duration, "warmup_s": args.warmup,
            "provider": args.provider, "deadline_ms": args.deadline_ms if args.deadline_ms else 200.0,
            "frame_size": f"{args.size[0]}x{args.size[1]}", "radar_points": args.radar_points,
            "shm": not args.no_shm, "models": models}


def _bundle(path: str) -> Path:
    """The manifest a flag names, resolved and validated (ModelError, naming the file, when it is not a bundle)."""
    manifest = Path(path).resolve()
    load_manifest(manifest)
    return manifest


def _run_compare(args: argparse.Namespace, say, command: str, started: float) -> int:
    if args.models is None:
        raise FusionError("fusion bench: --compare needs --models MANIFEST, the bundle to time against it")
    if args.pairs < 1 or args.tolerance < 0:
        raise FusionError("fusion bench: --pairs must be at least 1 and --tolerance at least 0")
    candidate, baseline = _bundle(args.models), _bundle(args.compare)
    say(f"bench: {args.pairs} pair(s) of runs, {args.warmup:g} s warm-up + {args.duration:g} s measured each, "
        f"provider {args.provider}")
    providers = set()

    def one(manifest: Path, label: str) -> dict:
        res = run_pipeline(rigs=args.rigs, duration_s=args.duration, warmup_s=args.warmup, manifest=manifest,
                           label=label, **_pipeline_options(args))
        providers.add(res.get("provider"))
        return res

    rows = compare.run_pairs(one, baseline, candidate, args.pairs, log=say)
    out = {
        "schema": 1,
        "command": command,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine.machine_info(", ".join(sorted(p for p in providers if p)) or None, None),
        "config": _config(args, args.models),
        # The bundles as the command named them: a result file says what was run, not where.
        "compare": {"baseline": args.compare, "candidate": args.models, "pairs": args.pairs,
                    "tolerance": args.tolerance, "significance": compare.SIGNIFICANCE, "runs": rows,
                    "figures": compare.summarise(rows, args.tolerance),
                    "stage_p50_ratios": compare.stage_ratios(rows)},
    }
    out["machine"]["load_average_end"] = machine.load_average()
    out["wall_s"] = round(time.time() - started, 1)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        say(f"bench: results written to {args.json}")
    if args.report:
        say(f"bench: report written to {report.write_report(out, Path(args.report))}")
    for name, f in out["compare"]["figures"].items():
        print(f"{name}: candidate / baseline median {f['median_ratio']} (range {f['min_ratio']} to "
              f"{f['max_ratio']}; {f['pairs_slower']} of {len(f['ratios'])} pairs slower by more than "
              f"{args.tolerance:g}, sign test p {f['sign_test_p']}) -> {f['verdict']}")
    print("stage p50, median ratio candidate / baseline: " + ", ".join(
        f"{k} {v}" for k, v in out["compare"]["stage_p50_ratios"].items()))
    return 0


def _print_summary(out: dict) -> None:
    e = out["e2e_ms"]
    em = out["e2e_with_misses_ms"]
    print(f"e2e (ms): p50 {e['p50']}  p90 {e['p90']}  p99 {e['p99']}  p99.9 {e['p999']}  max {e['max']}  "
          f"(n={e['n']}; with misses p99 {em['p99']})")
    print("stages p50/p99 (ms): " + ", ".join(f"{k} {v['p50']}/{v['p99']}" for k, v in out["stages_ms"].items()
                                            if v["n"]))
    print(f"drops: {out['drops']} of {out['drops_detail']['frames_expected']} frames; "
          f"cold start: {out['cold_start']}")
    b = out.get("baselines", {})
    if b.get("ort_step_ms"):
        print(f"fused step p50: onnxruntime {b['ort_step_ms']} ms, torch eager {b['torch_step_ms']} ms "
              f"({b['speedup_p50']}x)")
    for name, sizes in out.get("transport", {}).items():
        if sizes.get("available") is False:
            print(f"transport {name}: unavailable ({sizes['reason']})")
            continue
        print(f"transport {name}: " + ", ".join(f"{s} p50 {v.get('p50_ms')} p99 {v.get('p99_ms')} ms"
                                                for s, v in sizes.items()))
    if out.get("max_rigs_realtime") is not None:
        print(f"max rigs in real time: {out['max_rigs_realtime']}")
    for k, t in out["targets"].items():
        print(f"target {k}: {t['target']}, got {t['value']} -> {'met' if t['met'] else 'missed' if t['met'] is False else 'n/a'}")
