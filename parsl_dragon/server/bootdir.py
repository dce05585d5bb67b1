"""A block's directory as its boot process prepares it: private, locked to one boot, with the cleanup shim.

Runs in the block's boot process (:mod:`parsl_dragon.server.boot`), outside Dragon::

    <block dir>/             0700, ours (made, or tightened, by wire.security.private_directory)
      boot.lock              flock()ed by the one boot of the block for its whole life
      boot.log, dragon.log   boot's log; the runtime's output
      bin/                   0700, first on the runtime's PATH
        dragon-cleanup       the shim (CLEANUP_SHIM) shadowing Dragon's user-wide cleanup

Whatever group or others could write there would run as us (``bin/``) or be believed, so a
directory that is not ours alone is refused (:class:`~parsl_dragon.errors.InsecurePath`), and
the shim is written without following a symlink planted in its place.
"""
from __future__ import annotations

import fcntl
import os
import uuid
from typing import Optional, TextIO

from parsl_dragon.wire.security import private_directory

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


def cleanup_shim(block_dir: str) -> str:
    """A private bin dir whose ``dragon-cleanup`` replaces Dragon's user-wide one (see CLEANUP_SHIM)."""
    bindir = os.path.join(block_dir, "bin")
    private_directory(bindir)
    write_file_nofollow(bindir, "dragon-cleanup", CLEANUP_SHIM, 0o755)
    return bindir
