"""The recording and inspection subcommands: ``record``, ``replay``, ``view`` and ``topic``.

Each lives in its own module with its own ``add_parser``; this registers them together so the
command line takes them in one line.
"""

from __future__ import annotations

import argparse

from . import recorder, replay, topic
from .view import server as view

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``record``, ``replay``, ``view`` and ``topic`` to the ``fusion`` command."""
    for module in (recorder, replay, view, topic):
        module.add_parser(sub)
