"""Run the fusion command: ``python -m fusion_node``."""

import sys

from .cli import main

sys.exit(main())
