"""The node's install is light: the runtime dependencies leave out torch, and nothing the node,
the sensors or the demo import at start-up needs it (``make demo`` installs no torch)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
TRAINING_STACK = ("torch", "onnx", "onnxscript")


def _name(requirement: str) -> str:
    return requirement.split(";")[0].split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip().lower()


def test_runtime_dependencies_leave_out_the_training_stack():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {_name(r) for r in project["dependencies"]}
    assert not runtime & set(TRAINING_STACK), f"runtime dependencies include {runtime & set(TRAINING_STACK)}"
    assert {_name(r) for r in project["optional-dependencies"]["train"]} >= {"torch"}


def test_the_command_line_node_and_sensors_import_without_torch():
    # Make torch unimportable in the child: anything on the demo's path that needs it fails loudly.
    probe = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {TRAINING_STACK!r}:\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import fusion_node.cli as cli\n"
        "cli.build_parser().parse_args(['demo', '--help'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage: fusion demo" in proc.stdout
