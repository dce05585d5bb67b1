"""Where a block's same-host links live: Unix sockets in a directory only this user can enter.

A link between two processes of one host (a worker and its server, a driver and the server of
a block on its own host) need not be encrypted and authenticated with CURVE: a Unix socket
whose directory is 0700 and ours can only be reached by processes of this user, which is the
same boundary the CURVE keys (0600 files in a 0700 directory) draw, and its bytes never leave
the kernel. ``benchmarks/links.py`` measured CURVE at ~430 MB/s against ~1,600 MB/s without it
for 16 MB messages here (docs/benchmarks.md), and every result that travels crosses two such
links in a local block.

A socket path may be at most ~107 bytes: the block directory is used when the path fits,
else a private directory ``/tmp/parsl-dragon-<uid>/<hash of the block directory>`` that the
server removes when it stops (and ``boot`` after the runtime, for a server that was killed).
``PARSL_DRAGON_LOCAL_LINKS=0`` turns same-host links off (everything over TCP + CURVE).
Standard library only.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from typing import Mapping, Optional

from parsl_dragon.vocabulary import ENV_LOCAL_LINKS

MAX_PATH = 100  # sun_path holds 108 bytes with its NUL; some room for the name
SOCKET_NAMES = ("workers.sock", "clients.sock")


def enabled(env: Mapping[str, str]) -> bool:
    return env.get(ENV_LOCAL_LINKS, "1").strip() not in ("0", "false", "no", "off")


def fallback_directory(block_dir: str) -> str:
    """The short private directory used when the block directory's paths are too long."""
    digest = hashlib.sha1(os.path.abspath(block_dir).encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"parsl-dragon-{os.getuid()}", digest)


def socket_directory(block_dir: str) -> str:
    """A private (0700, ours) directory for the block's Unix sockets, created if needed."""
    longest = max(len(name) for name in SOCKET_NAMES) + 1
    directory = block_dir if len(os.path.abspath(block_dir)) + longest <= MAX_PATH else fallback_directory(block_dir)
    for path in (os.path.dirname(directory), directory) if directory != block_dir else (directory,):
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.lstat(path)
        if info.st_uid != os.getuid() or info.st_mode & 0o077 or os.path.islink(path):
            raise PermissionError(f"{path} is not a private directory of this user: no same-host sockets there")
    return directory


def address(directory: str, name: str) -> str:
    return "ipc://" + os.path.join(directory, name)


def remove(block_dir: str, directory: Optional[str] = None) -> None:
    """Remove the block's socket files (and the fallback directory, if that is where they were)."""
    directory = directory or socket_directory_if_any(block_dir)
    if directory is None:
        return
    for name in SOCKET_NAMES:
        try:
            os.unlink(os.path.join(directory, name))
        except OSError:
            pass
    if directory != block_dir:
        shutil.rmtree(directory, ignore_errors=True)


def socket_directory_if_any(block_dir: str) -> Optional[str]:
    fallback = fallback_directory(block_dir)
    return fallback if os.path.isdir(fallback) else block_dir
