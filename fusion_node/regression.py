"""Regression tests from a recording, as openpilot's process_replay does.

A small recording of the bundled samples, made once through the real processes (sensor
readers, node, recorder), is committed with the events the core makes of it
(``tests/data/regression/``). The check runs the recording through the core again
(:func:`fusion_node.replay.through_core`: deterministic, no sockets) and compares the events
with the reference within tolerances: the same sets (members) with the same missing sensors,
every class score and the consistency within ``TOLERANCE``, the same labels and alerts (a label
may differ only where its smoothed score sits within the tolerance of its hysteresis band, from
the release level to the threshold, where its state depends on the sets before; the
``modalities_disagree`` alert only where the consistency sits within the tolerance of its
threshold). Anything else is printed as a difference.

    python -m fusion_node.regression                      # check; exit 1 and the diff if it differs
    python -m fusion_node.regression --update-reference   # an intended change: new reference
    python -m fusion_node.regression --refresh            # new recording of the bundled samples, new reference

``--refresh`` records the samples in ``sensors/samples`` as they are now, so it is the command
to run after the samples or the sensor readers change.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable, Sequence

import yaml
import zmq

from .config import LabelsConfig
from .manifest import file_sha256, load_manifest
from .recording import Recording
from .replay import reference_key, resolve_models, through_core
from .wire import decode_map

__all__ = ["TOLERANCE", "RECORDING", "REFERENCE", "summarise", "make_reference", "write_reference", "compare",
           "check", "record_case", "main"]

ROOT = Path(__file__).resolve().parents[1]
CASE_DIR = ROOT / "tests" / "data" / "regression"
RECORDING = CASE_DIR / "bundled.mcap"
REFERENCE = CASE_DIR / "bundled.reference.json"
# Float differences allowed between machines (CPU instruction sets, library versions).
TOLERANCE = {"score": 0.02, "consistency": 0.02}
MAX_DIFF_LINES = 40

# The case: a few seconds of the bundled samples, small enough to commit (JPEG, a quarter size).
CASE_SECONDS = 6.0
CASE_CAMERA = ("--jpeg", "80", "--resize", "384x216", "--fps", "10")


def summarise(event: dict) -> dict:
    """The parts of an event a regression compares (no times the node measures)."""
    return {"key": list(reference_key(event) or ()), "t_ref_ns": event["t_ref_ns"],
            "members": [[m["sensor_id"], m["seq"]] for m in event["members"]], "missing": event["missing"],
            "labels": [[d["label"], d["score"]] for d in event["labels"]], "scores": event.get("scores"),
            "smoothed": event.get("smoothed"), "consistency": event.get("consistency"), "alerts": event.get("alerts", [])}


def make_reference(recording: Path, models: str = "default") -> dict:
    """The reference of a recording: its events through the core, with what judging them needs."""
    manifest = resolve_models(models, None)
    with Recording(recording) as rec:
        events = [summarise(ev) for ev in through_core(rec, models=models)]
    info = load_manifest(manifest) if manifest is not None else None
    return {"recording": recording.name, "recording_sha256": file_sha256(recording),
            "models": None if info is None else info.name,
            "thresholds": None if info is None else dict(info.thresholds),
            "consistency_threshold": None if info is None else info.consistency_threshold,
            "release_ratio": LabelsConfig().release_ratio, "tolerance": dict(TOLERANCE), "events": events}


def write_reference(reference: dict, path: Path) -> Path:
    """JSON with one event per line, so that a refreshed reference reads well in a diff."""
    head = {k: v for k, v in reference.items() if k != "events"}
    lines = [json.dumps(head, indent=1)[:-2] + ',\n "events": [']
    lines.append(",\n".join("  " + json.dumps(ev) for ev in reference["events"]))
    lines.append(" ]\n}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


def _near(value: float | None, threshold: float | None, tol: float) -> bool:
    return value is not None and threshold is not None and abs(value - threshold) <= tol


def _in_band(value: float | None, band: tuple[float, float | None], tol: float) -> bool:
    low, high = band
    return value is not None and high is not None and low - tol <= value <= high + tol


def compare(reference: dict, events: Iterable[dict]) -> list[str]:
    """Differences between the reference and ``events`` (summarised or whole), one line each."""
    tol = reference.get("tolerance", TOLERANCE)
    thresholds = reference.get("thresholds") or {}
    got = {}
    for ev in events:
        s = ev if "key" in ev else summarise(ev)
        got[tuple(s["key"])] = s
    diffs: list[str] = []
    t0 = reference["events"][0]["t_ref_ns"] if reference["events"] else 0
    seen = set()
    for ref in reference["events"]:
        key = tuple(ref["key"])
        seen.add(key)
        where = f"event {key[1]}#{key[2]} (t_ref +{(ref['t_ref_ns'] - t0) / 1e9:.2f} s)"
        ev = got.get(key)
        if ev is None:
            diffs.append(f"{where}: missing (the reference has it)")
            continue
        for field in ("members", "missing"):
            if ev[field] != ref[field]:
                diffs.append(f"{where}: {field} {ev[field]} != reference {ref[field]}")
        scores, ref_scores = ev.get("scores") or {}, ref.get("scores") or {}
        for cls in sorted(set(scores) | set(ref_scores)):
            a, b = scores.get(cls), ref_scores.get(cls)
            if a is None or b is None or abs(a - b) > tol["score"]:
                diffs.append(f"{where}: score {cls} {a} != reference {b} (tolerance {tol['score']})")
        labels = {name for name, _ in ev["labels"]}
        ref_labels = {name for name, _ in ref["labels"]}
        smoothed, ref_smoothed = ev.get("smoothed") or scores, ref.get("smoothed") or ref_scores
        for name in sorted(labels ^ ref_labels):
            band = (thresholds.get(name, 0.0) * reference.get("release_ratio", 1.0), thresholds.get(name))
            if not (_in_band(smoothed.get(name), band, tol["score"])
                    or _in_band(ref_smoothed.get(name), band, tol["score"])):
                diffs.append(f"{where}: label {name} {'added' if name in labels else 'lost'} "
                             f"(smoothed score {smoothed.get(name)}, reference {ref_smoothed.get(name)}, "
                             f"threshold {thresholds.get(name)})")
        a, b = ev.get("consistency"), ref.get("consistency")
        if (a is None) != (b is None) or (a is not None and abs(a - b) > tol["consistency"]):
            diffs.append(f"{where}: consistency {a} != reference {b} (tolerance {tol['consistency']})")
        cthr, ctol = reference.get("consistency_threshold"), tol["consistency"]
        for alert in sorted(set(ev["alerts"]) ^ set(ref["alerts"])):
            if alert == "modalities_disagree" and (_near(a, cthr, ctol) or _near(b, cthr, ctol)):
                continue
            diffs.append(f"{where}: alert {alert} {'added' if alert in ev['alerts'] else 'lost'}")
    for key in sorted(set(got) - seen, key=str):
        diffs.append(f"event {key[1]}#{key[2]}: not in the reference")
    return diffs


def check(recording: Path = RECORDING, reference: Path = REFERENCE) -> list[str]:
    """Run the recording through the core and compare with the reference; the differences."""
    ref = json.loads(Path(reference).read_text())
    diffs = []
    if ref.get("recording_sha256") != file_sha256(Path(recording)):
        diffs.append(f"{recording}: not the recording the reference was made from (sha256 differs): "
                     f"refresh both with python -m fusion_node.regression --refresh")
    with Recording(recording) as rec:
        return diffs + compare(ref, through_core(rec, models="default"))


# -- making the recording -----------------------------------------------------------------------

def _spawn(log_dir: Path, name: str, *args: str, stdout: bool = False) -> subprocess.Popen:
    with open(log_dir / f"{name}.log", "wb") as err:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "fusion_node.cli", *args], cwd=log_dir,
                                stdout=subprocess.PIPE if stdout else subprocess.DEVNULL, stderr=err,
                                stdin=subprocess.DEVNULL, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)})


def _stop(proc: subprocess.Popen, timeout_s: float = 30.0) -> int:
    if proc.poll() is None:
        proc.send_signal(2)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def record_case(out: Path, seconds: float = CASE_SECONDS, models: str = "default") -> Path:
    """Record the bundled samples (each sensor reader's default source) through the real sensor
    processes, node and recorder."""
    manifest = resolve_models(models, None)
    work = Path(tempfile.mkdtemp(prefix="fz-case-"))
    # The recording keeps the config as written: its files sit beside it under relative names, so
    # no path of this checkout ends up in the committed recording.
    shutil.copyfile(ROOT / "examples" / "rig_calibration.yaml", work / "rig_calibration.yaml")
    if manifest is not None:
        shutil.copytree(Path(manifest).parent, work / "models")
    cfg = {"rig": "bundled", "calibration_file": "rig_calibration.yaml",
           "sensors": [{"id": sid, "kind": kind, "endpoint": f"ipc://{work}/{sid}"}
                       for sid, kind in (("cam0", "camera"), ("radar0", "radar"), ("mic0", "audio"))],
           "node": {"publish_endpoint": f"ipc://{work}/events", "provider": "cpu", "max_age_s": 30.0,
                    "models": None if manifest is None else f"models/{Path(manifest).name}"}}
    cfg_path = work / "rig.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out.parent.mkdir(parents=True, exist_ok=True)
    recorder = _spawn(work, "recorder", "record", "--config", "rig.yaml", "--out", out.name, "--quiet",
                      "--wire-only", "--chunk-mib", "0.5", stdout=True)
    procs = [recorder]
    try:
        recorder.stdout.readline()  # its ready line: subscribed (the sensors wait for a subscriber)
        node = _spawn(work, "node", "node", "--config", "rig.yaml", stdout=True)
        procs.append(node)
        node.stdout.readline()
        frames = str(int(seconds * 10))
        sensors = [_spawn(work, kind, "sensor", kind, "--sensor-id", sid, "--endpoint", f"ipc://{work}/{sid}",
                          "--wait-subscriber", "30", *extra)
                   for sid, kind, extra in (("cam0", "camera", (*CASE_CAMERA, "--max-frames", frames)),
                                            ("radar0", "radar", ("--max-frames", frames)),
                                            ("mic0", "audio", ("--max-chunks", str(int(seconds * 50)))))]
        procs.extend(sensors)
        events = zmq.Context.instance().socket(zmq.SUB)
        events.setsockopt(zmq.SUBSCRIBE, b"fused")
        events.connect(cfg["node"]["publish_endpoint"])
        for proc, kind in zip(sensors, ("camera", "radar", "audio")):
            if proc.wait(seconds + 120) != 0:
                raise RuntimeError(f"the {kind} reader failed: {(work / f'{kind}.log').read_text()[-500:]}")
        # The node's last sets leave at their deadline: wait for the events to stop coming.
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 1.0:
            if events.poll(100):
                decode_map(events.recv_multipart())
                quiet_since = time.monotonic()
        events.close(0)
    finally:
        for proc in reversed(procs):
            _stop(proc)
    shutil.move(work / out.name, out)
    shutil.rmtree(work, ignore_errors=True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fusion_node.regression",
                                description="Check the committed recording's events through the core against "
                                            "their reference, or make them anew.")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--update-reference", action="store_true",
                      help="write a new reference from the committed recording (an intended change of results)")
    what.add_argument("--refresh", action="store_true",
                      help="record the bundled samples again through the real processes, then write the reference")
    p.add_argument("--recording", type=Path, default=RECORDING, help=f"default {RECORDING.relative_to(ROOT)}")
    p.add_argument("--reference", type=Path, default=REFERENCE, help=f"default {REFERENCE.relative_to(ROOT)}")
    args = p.parse_args(argv)
    if args.refresh:
        record_case(args.recording)
        print(f"recorded {args.recording} ({args.recording.stat().st_size / 2**20:.2f} MiB)")
    if args.refresh or args.update_reference:
        ref = write_reference(make_reference(args.recording), args.reference)
        print(f"wrote {ref}")
        return 0
    diffs = check(args.recording, args.reference)
    if not diffs:
        print(f"{args.recording.name}: events through the core match {args.reference.name}")
        return 0
    print(f"{args.recording.name}: {len(diffs)} difference(s) from {args.reference.name}:")
    for line in diffs[:MAX_DIFF_LINES]:
        print("  " + line)
    if len(diffs) > MAX_DIFF_LINES:
        print(f"  ... and {len(diffs) - MAX_DIFF_LINES} more")
    print("If the change is intended: python -m fusion_node.regression --update-reference "
          "(or --refresh after the samples changed)")
    return 1


if __name__ == "__main__":
    sys.exit(main())
