"""The model card written beside an exported bundle: what each encoder learnt from, its thresholds, its figures.

The card is for people (``MODEL_CARD.md``); the node reads only the manifest. It also carries the
credits that the licences of the training recordings ask for.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from fusion_node.vocabulary import CLASSES, MODALITIES, OBSERVES, WITNESSES

__all__ = ["CONSISTENCY_THRESHOLD", "write_model_card"]

# Semantic consistency below this means two witnesses of a class differ by more than half in
# probability (one sure it is there, the other sure it is not).
CONSISTENCY_THRESHOLD = 0.5


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _clip_counts(clips, out_of_fold: bool = False) -> str:
    """``{"train": 234, "val": 37, "test": 63}`` -> "63 held-out (thresholds chosen on 37 others; 234 trained on)";
    with ``out_of_fold`` the thresholds also read the 234, each scored by a student that never heard its source."""
    trained = (f" and on the {clips.get('train')} trained on, each scored by a student that never heard its source"
               if out_of_fold else f"; {clips.get('train')} trained on")
    return f"{clips.get('test')} held-out (thresholds chosen on {clips.get('val')} others{trained})"


def _synthetic_line(made: Mapping[str, int]) -> str:
    """The made sounds the audio student also trained on, in words ("" when none)."""
    if not any(made.values()):
        return ""
    return (f" Besides the recordings, it trained on {made.get('vehicle', 0)} made car horns and "
            f"{made.get('alarm', 0)} made sirens and alarms, each kept only because the teacher heard it as a "
            "vehicle or an alarm; no figure here reads one.")


def write_model_card(out_dir: Path, thresholds: Mapping[str, Mapping[str, float]], metrics: Mapping,
                     witnesses: Mapping[str, tuple[str, ...]] = WITNESSES,
                     observes: Mapping[str, tuple[str, ...]] = OBSERVES) -> Path:
    """Write ``MODEL_CARD.md`` in ``out_dir`` from the training stages' thresholds and metrics."""
    from models.camera_distill import MIN_F05  # the training stack: only an export writes a card

    lines = ["# Model card: the shipped encoders and fusion head", "",
             "Written by `fusion train --export` / `fusion export`. The node reads only `manifest.json`.", "",
             "## What each modality votes on, and its thresholds", "",
             "A modality's vote counts only for the classes it can observe; its own threshold per class is folded "
             "into the head, so the fused probability is compared with 0.5. A witness vouches for a class's absence: "
             "two witnesses that contradict each other lower the semantic consistency "
             f"(alert threshold {CONSISTENCY_THRESHOLD}). The camera is a witness only for classes whose held-out "
             "recall reaches 0.9 (it must rarely miss what is there), and votes only for classes whose best held-out "
             f"F0.5 reaches {MIN_F05} (\"-\": no vote).", "",
             _row(["modality", *CLASSES]), _row(["---"] * (len(CLASSES) + 1))]
    for m in MODALITIES:
        cells = [f"{thresholds.get(m, {}).get(c, 0.5):.3f}" + (" (witness)" if c in witnesses.get(m, ()) else "")
                 if c in observes.get(m, ()) else "-" for c in CLASSES]
        lines.append(_row([m, *cells]))
    audio = metrics.get("audio", {})
    if audio.get("student"):
        lines += ["", "## Audio: held-out sources (never trained on, never used to choose a threshold)", "",
                  f"Clips: {_clip_counts(audio.get('clips'), bool(audio.get('threshold_folds')))}. "
                  "Clip-level: a clip carries a class when any of its one-second "
                  "windows does. False labels: share of background windows carrying any label."
                  + _synthetic_line(audio.get("synthetic") or {}), "",
                  _row(["", "macro-F1", "false labels", *[f"{c} P / R" for c in CLASSES]]),
                  _row(["---"] * (len(CLASSES) + 3))]
        for who in ("student", "teacher"):
            r = audio[who]
            lines.append(_row([who if who == "student" else "YAMNet (teacher)", r["macro_f1"], r["false_label_rate"],
                               *[f"{r['per_class'][c]['precision']:.2f} / {r['per_class'][c]['recall']:.2f}"
                                 for c in CLASSES]]))
    radar = metrics.get("radar", {})
    joint = radar.get("camera_where_trained")
    if radar.get("retrieval_r1_camera_radar") is not None:
        lines += ["", "## Radar: bound to the camera", "",
                  f"The radar encoder learns the {'' if joint else 'frozen '}camera encoder's space from "
                  "time-matched simulated windows (InfoNCE)"
                  + (", and the spatial part of the camera's embedding (where things are; no classifier reads it) "
                     "learns with it; the camera's backbone and its *what* stay as distilled, so its labels do not "
                     "change. " if joint else ". ")
                  + (f"A window's points are those of the radar's last {radar['stack_frames']} frames, pooled "
                     "(one frame holds a handful of points per person, and some go missing). "
                     if radar.get("stack_frames", 1) > 1 else "")
                  + ("Each point also carries where it lands in the picture, through the rig calibration "
                     "(or the nominal geometry in the manifest when the rig has none). " if radar.get("image_features") else "")
                  + (f"{radar['clutter_windows']} of its {radar['windows']} windows are heavily cluttered rooms "
                     "(20 to 35 false points a frame), so that clutter is not read as people or cars. "
                     if radar.get("clutter_windows") else "")
                  + ("A simulated scene's static radar returns are drawn apart from its picture, so the binding "
                     "learns the targets, not which backdrop goes with which returns. " if radar.get("static_apart") else "")
                  + ("Windows with nothing in view are not one another's negatives: an empty camera frame is "
                     "pulled toward an empty radar frame, so the similarity does not fall when people leave. "
                     if radar.get("empty_alike") else "")
                  + f"Camera-to-radar recall@1 among 100 held-out windows: {radar['retrieval_r1_camera_radar']} "
                  f"({radar.get('held_out_windows')} windows)."]
    camera = metrics.get("camera", {})
    if camera.get("at_thresholds"):
        lines += ["", "## Camera: held-out videos (each scored by a student that never saw it)", "",
                  "Truth is the detector teacher's verdict (present: score >= 0.5; empty: < 0.25). Recall on frames "
                  "with the class, false rate on empty frames. Classes with out-of-fold F0.5 under 0.5 "
                  f"({', '.join(c for c, f in camera.get('best_f05', {}).items() if f < 0.5) or 'none'}) "
                  "are not trusted to vouch for absence and keep false alarms under 1 %.", "",
                  _row(["video", "class", "frames with / empty", "recall", "false rate"]), _row(["---"] * 5)]
        for video, per_class in [("all held-out frames", camera.get("pooled_at_thresholds", {})),
                                 *sorted(camera["at_thresholds"].items())]:
            for c, r in per_class.items():
                if r.get("teacher_positive") or c == "person":
                    lines.append(_row([video, c, f"{r['teacher_positive']} / {r['teacher_empty']}",
                                       r.get("recall", "-"), r.get("false_rate", "-")]))
    credits = audio.get("trained_on") or []
    if credits:
        lines += ["", "## Audio training recordings: sources, licences, credits", "",
                  "The audio encoder learnt from these recordings (not shipped); their licences ask for the credit.",
                  "", _row(["source", "licence", "credit"]), _row(["---"] * 3)]
        lines += [_row([s, lic, cred.replace("|", "/")]) for s, lic, cred in credits]
    path = Path(out_dir) / "MODEL_CARD.md"
    path.write_text("\n".join(lines) + "\n")
    return path
