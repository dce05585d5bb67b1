"""Publishing a server: its connection file, at a shared ``server_path`` only if no live server holds it.

Two drivers may race for one shared ``server_path``: the file is created exclusively, a stale
one (its server's pid is gone from this host) is replaced, and a server that loses the race
publishes in its own block directory, where its driver's watcher looks too (each watcher takes
only the file of its own ``launch_id``).
"""
from __future__ import annotations

import logging
import os
import socket
import time
from typing import Optional

from parsl_dragon.server.options import ServerOptions
from parsl_dragon.vocabulary import ENV_BLOCK_TOKEN
from parsl_dragon.wire.connection import (
    CONNECTION_FILE,
    ConnectionInfo,
    read_connection,
    remove_connection,
    write_connection,
)
from parsl_dragon.wire.protocol import PROTOCOL_VERSION

logger = logging.getLogger(__name__)


def connection_info(options: ServerOptions, server_id: str, address: str,
                    local_address: Optional[str] = None) -> ConnectionInfo:
    """What a server publishes about itself: where it listens (and, for a driver on its host, its
    Unix socket), its key, and what proves its processes."""
    return ConnectionInfo(
        protocol=PROTOCOL_VERSION, address=address, local_address=local_address,
        server_public_key=options.server_keys.public.decode(),
        host=socket.gethostname(), pid=os.getpid(), launcher_pid=options.launcher_pid, job_id=options.job_id,
        block_id=options.block_id, server_id=server_id, created=time.time(), log_path=options.log_path,
        block_token=os.environ.get(ENV_BLOCK_TOKEN), launch_id=options.launch_id)


def publish(info: ConnectionInfo, path: str, block_dir: str) -> str:
    """Write ``info`` at ``path`` (or, if another live server holds it, in ``block_dir``); return where."""
    private = os.path.join(block_dir, CONNECTION_FILE)
    if path == private:
        write_connection(path, info)
        return path
    for _ in range(2):
        try:
            write_connection(path, info, exclusive=True)
            return path
        except FileExistsError:
            if not is_stale(path):
                break
            logger.warning("Replacing stale connection file %s", path)
            remove_connection(path)
    logger.warning("%s names another live server: publishing in %s instead", path, private)
    write_connection(private, info)
    return private


def is_stale(path: str) -> bool:
    """True if the connection file at ``path`` names a server that is gone (or is itself gone)."""
    try:
        return read_connection(path).pid_alive() is False
    except FileNotFoundError:
        return True
    except Exception:  # damaged or refused: not ours to take over
        return False
