"""A block's directory as its boot process prepares it: private, locked to one boot, with its shims.

Runs in the block's boot process (:mod:`parsl_dragon.server.boot`), outside Dragon::

    <block dir>/             0700, ours (made, or tightened, by wire.security.private_directory)
      boot.lock              flock()ed by the one boot of the block for its whole life
      boot.log, dragon.log   boot's log; the runtime's output
      bin/                   0700, first on the runtime's PATH
        dragon-cleanup       the shim (CLEANUP_SHIM) shadowing Dragon's user-wide cleanup
        dragon-config        answers the runtime's start-up questions without a Python start
                             (:func:`dragon_config_shim`); anything else goes to the real one

Whatever group or others could write there would run as us (``bin/``) or be believed, so a
directory that is not ours alone is refused (:class:`~parsl_dragon.errors.InsecurePath`), and
the shim is written without following a symlink planted in its place.
"""
from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
import os
import re
import sys
import uuid
from typing import Dict, Optional, TextIO

from parsl_dragon.wire.security import private_directory

logger = logging.getLogger(__name__)

CLEANUP_SHIM = """#!/bin/sh
# Written by parsl-dragon's block boot. Dragon's launcher runs `dragon-cleanup` when it is
# stopped by a signal or exits abnormally; the real one kills every Dragon process of this user
# on the node and deletes all of the user's /dev/shm files -- other blocks, other workflows.
# The block's boot process cleans up instead, scoped to processes carrying this block's token
# and to this runtime's own shm pools.
echo "parsl-dragon: skipped user-wide dragon-cleanup $*; the block cleans up its own processes" >&2
exit 0
"""


def take_block_lock(block_dir: str) -> Optional[TextIO]:
    """Hold ``block_dir/boot.lock`` for this process's life; None if another boot holds it."""
    handle = open(os.path.join(block_dir, "boot.lock"), "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def write_file_nofollow(directory: str, name: str, text: str, mode: int) -> str:
    """Write ``directory/name`` without following a symlink planted in its place: a new temporary
    file (O_EXCL|O_NOFOLLOW) renamed over it, both relative to one descriptor of the directory."""
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        temp = f".{name}.{uuid.uuid4().hex}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            os.fchmod(handle.fileno(), mode)
        os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    return os.path.join(directory, name)


# Dragon keeps `dragon-config add`'s values here, relative to its package (dragon.infrastructure.facts
# CONFIG_FILE_PATH = DRAGON_BASE_DIR/.hsta-config/dragon-config.json); found without importing dragon.
DRAGON_CONFIG_FILE = os.path.join(".hsta-config", "dragon-config.json")
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_.-]+$")


def dragon_config_file() -> Optional[str]:
    """Dragon's configuration file in the installed package; None if dragon is not installed."""
    spec = importlib.util.find_spec("dragon")
    locations = list(spec.submodule_search_locations or []) if spec else []
    return os.path.join(locations[0], DRAGON_CONFIG_FILE) if locations else None


def dragon_config_values(path: Optional[str]) -> Optional[Dict[str, str]]:
    """What ``dragon-config --get=KEY`` prints for each key of the file at ``path``, read as the
    real one reads it (a file that is missing or not JSON holds nothing); None when the file
    cannot be answered for in a shell ``case`` (unreadable, a key with other characters, not a
    JSON object) or there is none: the shim then defers to the real command."""
    if path is None:
        return None
    try:
        with open(path) as handle:
            values = json.load(handle)
    except (FileNotFoundError, json.JSONDecodeError):  # the real one: an empty configuration
        return {}
    except (OSError, ValueError):  # unreadable, not text: the real one decides
        return None
    if not isinstance(values, dict) or not all(_SAFE_KEY.match(key) for key in values):
        return None
    return {key: f"{value}" for key, value in values.items()}


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def dragon_config_shim(values: Optional[Dict[str, str]], real: str) -> str:
    """The text of the block's ``dragon-config``.

    Dragon's runtime runs ``dragon-config --get=KEY`` through ``sh`` six times as it starts
    (libdragon's GPU probe asks for the CUDA, HIP and Level Zero runtime libraries), and the
    real command is a Python program that imports Dragon: 0.4 s a call on a 2-core test
    machine (~2.4 s of every block's start there), more from a shared file system. The shim
    answers exactly those calls (one ``--get=KEY`` argument) from ``values``, read when the
    block boots, as the real one would (an unknown key: an empty line); every other use, or
    every use when ``values`` is None, runs the real ``dragon-config``. A ``dragon-config add`` made while a block runs
    reaches the next block, as it reaches the next runtime start in Dragon itself.
    """
    lines = ["#!/bin/sh",
             "# Written by parsl-dragon's block boot (server/bootdir.py: dragon_config_shim): answers the",
             "# runtime's start-up `dragon-config --get=KEY` calls without starting Python.",
             'if [ "$#" -eq 1 ]; then', '  case "$1" in']
    if values is not None:
        lines += [f"    --get={key}) printf '%s\\n' {_quoted(value)}; exit 0;;"
                  for key, value in sorted(values.items())]
        lines += ["    --get=*) echo; exit 0;;"]
    lines += ["  esac", "fi", f"exec {_quoted(real)} \"$@\"", ""]
    return "\n".join(lines)


def shim_dir(block_dir: str) -> str:
    """The block's private bin dir, first on the runtime's PATH: ``dragon-cleanup`` replaces
    Dragon's user-wide one (see CLEANUP_SHIM), ``dragon-config`` answers start-up questions fast."""
    bindir = os.path.join(block_dir, "bin")
    private_directory(bindir)
    write_file_nofollow(bindir, "dragon-cleanup", CLEANUP_SHIM, 0o755)
    real = os.path.join(os.path.dirname(sys.executable), "dragon-config")
    values = dragon_config_values(dragon_config_file())
    if values is None:
        logger.info("dragon-config values not cached (unusual config file): the runtime asks the real one")
    write_file_nofollow(bindir, "dragon-config", dragon_config_shim(values, real), 0o755)
    return bindir
