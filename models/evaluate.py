"""``fusion eval``: the exported models, run exactly as the node runs them, on held-out data.

Evaluation loads a model manifest into :class:`fusion_node.cpu_runtime.ModelRuntime` (onnxruntime,
the node's preprocessing), so what is measured is what ships. Data: simulated windows from the
held-out part of the simulator's real assets and seeds never used in training, under normal and
adverse conditions, plus, when a folder of third-party recordings is given (``--real-clips``),
the held-out parts of those recordings, read from that folder.

The JSON holds ``retrieval_r1.{camera_radar,camera_audio}`` (recall@1 among 100 candidate
windows), ``retrieval_targets.{camera_radar,share}`` (the same camera-radar recall@1 over the
windows that hold a person, vehicle or dog, and their share),
``f1.{fused,camera_only,radar_only,audio_only}`` (event macro-F1),
``f1.adverse.{fused,best_single}`` and per condition, ``f1.missing.{camera,radar,audio}``,
``tamper.*`` (per window, and ``tamper.episodes.*``: the node's drift monitor on simulated scenes
followed through time, the radar swapped for another scene's after the baseline is learnt), and with ``--real-clips`` the held-out real recordings (:mod:`models.real_eval`):
``real.macro_f1``, ``real.false_label_rate``, ``real.teacher_macro_f1`` (with ``--audio-teacher``),
``real.per_class.<class>.{precision,recall,f1,clips,sources,precision_ci,recall_ci}`` (the last
two: 95 % intervals ``[low, high]``, clips as the trials), ``real.background_sources``, and
``real.errors`` (the clips the student gets wrong, with the teacher's labels beside); with
``--videos DIR --camera-teacher PATH``, ``real_camera.{per_video,pooled,mean_recall,mean_false_rate}``:
the camera on videos it never trained on against the detector teacher (:mod:`models.real_camera`;
``real_camera.folder`` is null when not measured). The report
is an HTML page of tables, a confusion matrix and retrieval curves as inline SVG.
"""

from __future__ import annotations

import html
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fusion_node.config import AlertsConfig
from fusion_node.cpu_runtime import ModelRuntime
from fusion_node.drift import MIN_BASELINE, DriftMonitor
from fusion_node.errors import ConfigError
from fusion_node.manifest import load_manifest
from fusion_node.preprocess import pool_radar_frames
from fusion_node.vocabulary import BOUND_PAIRS, CLASSES, MODALITIES, OBSERVES
from models.dataset import PREPROCESS, Windows, load_or_generate, scene_sequences
from models.real_camera import evaluate_videos
from models.real_eval import evaluate_real_audio

__all__ = ["macro_f1", "recall_at_k", "retrieval_groups", "evaluate", "write_report"]

ADVERSE = ("night", "occlusion", "clutter", "noise")
# The fall in camera-radar similarity that counts as drift or tampering: the node's own default.
DRIFT_FRACTION = AlertsConfig.model_fields["drift_fraction"].default
EVAL_SEED = 7_000_001  # never used by training


def macro_f1(labels: np.ndarray, pred: np.ndarray) -> float:
    """Mean over classes of F1 (a class absent from both labels and predictions counts as 1)."""
    scores = []
    for k in range(labels.shape[1]):
        t, p = labels[:, k] > 0, pred[:, k] > 0
        tp = float((t & p).sum())
        denom = float(t.sum() + p.sum())
        scores.append(1.0 if denom == 0 else 2 * tp / denom)
    return float(np.mean(scores))


def retrieval_groups(pairable: np.ndarray, size: int = 100) -> list[np.ndarray]:
    """Disjoint groups of ``size`` paired windows' indices: the candidates of one retrieval."""
    ok = np.flatnonzero(pairable)
    return [ok[g * size:(g + 1) * size] for g in range(len(ok) // size)]


def _own_rank(query: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Per query, how many keys are more similar to it than its own (same row)."""
    sim = query @ keys.T
    return (sim > np.diag(sim)[:, None]).sum(1)


def recall_at_k(query: np.ndarray, keys: np.ndarray, k: int) -> float:
    """Fraction of queries whose own key (same row) is among the k most similar keys."""
    return float((_own_rank(query, keys) < k).mean())


def _retrieval_with_targets(data: Windows, camera: np.ndarray, radar: np.ndarray) -> dict:
    """Camera-to-radar R@1 among the same 100 candidates, over the queries whose window holds a
    person, vehicle or dog, with the share of the queries that do."""
    in_view = OBSERVES["camera"]  # the things in view: person, vehicle, dog
    held = data.labels[:, [CLASSES.index(c) for c in in_view]].max(axis=1) > 0
    hits, has = [], []
    for idx in retrieval_groups(data.pairable):
        hits.append(_own_rank(camera[idx], radar[idx]) == 0)
        has.append(held[idx])
    if not hits:
        return {"camera_radar": None, "share": None}
    hit, has = np.concatenate(hits), np.concatenate(has)
    return {"camera_radar": round(float(hit[has].mean()), 4) if has.any() else None,
            "share": round(float(has.mean()), 4)}


class _OnnxEvaluator:
    """Per-window embeddings and head outputs from the exported models, as the node computes them."""

    def __init__(self, manifest: Path, provider: str = "cpu"):
        self.rt = ModelRuntime(load_manifest(manifest), provider=provider)
        pooled = PREPROCESS["radar"].stack_frames
        if self.rt.trained and self.rt.radar_frames != pooled:
            raise ConfigError(f"{manifest}: its radar encoder reads {self.rt.radar_frames} frame(s) per window, the "
                              f"simulated windows pool {pooled}; evaluate it with the version that trained it")
        self.thresholds = np.array([self.rt.thresholds.get(c, 0.5) for c in CLASSES])

    def embed(self, data: Windows, progress: str = "") -> dict[str, np.ndarray]:
        from tqdm import tqdm

        rt = self.rt
        # The windows carry image coordinates; a bundle whose radar does not read them takes the
        # first five columns, which are what its preprocessing produces.
        nf = rt.preprocessors["radar"].out_features
        emb = {m: [] for m in MODALITIES}
        for i in tqdm(range(len(data)), desc=progress or "embedding", unit="win", leave=False):
            emb["camera"].append(rt.encode("camera", *rt.preprocess("camera", data.image[i]))[0])
            emb["radar"].append(rt.encode("radar", data.points[i][None, :, :nf], data.mask[i][None])[0])
            emb["audio"].append(rt.encode("audio", data.logmel[i][None].astype(np.float32))[0])
        return {m: np.stack(v) for m, v in emb.items()}

    def probs(self, emb: dict[str, np.ndarray], present: tuple[bool, bool, bool]) -> np.ndarray:
        n = len(emb["camera"])
        out = np.zeros((n, len(CLASSES)), np.float32)
        for i in range(n):
            inputs = {m: (emb[m][i:i + 1] if present[j] else None) for j, m in enumerate(MODALITIES)}
            out[i] = self.rt.fuse(inputs).probabilities
        return out

    def f1(self, labels: np.ndarray, probs: np.ndarray) -> float:
        return macro_f1(labels, probs >= self.thresholds)


def tamper_episodes(rt: ModelRuntime, n_scenes: int, *, seed: int = EVAL_SEED, real_clips: Path | None = None,
                    after_s: float = 10.0, split: str = "eval") -> dict:
    """The drift alert as a tamper detector, as a live rig meets it.

    Each simulated scene is followed at 10 sets a second. The node's :class:`DriftMonitor` (its
    default ``alerts`` config) learns its baseline on the scene's own camera and radar; then, for
    ``after_s`` seconds, the radar either stays (a false alarm if ``drift`` fires) or is replaced
    by the next scene's radar at the same moments (detected if ``drift`` fires). Scenes whose
    baseline is too low for any alert (under :data:`~fusion_node.drift.MIN_BASELINE`) count as
    missed, not left out. ``split="train"`` draws the scenes from the training assets instead
    (another seed): the gap between the two is how far the alignment fails to generalise.
    """
    from tqdm import tqdm

    if n_scenes == 0:  # no scene: the simulator's assets are not even loaded
        return {"scenes": 0, "seconds_after": after_s, "detection_rate": None, "false_alarm_rate": None,
                "median_delay_s": None, "never_aligned": None}
    cfg = AlertsConfig()
    period = 0.1
    warm = cfg.drift_warmup_sets
    steps = warm + int(round(after_s / period))
    cam = np.zeros((n_scenes, steps, rt.embedding_dim), np.float32)
    rad = np.zeros_like(cam)
    frames = scene_sequences(n_scenes, steps, seed, split, real_clips, period)
    recent: deque[np.ndarray] = deque(maxlen=rt.radar_frames)  # the scene's last frames, pooled as the node pools them
    for i, k, image, points in tqdm(frames, total=n_scenes * steps, desc="tamper episodes", unit="set", leave=False):
        if k == 0:
            recent.clear()
        recent.append(points)
        cam[i, k] = rt.encode("camera", *rt.preprocess("camera", image))[0]
        rad[i, k] = rt.encode("radar", *rt.preprocess("radar", pool_radar_frames(recent, rt.radar_frames)))[0]

    def first_alert(i: int, j: int) -> float | None:
        mon = DriftMonitor(BOUND_PAIRS, cfg)
        for k in range(steps):
            if mon.update(int(k * period * 1e9), {"camera": cam[i, k], "radar": rad[i if k < warm else j, k]}) \
                    and k >= warm:
                return (k - warm) * period
        return None

    matched = [first_alert(i, i) for i in range(n_scenes)]
    swapped = [first_alert(i, (i + 1) % n_scenes) for i in range(n_scenes)]
    delays = [d for d in swapped if d is not None]
    baselines = np.median(np.einsum("skd,skd->sk", cam[:, :warm], rad[:, :warm]), axis=1)
    return {"scenes": n_scenes, "seconds_after": after_s,
            "detection_rate": round(float(np.mean([d is not None for d in swapped])), 4),
            "false_alarm_rate": round(float(np.mean([d is not None for d in matched])), 4),
            "median_delay_s": round(float(np.median(delays)), 2) if delays else None,
            "never_aligned": round(float(np.mean(baselines < MIN_BASELINE)), 4)}


def evaluate(manifest: Path, *, n_eval: int = 1000, n_adverse: int = 250, cache_dir: Path = Path(".cache/datasets"),
             provider: str = "cpu", real_clips: Path | None = None, corpora: Sequence[Path] = (),
             audio_teacher: Path | None = None, tamper_scenes: int = 100, videos: Path | None = None,
             camera_teacher: Path | None = None) -> tuple[dict, dict]:
    """Compute every metric; returns (metrics JSON, extra arrays for the report).

    ``real_clips``: a folder of third-party recordings (laid out as the development data), mixed
    into the simulated scenes' assets and evaluated clip by clip; None evaluates on what ships.
    ``corpora``: further audio corpus folders the bundle trained with; the teacher's thresholds are
    chosen on them too, as the student's were (they hold no held-out source).
    ``videos``: a folder of videos the bundle never trained on, scored against ``camera_teacher``
    (:mod:`models.real_camera`); None leaves ``real_camera`` unmeasured.
    """
    ev = _OnnxEvaluator(manifest, provider)
    normal = load_or_generate(cache_dir, n_eval, EVAL_SEED, "eval", real_dir=real_clips)
    emb = ev.embed(normal, "held-out scenes")
    metrics: dict = {"manifest": str(manifest), "model": ev.rt.name, "provider": ev.rt.provider,
                     "eval_windows": len(normal), "adverse_windows_per_condition": n_adverse}

    # Cross-modal retrieval among 100 candidates, averaged over disjoint groups.
    ok = np.flatnonzero(normal.pairable)
    curves = {"camera_radar": [], "camera_audio": []}
    r1 = {"camera_radar": [], "camera_audio": []}
    for idx in retrieval_groups(normal.pairable):
        for name, other in (("camera_radar", "radar"), ("camera_audio", "audio")):
            rank = _own_rank(emb["camera"][idx], emb[other][idx])  # ranked once for R@1 to R@10
            curves[name].append([float((rank < kk).mean()) for kk in range(1, 11)])
            r1[name].append(curves[name][-1][0])
    metrics["retrieval_r1"] = {k: round(float(np.mean(v)), 4) for k, v in r1.items()}
    metrics["retrieval_groups"] = len(r1["camera_radar"])
    # A window with nobody and nothing in view looks like every other empty one to both sensors, so
    # retrieval is also given over the windows that hold a person, vehicle or dog.
    metrics["retrieval_targets"] = _retrieval_with_targets(normal, emb["camera"], emb["radar"])

    full = ev.probs(emb, (True, True, True))
    f1 = {"fused": ev.f1(normal.labels, full)}
    singles = {}
    for j, m in enumerate(MODALITIES):
        only = tuple(i == j for i in range(3))
        singles[m] = ev.probs(emb, only)
        f1[f"{m}_only"] = ev.f1(normal.labels, singles[m])
    f1["missing"] = {}
    for j, m in enumerate(MODALITIES):
        f1["missing"][m] = ev.f1(normal.labels, ev.probs(emb, tuple(i != j for i in range(3))))
    f1["per_class_fused"] = {c: round(macro_f1(normal.labels[:, [k]], (full >= ev.thresholds)[:, [k]]), 4)
                             for k, c in enumerate(CLASSES)}

    adverse = {}
    for cond in ADVERSE:
        data = load_or_generate(cache_dir, n_adverse, EVAL_SEED + 1 + ADVERSE.index(cond), "eval", adverse=cond,
                                real_dir=real_clips)
        aemb = ev.embed(data, f"adverse: {cond}")
        fused = ev.f1(data.labels, ev.probs(aemb, (True, True, True)))
        single = {m: ev.f1(data.labels, ev.probs(aemb, tuple(i == j for i in range(3))))
                  for j, m in enumerate(MODALITIES)}
        adverse[cond] = {"fused": round(fused, 4), **{f"{m}_only": round(v, 4) for m, v in single.items()}}
    f1["adverse"] = {
        "fused": round(float(np.mean([a["fused"] for a in adverse.values()])), 4),
        "best_single": round(max(float(np.mean([a[f"{m}_only"] for a in adverse.values()])) for m in MODALITIES), 4),
        "conditions": adverse,
    }
    metrics["f1"] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in f1.items()}
    metrics["f1"]["missing"] = {k: round(v, 4) for k, v in f1["missing"].items()}

    # Real recordings of sources training never saw, through the runtime as the node runs them.
    metrics["real"] = {"folder": None if real_clips is None else str(real_clips)}
    if real_clips is not None:
        metrics["real"].update(evaluate_real_audio(ev.rt, real_clips, audio_teacher, corpora))

    metrics["real_camera"] = {"folder": None}
    if videos is not None:
        metrics["real_camera"] = evaluate_videos(ev.rt, videos, camera_teacher)

    # Tampering: the camera of one window with the radar and audio of another (a swapped or
    # replayed feed). Two signals: the semantic consistency (a witness contradicting another) and
    # the camera-radar similarity in their shared space, judged as the drift monitor judges it
    # (below the matched windows' median by the drift fraction).
    shifted = np.roll(ok, -7)
    thr = ev.rt.consistency_threshold

    def cons(cam_idx, other_idx):
        return np.array([ev.rt.fuse({"camera": emb["camera"][i:i + 1], "radar": emb["radar"][j:j + 1],
                                     "audio": emb["audio"][j:j + 1]}).consistency for i, j in zip(cam_idx, other_idx)])

    def sim(cam_idx, other_idx):
        return np.einsum("nd,nd->n", emb["camera"][cam_idx], emb["radar"][other_idx])

    matched_sim, swapped_sim = sim(ok, ok), sim(ok, shifted)
    floor = float(np.median(matched_sim)) * (1.0 - DRIFT_FRACTION)
    metrics["tamper"] = {
        "similarity": {"floor": round(floor, 4), "detection_rate": round(float((swapped_sim < floor).mean()), 4),
                       "false_alarm_rate": round(float((matched_sim < floor).mean()), 4)},
    }
    metrics["tamper"]["episodes"] = tamper_episodes(ev.rt, tamper_scenes, real_clips=real_clips)
    if thr is not None:
        matched, swapped = cons(ok, ok), cons(ok, shifted)
        metrics["tamper"].update({"consistency_threshold": thr,
                                  "detection_rate": round(float((swapped < thr).mean()), 4),
                                  "false_alarm_rate": round(float((matched < thr).mean()), 4)})

    confusion = _confusion(normal.labels, full >= ev.thresholds)
    return metrics, {"curves": {k: np.mean(v, axis=0).tolist() for k, v in curves.items()}, "confusion": confusion}


def _confusion(labels: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Rows: true class (plus 'empty'), columns: predicted class (plus 'none'); row-normalised rates."""
    n = len(CLASSES)
    m = np.zeros((n + 1, n + 1))
    for y, p in zip(labels > 0, pred):
        rows = np.flatnonzero(y) if y.any() else [n]
        cols = np.flatnonzero(p) if p.any() else [n]
        for r in rows:
            for c in cols:
                m[r, c] += 1
    return m / np.maximum(1, m.sum(1, keepdims=True))


def _svg_confusion(m: np.ndarray) -> str:
    names = list(CLASSES) + ["empty/none"]
    cell, pad = 46, 110
    size = pad + cell * len(names)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{size + 10}" height="{size + 10}" font-size="11">']
    for i, r in enumerate(names):
        parts.append(f'<text x="{pad - 6}" y="{pad + i * cell + cell / 2 + 4}" text-anchor="end">{r}</text>')
        parts.append(f'<text x="{pad + i * cell + cell / 2}" y="{pad - 8}" text-anchor="start" '
                     f'transform="rotate(-40 {pad + i * cell + cell / 2} {pad - 8})">{r}</text>')
        for j in range(len(names)):
            v = m[i, j]
            shade = int(255 - 200 * v)
            parts.append(f'<rect x="{pad + j * cell}" y="{pad + i * cell}" width="{cell}" height="{cell}" '
                         f'fill="rgb({shade},{shade},255)" stroke="#999"/>')
            parts.append(f'<text x="{pad + j * cell + cell / 2}" y="{pad + i * cell + cell / 2 + 4}" '
                         f'text-anchor="middle">{v:.2f}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _svg_curves(curves: dict[str, list[float]]) -> str:
    w, h, pad = 420, 280, 40
    colours = {"camera_radar": "#d62728", "camera_audio": "#1f77b4"}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-size="11">',
             f'<rect x="{pad}" y="10" width="{w - pad - 10}" height="{h - pad - 10}" fill="none" stroke="#333"/>']
    for k in range(1, 11):
        x = pad + (k - 1) / 9 * (w - pad - 10)
        parts.append(f'<text x="{x}" y="{h - pad + 14}" text-anchor="middle">{k}</text>')
    for v in (0.0, 0.5, 1.0):
        y = 10 + (1 - v) * (h - pad - 10)
        parts.append(f'<text x="{pad - 4}" y="{y + 4}" text-anchor="end">{v:.1f}</text>')
    parts.append(f'<text x="{w / 2}" y="{h - 6}" text-anchor="middle">k (candidates: 100)</text>')
    for i, (name, ys) in enumerate(curves.items()):
        pts = " ".join(f"{pad + j / 9 * (w - pad - 10):.1f},{10 + (1 - y) * (h - pad - 10):.1f}" for j, y in enumerate(ys))
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{colours.get(name, "#000")}" stroke-width="2"/>')
        parts.append(f'<text x="{pad + 10}" y="{h - pad - 20 - 14 * i}" fill="{colours.get(name, "#000")}">'
                     f'{name} recall@k</text>')
    parts.append("</svg>")
    return "".join(parts)


def _table(header: list[str], rows: list[list]) -> str:
    """An HTML table of plain cells (numbers shown to 3 decimals; None as a dash)."""
    def cell(v) -> str:
        if v is None:
            return "-"
        return f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _real_section(real: dict) -> str:
    if real.get("folder") is None or "per_class" not in real:
        return "<p>Not evaluated: give <code>--real-clips DIR</code>.</p>"
    teacher = real.get("teacher") or {}
    rows = []
    for c in CLASSES:
        s, t = real["per_class"][c], (teacher.get("per_class") or {}).get(c, {})
        rows.append([c, s["clips"], s["sources"], _with_interval(s["precision"], s["precision_ci"]),
                     _with_interval(s["recall"], s["recall_ci"]), s["f1"],
                     t.get("precision"), t.get("recall"), t.get("f1")])
    summary = _table(["", "student (shipped)", "teacher"],
                     [["macro-F1", real["macro_f1"], real.get("teacher_macro_f1")],
                      ["false labels on background windows", real["false_label_rate"], teacher.get("false_label_rate")]])
    return (f"<p>Held-out sources: {html.escape(', '.join(real['sources']))} ({real['clips']} clips, "
            f"{real['background_windows']} background windows from {real['background_sources']} sources).</p>"
            f"{summary}"
            + "<p>In brackets, the 95 % interval of the student's precision and recall with its clips as the "
              "trials; clips of one source resemble each other, so a new place can stray further.</p>"
            + _table(["class", "clips", "sources", "precision", "recall", "F1", "teacher precision",
                      "teacher recall", "teacher F1"], rows) + _errors_section(real["errors"]))


def _with_interval(value: float, interval: list[float] | None) -> str:
    """``0.250 [0.05, 0.70]``: a figure with its 95 % interval (the figure alone when it has none)."""
    return f"{value:.3f}" + (f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else "")


def _label_list(labels: list[str] | None) -> str | None:
    return None if labels is None else (", ".join(labels) or "none")


def _errors_section(errors: list[dict]) -> str:
    """The held-out clips the student gets wrong: what a person listens to next."""
    if not errors:
        return "<h3>Clips the student gets wrong</h3><p>None.</p>"
    rows = [[e["kind"], e["clip"], e["source"], e["class"], _label_list(e["labelled"]), e["score"], e["threshold"],
             e["labelled_windows"], _label_list(e["teacher_labelled"])] for e in errors]
    return ("<h3>Clips the student gets wrong</h3><p>The score is the clip's highest for its own class.</p>"
            + _table(["wrong", "clip", "source", "class", "student labels", "score", "threshold",
                      "background windows labelled", "teacher labels"], rows))


def _real_camera_section(cam: dict) -> str:
    if cam.get("folder") is None:
        return "<p>Not evaluated: give <code>--videos DIR --camera-teacher PATH</code>.</p>"
    rows = []
    for name, v in [*cam["per_video"].items(), ("all frames", {"frames": cam["frames"], **cam["pooled"]})]:
        for c, r in v.items():
            if c != "frames" and (r["teacher_present"] or c == "person"):
                rows.append([name, c, r["teacher_present"], r["teacher_empty"], r["recall"], r["false_rate"],
                             r["precision"]])
    means = _table(["class", "recall, mean over videos", "false rate, mean over videos"],
                   [[c, cam["mean_recall"][c], cam["mean_false_rate"][c]] for c in cam["mean_recall"]])
    return (f"<p>{cam['videos']} videos, {cam['frames']} frames. A frame counts as holding a class when the "
            "detector teacher scores it at 0.5 or more, as empty when every box scores under 0.25; the bundle "
            "runs as a camera-only rig with its own thresholds.</p>" + means
            + _table(["video", "class", "teacher: present", "teacher: empty", "recall", "false rate", "precision"],
                     rows))


def write_report(metrics: dict, extra: dict, out_dir: Path) -> Path:
    """An HTML page of tables (sim, adverse, missing, tampering, real recordings), the confusion matrix and curves."""
    out_dir.mkdir(parents=True, exist_ok=True)
    f1 = metrics["f1"]
    overview = _table(["metric", "value"], [
        ["retrieval R@1 camera-radar (100 candidates)", metrics["retrieval_r1"]["camera_radar"]],
        ["retrieval R@1 camera-radar, windows holding a person, vehicle or dog "
         f"({metrics['retrieval_targets']['share']} of them)", metrics["retrieval_targets"]["camera_radar"]],
        ["retrieval R@1 camera-audio (100 candidates)", metrics["retrieval_r1"]["camera_audio"]],
        ["macro-F1 fused", f1["fused"]], *[[f"macro-F1 {m} only", f1[f"{m}_only"]] for m in MODALITIES],
        *[[f"macro-F1 without {m}", v] for m, v in f1["missing"].items()]])
    adverse = _table(["condition", "fused", *[f"{m} only" for m in MODALITIES]],
                     [[cond, a["fused"], *[a[f"{m}_only"] for m in MODALITIES]]
                      for cond, a in f1["adverse"]["conditions"].items()])
    tamper = metrics.get("tamper", {})
    tamper_rows = [["camera-radar similarity below the drift floor", tamper.get("similarity", {}).get("detection_rate"),
                    tamper.get("similarity", {}).get("false_alarm_rate")]]
    episodes = tamper.get("episodes", {})
    if episodes.get("scenes"):
        tamper_rows.append([f"drift alert within {episodes['seconds_after']:g} s, {episodes['scenes']} scenes followed "
                            f"(median delay {episodes['median_delay_s']} s)", episodes["detection_rate"],
                            episodes["false_alarm_rate"]])
    if "detection_rate" in tamper:
        tamper_rows.append(["semantic consistency below its threshold", tamper["detection_rate"],
                            tamper["false_alarm_rate"]])
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>fusion eval: {html.escape(metrics['model'])}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left}}</style>
</head><body>
<h1>Evaluation of {html.escape(metrics['model'])}</h1>
<p>Exported ONNX models run by the node's runtime ({html.escape(metrics['provider'])}) on held-out simulated
windows and on real recordings of sources that training never saw.</p>
<h2>Real recordings: audio, held-out sources</h2>{_real_section(metrics['real'])}
<h2>Real videos: the camera against the detector teacher</h2>{_real_camera_section(metrics.get('real_camera', {}))}
<h2>Simulator</h2>{overview}
<h2>Adverse conditions (macro-F1)</h2>{adverse}
<h2>Tampering (another window's radar and audio)</h2>{_table(["signal", "detected", "false alarms"], tamper_rows)}
<h2>Confusion (rows: true class, columns: predicted; fused, all modalities)</h2>{_svg_confusion(extra['confusion'])}
<h2>Cross-modal retrieval</h2>{_svg_curves(extra['curves'])}
</body></html>"""
    path = out_dir / "report.html"
    path.write_text(page)
    return path
