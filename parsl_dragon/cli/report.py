"""How ``parsl-dragon`` answers: its exit codes, an error line on stderr, teardown's per-server report."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TextIO

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def error(message: str) -> None:
    """One line on stderr, prefixed ``parsl-dragon:``."""
    print(f"parsl-dragon: {message}", file=sys.stderr, flush=True)


@dataclass
class Report:
    """What teardown did to one server, printed as it happens."""

    stream: TextIO
    ok: bool = True

    def say(self, text: str, ok: bool = True) -> None:
        """Print one indented line; ``ok=False`` marks the server as not cleanly torn down."""
        self.ok = self.ok and ok
        print(f"  {text}", file=self.stream, flush=True)
