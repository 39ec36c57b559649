"""Child-process supervision for the launcher: start, watch, stop cleanly, report deaths.

Each child's stderr goes to a log file so that, when it dies, its last error can be shown to
the user. Stopping sends SIGINT, waits, then kills; several children are asked at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["Child", "stop_all", "python_module"]


class Child:
    """One supervised child process (a sensor or the node)."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, *, stdout_pipe: bool = False):
        self.name = name
        self.argv = argv
        self.log_path = Path(log_dir) / f"{name}.log"
        self.stdout_pipe = stdout_pipe
        self.proc: subprocess.Popen | None = None
        self._log = None
        self._interrupted = False

    def start(self) -> "Child":
        self._log = open(self.log_path, "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE if self.stdout_pipe else subprocess.DEVNULL,
            stderr=self._log, stdin=subprocess.DEVNULL, env=env, text=self.stdout_pipe)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else -1

    def poll(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def interrupt(self) -> None:
        """Ask the child to stop (SIGINT), once, without waiting: a second SIGINT means "now" to a
        sensor (exit 130), which is for a user pressing Ctrl-C twice, not for the launcher."""
        if self.proc is not None and self.proc.poll() is None and not self._interrupted:
            self._interrupted = True
            self.proc.send_signal(signal.SIGINT)

    def stop(self, timeout_s: float = 5.0) -> int | None:
        """SIGINT, wait up to ``timeout_s``, then SIGKILL. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.interrupt()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def last_error(self, lines: int = 3) -> str:
        """The last lines the child wrote to stderr (its error, when it died)."""
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


def stop_all(children: list[Child], timeout_s: float = 5.0) -> None:
    """Stop children together: all are asked at once, then each is waited for (killed past ``timeout_s``)."""
    for child in children:
        child.interrupt()
    deadline = time.monotonic() + timeout_s
    for child in children:
        child.stop(max(0.0, deadline - time.monotonic()))


def python_module(module: str, *args: str) -> list[str]:
    """argv to run one of this project's modules with the current interpreter."""
    return [sys.executable, "-m", module, *args]
