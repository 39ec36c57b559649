"""The HTML report: one self-contained file, charts drawn as inline SVG (nothing fetched at view time)."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from .run import FRAME_PERIOD_MS

__all__ = ["render", "render_compare", "write_report"]

COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1080px;color:#222;padding:0 16px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.met{color:#18794e;font-weight:600}.missed{color:#b42318;font-weight:600}.note{color:#555;font-size:13px}
svg text{font:11px system-ui,sans-serif}code{background:#f4f4f4;padding:1px 4px}
"""


def _e(x) -> str:
    return html.escape(str(x))


def _fmt(v, unit: str = "") -> str:
    if v is None:
        return "&ndash;"
    if isinstance(v, float):
        return f"{v:.3g}{unit}" if abs(v) < 100 else f"{v:.1f}{unit}"
    return f"{_e(v)}{unit}"


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cdf_svg(series: dict[str, list], marks: dict[str, float], width: int = 760, height: int = 320) -> str:
    """Latency CDF: log-scaled x (ms), y = fraction of events at or below."""
    pts = [p for s in series.values() for p in s if p[0] > 0]
    if not pts:
        return "<p class=note>no events recorded</p>"
    lo = max(0.05, min(p[0] for p in pts))
    hi = max(max(p[0] for p in pts), *marks.values()) * 1.1
    lx0, lx1 = math.log10(lo), math.log10(hi)
    ml, mr, mt, mb = 50, 20, 12, 36
    w, h = width - ml - mr, height - mt - mb

    def x(v):
        return ml + (math.log10(max(v, lo)) - lx0) / (lx1 - lx0) * w

    def y(f):
        return mt + (1 - f) * h

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
             f'<rect x="{ml}" y="{mt}" width="{w}" height="{h}" fill="none" stroke="#ccc"/>']
    for frac in (0, 0.25, 0.5, 0.75, 0.9, 1.0):
        parts.append(f'<line x1="{ml}" x2="{ml + w}" y1="{y(frac):.1f}" y2="{y(frac):.1f}" stroke="#eee"/>'
                     f'<text x="{ml - 6}" y="{y(frac) + 4:.1f}" text-anchor="end">{frac:g}</text>')
    decade = math.floor(lx0)
    while decade <= lx1:
        for m in (1, 2, 5):
            v = m * 10 ** decade
            if lo <= v <= hi:
                parts.append(f'<line x1="{x(v):.1f}" x2="{x(v):.1f}" y1="{mt}" y2="{mt + h}" stroke="#eee"/>'
                             f'<text x="{x(v):.1f}" y="{mt + h + 14}" text-anchor="middle">{v:g}</text>')
        decade += 1
    parts.append(f'<text x="{ml + w / 2}" y="{height - 4}" text-anchor="middle">latency (ms, log scale)</text>')
    for i, (name, val) in enumerate(marks.items()):
        right = x(val) > ml + w - 110  # near the right edge: label on the line's left
        parts.append(f'<line x1="{x(val):.1f}" x2="{x(val):.1f}" y1="{mt}" y2="{mt + h}" stroke="#999" '
                     f'stroke-dasharray="4 3"/><text x="{x(val) + (-3 if right else 3):.1f}" y="{mt + 12 + 12 * i}" '
                     f'text-anchor="{"end" if right else "start"}" fill="#666">{_e(name)}</text>')
    for i, (name, s) in enumerate(series.items()):
        if not s:
            continue
        d = " ".join(f"{x(v):.1f},{y(f):.1f}" for v, f in s)
        c = COLOURS[i % len(COLOURS)]
        parts.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="{d}"/>'
                     f'<rect x="{ml + 10}" y="{mt + h - 18 - 16 * i}" width="12" height="3" fill="{c}"/>'
                     f'<text x="{ml + 26}" y="{mt + h - 14 - 16 * i}">{_e(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _bars_svg(rows: list[tuple[str, dict[str, float | None]]], keys: list[str], unit: str = "ms",
              log: bool = False, width: int = 760) -> str:
    """Horizontal grouped bars: one group per row, one bar per key."""
    vals = [v for _, d in rows for k in keys if (v := d.get(k)) is not None and v > 0]
    if not vals:
        return "<p class=note>nothing measured</p>"
    bar_h, gap = 11, 8
    ml, mr, mt = 150, 70, 22
    height = mt + len(rows) * (len(keys) * bar_h + gap) + 24
    w = width - ml - mr
    vmax = max(vals) * 1.05
    vmin = min(vals) / 2 if log else 0.0

    def scale(v):
        if log:
            return (math.log10(max(v, vmin)) - math.log10(vmin)) / (math.log10(vmax) - math.log10(vmin)) * w
        return v / vmax * w

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    for i, k in enumerate(keys):
        c = COLOURS[i % len(COLOURS)]
        parts.append(f'<rect x="{ml + 90 * i}" y="4" width="12" height="10" fill="{c}"/>'
                     f'<text x="{ml + 90 * i + 16}" y="13">{_e(k)}</text>')
    y = mt
    for label, d in rows:
        parts.append(f'<text x="{ml - 6}" y="{y + len(keys) * bar_h / 2 + 4:.1f}" text-anchor="end">{_e(label)}</text>')
        for i, k in enumerate(keys):
            v = d.get(k)
            c = COLOURS[i % len(COLOURS)]
            if v is None:
                parts.append(f'<text x="{ml + 4}" y="{y + bar_h - 2}" fill="#999">n/a</text>')
            else:
                bw = max(1.0, scale(v))
                parts.append(f'<rect x="{ml}" y="{y}" width="{bw:.1f}" height="{bar_h - 1}" fill="{c}"/>'
                             f'<text x="{ml + bw + 4:.1f}" y="{y + bar_h - 2}">{v:.3g} {unit}</text>')
            y += bar_h
        y += gap
    parts.append(f'<text x="{ml}" y="{height - 6}" fill="#666">{"log scale" if log else "linear scale"}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _pct_row(name: str, s: dict) -> list:
    return [_e(name)] + [_fmt(s.get(k)) for k in ("p50", "p90", "p99", "p999", "max")] + [_fmt(s.get("n"))]


def _header(res: dict, title: str) -> list[str]:
    """The page's head, title and the line that says what ran where: command, date, machine, provider, load."""
    m = res.get("machine", {})
    return [f"<!doctype html><html><head><meta charset=utf-8><title>{_e(title)} {_e(res.get('date', ''))}</title>"
            f"<style>{CSS}</style></head><body>",
            f"<h1>{_e(title)}</h1>",
            f"<p><code>{_e(res.get('command', ''))}</code><br>{_e(res.get('date', ''))} &middot; "
            f"{_e(m.get('cpu'))}, {_e(m.get('cores'))} cores, {_e(m.get('memory_gib'))} GiB &middot; GPU: "
            f"{_e(', '.join(g['name'] for g in m.get('gpus', [])) or 'none')} &middot; provider "
            f"{_e(res.get('provider') or m.get('provider') or res.get('config', {}).get('provider'))} &middot; "
            f"load average at start {_e(m.get('load_average_start'))}, end {_e(m.get('load_average_end'))}</p>"]


def render(res: dict) -> str:
    m = res.get("machine", {})
    cfg = res.get("config", {})
    out = _header(res, "fusion bench")
    out.append(f"<p class=note>{_e(cfg.get('rigs'))} rig(s), {_e(cfg.get('warmup_s'))} s warm-up excluded, "
               f"{_e(cfg.get('duration_s'))} s measured; camera {_e(cfg.get('frame_size'))} at 30 Hz, radar up to "
               f"{_e(cfg.get('radar_points'))} points at 20 Hz, audio 16 kHz in 20 ms chunks; publishers open loop, "
               f"latency from the intended capture time; shared-memory frames: {_e(cfg.get('shm'))}; "
               f"sync deadline {_e(cfg.get('deadline_ms'))} ms.</p>")

    targets = res.get("targets", {})
    if targets:
        rows = []
        for k, t in targets.items():
            cls = "met" if t["met"] else "missed" if t["met"] is False else "note"
            word = "met" if t["met"] else "missed" if t["met"] is False else "not measured"
            rows.append([_e(k), _e(t["target"]), _e(t["value"]), f"<span class={cls}>{word}</span>"])
        out += ["<h2>Targets</h2>", _table(["target", "wanted", "reached", ""], rows)]

    out.append("<h2>End-to-end latency</h2>")
    out.append("<p class=note>From the intended capture time of an event's newest member (camera or radar "
               "frame) to the event's arrival at the independent subscriber process. <em>with misses</em> counts "
               "every camera frame of the window that produced no event as infinitely late (shown as "
               "&ndash;); <em>excl. sync wait</em> subtracts the part of the set's wait for its other members "
               "(mostly the 20 ms audio chunk that covers the reference time) that came after its newest member's "
               "capture: what the pipeline itself costs.</p>")
    out.append(_table(["", "p50", "p90", "p99", "p99.9", "max", "n"], [
        _pct_row("e2e", res.get("e2e_ms", {})),
        _pct_row("e2e with misses", res.get("e2e_with_misses_ms", {})),
        _pct_row("e2e excl. sync wait", res.get("e2e_excl_sync_wait_ms", {})),
        _pct_row("capture to node publish", res.get("e2e_to_node_publish_ms", {})),
    ]))
    cdf = res.get("cdf", {})
    out.append(_cdf_svg({"e2e": cdf.get("e2e", []), "e2e excl. sync wait": cdf.get("e2e_excl_sync_wait", [])},
                        {"4 ms": 4.0, "10 ms": 10.0, f"{FRAME_PERIOD_MS:.1f} ms (1 frame)": FRAME_PERIOD_MS}))

    phases = res.get("e2e_by_camera_phase_ms", {})
    if phases:
        out.append("<p class=note>By where the camera frame falls in the 100 ms cycle the three streams share "
                   "(camera every 33.3 ms, radar every 50 ms, audio chunks every 20 ms): what each set waits for "
                   "depends on it.</p>")
        out.append(_table(["camera phase (ms)", "e2e p50", "e2e p99", "sync wait p50", "sync wait p99", "n"],
                          [[_e(k), _fmt(v["e2e"].get("p50")), _fmt(v["e2e"].get("p99")),
                            _fmt(v["sync_wait"].get("p50")), _fmt(v["sync_wait"].get("p99")),
                            _fmt(v["e2e"].get("n"))] for k, v in phases.items()]))

    stages = res.get("stages_ms", {})
    out.append("<h2>Stages</h2>")
    out.append("<p class=note>transport: sensor publish &rarr; node arrival; sync_wait: reference frame arrival "
               "&rarr; set released; preprocess, each encoder and the head as the node timed them; publish: event "
               "built &rarr; sent; deliver: node send &rarr; subscriber arrival.</p>")
    out.append(_bars_svg([(k, {"p50": v.get("p50"), "p99": v.get("p99")}) for k, v in stages.items() if v.get("n")],
                         ["p50", "p99"], log=True))
    out.append(_table(["stage", "p50", "p90", "p99", "p99.9", "max", "n"],
                      [_pct_row(k, v) for k, v in stages.items()]))

    d = res.get("drops_detail", {})
    cs = res.get("cold_start", {})
    out.append("<h2>Drops, cold start, load</h2>")
    out.append(_table(["", "value"], [
        ["camera frames in the window", _fmt(d.get("frames_expected"))],
        ["events for them", _fmt(d.get("events_in_window"))],
        ["missed (no event)", _fmt(d.get("missed"))],
        ["node buffer drops", _fmt(d.get("node_buffer_dropped"))],
        ["sequence gaps (lost before the node)", _fmt(d.get("seq_gaps"))],
        ["rejected", _e(json.dumps(d.get("rejected", {})))],
        ["sets released at the deadline", _fmt(d.get("sets_released_at_deadline"))],
        ["node start to ready (ms)", _fmt(cs.get("node_ready_ms"))],
        ["model load (ms)", _fmt(cs.get("model_load_ms"))],
        ["first capture to first event (ms)", _fmt(cs.get("first_event_ms"))],
        ["node CPU (% of one core)", _fmt(res.get("node_cpu_percent"))],
        ["publishers, most behind schedule (ms)",
         _e(", ".join(f"{k} {v.get('behind_max_ms')}" for k, v in res.get("publishers", {}).items()))],
    ]))

    search = res.get("max_rigs_search")
    if search:
        out.append(f"<h2>Rigs per node</h2><p>Largest real-time rig count: <b>{_e(res.get('max_rigs_realtime'))}</b> "
                   f"({_e(search.get('criterion'))}).</p>")
        out.append(_table(["rigs", "p50 (ms)", "p99 with misses (ms)", "misses", "node CPU %", "real time"],
                          [[_e(t["rigs"]), _fmt(t["p50_ms"]), _fmt(t["p99_ms"]), _fmt(t["misses"]),
                            _fmt(t.get("node_cpu_percent")), _e(t["realtime"])] for t in search["trials"]]))

    b = res.get("baselines", {})
    out.append("<h2>Fused step: onnxruntime vs torch eager</h2>")
    if b.get("ort_step_ms") is not None:
        out.append(f"<p class=note>{_e(b.get('what'))}; same weights (largest output difference "
                   f"{_e(b.get('max_abs_diff'))}); one thread each; provider {_e(b.get('provider'))}.</p>")
        out.append(_bars_svg([("onnxruntime", b["ort_step"]), ("torch eager", b["torch_step"])],
                             ["p50", "p90", "p99"]))
        out.append(f"<p>torch / onnxruntime at p50: <b>{_e(b.get('speedup_p50'))}x</b></p>")
    else:
        out.append(f"<p class=note>not measured: {_e(b.get('unavailable'))}</p>")

    tr = res.get("transport", {})
    out.append("<h2>Moving camera frames between two processes</h2>")
    if tr:
        out.append("<p class=note>From the sender starting to hand a frame over to the receiver holding an array "
                   "over it; same host, 60 frames/s.</p>")
        rows, table = [], []
        for name, sizes in tr.items():
            if sizes.get("available") is False:
                table.append([_e(name), "unavailable", _e(sizes.get("reason")), "", ""])
                continue
            for size, v in sizes.items():
                if v.get("available") is False:
                    table.append([_e(name), _e(size), _e(v.get("reason")), "", ""])
                    continue
                rows.append((f"{name} {size}", {"p50": v.get("p50_ms"), "p99": v.get("p99_ms")}))
                table.append([_e(name), _e(size), _fmt(v.get("p50_ms")), _fmt(v.get("p99_ms")), _fmt(v.get("lost"))])
        out.append(_bars_svg(rows, ["p50", "p99"], log=True))
        out.append(_table(["transport", "frame", "p50 (ms)", "p99 (ms)", "lost"], table))
    else:
        out.append("<p class=note>not measured</p>")

    out.append("<h2>Machine and versions</h2>")
    out.append(_table(["", ""], [[_e(k), _e(v)] for k, v in m.items() if k != "versions"] +
                      [[_e(k), _e(v)] for k, v in m.get("versions", {}).items()]))
    out.append("</body></html>")
    return "\n".join(out)


def render_compare(res: dict) -> str:
    """The page of a ``fusion bench --compare`` result: the verdict per figure, then every run."""
    c = res["compare"]
    cfg = res.get("config", {})
    out = _header(res, "fusion bench: two bundles compared")
    out.append(f"<p>baseline <code>{_e(c['baseline'])}</code><br>candidate <code>{_e(c['candidate'])}</code></p>")
    out.append(f"<p class=note>{_e(c['pairs'])} pairs of pipeline runs ({_e(cfg.get('rigs'))} rig(s), "
               f"{_e(cfg.get('warmup_s'))} s warm-up excluded, {_e(cfg.get('duration_s'))} s measured each), the "
               "order alternating from pair to pair. Each figure is judged as the ratio candidate / baseline "
               "within its pair, where the load both runs met cancels. <em>no worse</em>: median ratio at most "
               f"1 + {_e(c['tolerance'])}; <em>worse</em>: a one-sided sign test over the pairs below "
               f"{_e(c['significance'])}; otherwise <em>not settled</em>.</p>")
    rows = []
    for name, f in c["figures"].items():
        cls = {"no worse": "met", "worse": "missed"}.get(f["verdict"], "note")
        rows.append([_e(name), _fmt(f["median_ratio"]), _fmt(f["min_ratio"]), _fmt(f["max_ratio"]),
                     f"{_fmt(f['pairs_slower'])} of {len(f['ratios'])}", _fmt(f["sign_test_p"]),
                     f"<span class={cls}>{_e(f['verdict'])}</span>"])
    out += ["<h2>Verdict</h2>", _table(["figure", "median ratio", "lowest", "highest", "pairs slower",
                                        "sign test p", "verdict"], rows)]
    stages = c.get("stage_p50_ratios") or {}
    if stages:
        out += ["<h2>Stages</h2>", "<p class=note>Each stage's p50, median over the pairs of candidate / baseline: "
                "where a difference comes from (not judged).</p>",
                _table(["stage", "median ratio"], [[_e(k), _fmt(v)] for k, v in stages.items()])]
    names = list(c["figures"])
    out += ["<h2>Runs</h2>", _table(["pair", "order", "bundle", *names, "missed frames"],
                                    [[_e(r["pair"] + 1), _e(r["position"] + 1), _e(r["bundle"]),
                                      *(_fmt(r.get(n)) for n in names), _fmt(r.get("drops"))] for r in c["runs"]])]
    out.append("</body></html>")
    return "\n".join(out)


def write_report(res: dict, directory: Path) -> Path:
    """Write ``index.html`` for a bench result (a ``--compare`` result gets its own page)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "index.html"
    path.write_text(render_compare(res) if "compare" in res else render(res))
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.report RESULT.json DIR``: (re)draw the report of a saved result."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench.report", description=main.__doc__)
    p.add_argument("result")
    p.add_argument("directory")
    args = p.parse_args(argv)
    print(write_report(json.loads(Path(args.result).read_text()), Path(args.directory)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
