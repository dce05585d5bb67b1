"""``python -m parsl_dragon.cli``: the ``parsl-dragon`` command."""
import sys

from parsl_dragon.cli import main

sys.exit(main())
