"""Two model bundles timed against each other: ``fusion bench --models NEW --compare OLD``.

On a shared machine one run of each bundle says little: the load of other tenants moves a p50 by
more than a model change does. So the two run in **pairs**, back to back on the same pipeline,
the order alternating from pair to pair (old first, then new first, ...), and each figure is
judged as the **ratio** new / old within its pair, where the load both runs met cancels. Over the
pairs:

* the median ratio and its range;
* a one-sided sign test: the chance of at least this many pairs with the new bundle slower by
  more than the tolerance, were neither bundle the slower one (each pair a fair coin);
* the verdict: ``no worse`` when the median ratio is within ``1 + tolerance``; ``worse`` when the
  sign test says the new bundle is slower (p below :data:`SIGNIFICANCE`); otherwise
  ``not settled`` (more pairs, or a quieter machine, would settle it).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from pathlib import Path

__all__ = ["FIGURES", "SIGNIFICANCE", "run_pairs", "summarise", "stage_ratios"]

# The figures compared: name -> the keys of a run_pipeline result that hold it.
FIGURES = {
    "e2e_p50_ms": ("e2e_ms", "p50"),
    "e2e_p99_ms": ("e2e_with_misses_ms", "p99"),
    "e2e_excl_sync_wait_p50_ms": ("e2e_excl_sync_wait_ms", "p50"),
}
SIGNIFICANCE = 0.05
BUNDLES = ("baseline", "candidate")


def _figure(res: dict, keys: tuple[str, ...]) -> float | None:
    for k in keys:
        if not isinstance(res, dict) or k not in res:
            return None
        res = res[k]
    return float(res) if isinstance(res, (int, float)) and math.isfinite(res) else None


def run_pairs(run: Callable[[Path, str], dict], baseline: Path, candidate: Path, pairs: int,
              log: Callable[[str], None] = lambda s: None) -> list[dict]:
    """Run ``pairs`` pairs of pipeline runs, alternating which bundle goes first; one row per run.

    ``run(manifest, label)`` runs the pipeline once on a bundle and returns its result. Each row
    holds the pair, the position in it (0 first), the bundle (``baseline`` or ``candidate``), the
    :data:`FIGURES`, the missed frames and each stage's p50 (``stages_p50_ms``).
    """
    rows = []
    manifests = {"baseline": baseline, "candidate": candidate}
    for pair in range(pairs):
        order = BUNDLES if pair % 2 == 0 else BUNDLES[::-1]
        for position, bundle in enumerate(order):
            res = run(manifests[bundle], f"pair {pair + 1}/{pairs} {bundle}")
            row = {"pair": pair, "position": position, "bundle": bundle,
                   **{name: _figure(res, keys) for name, keys in FIGURES.items()}, "drops": res.get("drops"),
                   "stages_p50_ms": {stage: _figure(v, ("p50",)) for stage, v in res.get("stages_ms", {}).items()}}
            log(f"bench: pair {pair + 1}/{pairs} {bundle}: e2e p50 {row['e2e_p50_ms']} ms, "
                f"p99 {row['e2e_p99_ms']} ms")
            rows.append(row)
    return rows


def _sign_test_p(slower: int, n: int) -> float:
    """P(at least ``slower`` of ``n`` fair coins land 'slower')."""
    return sum(math.comb(n, k) for k in range(slower, n + 1)) / 2 ** n


def _by_pair(rows: list[dict], value) -> dict[int, dict[str, object]]:
    """``{pair: {bundle: value(row)}}``, pairs in order."""
    out: dict[int, dict[str, object]] = {}
    for r in sorted(rows, key=lambda r: r["pair"]):
        out.setdefault(r["pair"], {})[r["bundle"]] = value(r)
    return out


def summarise(rows: list[dict], tolerance: float) -> dict:
    """Per figure: the pairs' ratios candidate / baseline, their median and range, the sign test
    and the verdict (see the module docstring). Pairs missing either run's figure are left out."""
    out = {}
    for name in FIGURES:
        ratios = [round(p["candidate"] / p["baseline"], 4)
                  for p in _by_pair(rows, lambda r: r.get(name)).values()
                  if p.get("candidate") is not None and p.get("baseline")]
        if not ratios:
            out[name] = {"ratios": [], "median_ratio": None, "min_ratio": None, "max_ratio": None,
                         "pairs_slower": None, "sign_test_p": None, "verdict": "not measured"}
            continue
        median = statistics.median(ratios)
        slower = sum(r > 1 + tolerance for r in ratios)
        p = _sign_test_p(slower, len(ratios))
        verdict = "no worse" if median <= 1 + tolerance else "worse" if p < SIGNIFICANCE else "not settled"
        out[name] = {"ratios": ratios, "median_ratio": round(median, 4), "min_ratio": min(ratios),
                     "max_ratio": max(ratios), "pairs_slower": slower, "sign_test_p": round(p, 4),
                     "verdict": verdict}
    return out


def stage_ratios(rows: list[dict]) -> dict[str, float | None]:
    """Per stage of the node, the median over pairs of its p50 ratio candidate / baseline: where a
    difference in the judged figures comes from (not judged itself)."""
    by_pair = _by_pair(rows, lambda r: r.get("stages_p50_ms") or {})
    stages = sorted({s for p in by_pair.values() for b in p.values() for s in b})
    out = {}
    for stage in stages:
        ratios = [p["candidate"][stage] / p["baseline"][stage] for p in by_pair.values()
                  if p.get("candidate", {}).get(stage) is not None and p.get("baseline", {}).get(stage)]
        out[stage] = round(statistics.median(ratios), 4) if ratios else None
    return out
