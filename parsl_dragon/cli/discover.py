"""Finding servers: the connection files under the paths given (or the default ones), read and checked.

A PATH is a connection file or a directory searched recursively for ``connection.json``
(symlinked directories are not followed; a file reached twice counts once); without PATH:
``$PARSL_DRAGON_SERVER_PATH`` (if set) and ``./runinfo``. Reading a file refuses one another
user owns or can write, or that is not a regular file (:func:`~parsl_dragon.wire.connection.read_connection`).
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from parsl_dragon.errors import ConfigurationError, InsecurePath
from parsl_dragon.vocabulary import ENV_SERVER_PATH
from parsl_dragon.wire.connection import CONNECTION_FILE, ConnectionInfo, read_connection


@dataclass
class Found:
    """One connection file: what it says, or why it cannot be read (``refused``: why it is not trusted)."""

    path: str
    info: Optional[ConnectionInfo] = None
    error: str = ""
    refused: bool = False


def default_paths(env: Dict[str, str]) -> List[str]:
    """``$PARSL_DRAGON_SERVER_PATH`` (if set) and ``./runinfo``."""
    paths = [os.path.expanduser(env[ENV_SERVER_PATH].strip())] if env.get(ENV_SERVER_PATH, "").strip() else []
    return paths + [os.path.join(os.getcwd(), "runinfo")]


def find_connection_files(paths: Sequence[str]) -> List[str]:
    """Paths given that are not directories (even FIFOs: reading refuses them), plus every
    ``connection.json`` below the directories (once each)."""
    found: Dict[str, str] = {}
    for path in paths:
        if not os.path.isdir(path):
            found.setdefault(os.path.realpath(path), os.path.abspath(path))
        for root, dirs, files in os.walk(path):
            dirs.sort()
            if CONNECTION_FILE in files:
                full = os.path.join(root, CONNECTION_FILE)
                found.setdefault(os.path.realpath(full), os.path.abspath(full))
    return sorted(found.values())


def load_found(paths: Sequence[str]) -> List[Found]:
    """Every connection file found, read: its contents, or why they cannot be used."""
    result = []
    for path in find_connection_files(paths):
        try:
            result.append(Found(path, read_connection(path)))
        except FileNotFoundError:
            continue  # its server stopped meanwhile
        except ConfigurationError as exc:  # InsecurePath (refused) included
            result.append(Found(path, error=exc.message, refused=isinstance(exc, InsecurePath)))
    return result


def on_this_host(info: ConnectionInfo) -> bool:
    """The server runs on this host: its processes and /dev/shm can be inspected from here."""
    return info.host == socket.gethostname()
