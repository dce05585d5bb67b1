"""``parsl-dragon status``: the state of each server found, as text or JSON.

A server found is::

    live         it answered the handshake made with our client key
    stale        its pid is gone from this host (or another server answers at its address)
    unreachable  no answer within --timeout
    rejected     it refused us: our key is not trusted, or the versions differ
    refused      we refuse the connection file: another user owns or can write it or its
                 directory, or it is not a regular file (a symlink, a FIFO); nothing it says is used
    damaged      the connection file cannot be read, or a field has the wrong type

Exit 0 only if at least one server was found and every one is live.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from typing import Dict, List, Tuple

from parsl_dragon.cli.block import Block
from parsl_dragon.cli.discover import Found, load_found, on_this_host
from parsl_dragon.cli.report import EXIT_FAILED, EXIT_OK, error
from parsl_dragon.cli.sessions import Sessions, client_key_path, why
from parsl_dragon.errors import AuthenticationFailed, ConfigurationError, DragonExecutorError, VersionMismatch
from parsl_dragon.host.processes import is_running
from parsl_dragon.wire.connection import CONNECTION_FILE

LIVE, STALE, UNREACHABLE, REJECTED = "live", "stale", "unreachable", "rejected"
REFUSED, DAMAGED = "refused", "damaged"  # the connection file itself: not trusted / not readable


def probe(found: Found, sessions: Sessions) -> Tuple[str, str]:
    """(state, why) of the server a connection file names."""
    info = found.info
    if info is None:
        return (REFUSED if found.refused else DAMAGED), found.error
    if on_this_host(info) and not Block(info).server_running():
        if is_running(info.pid):
            return STALE, f"pid {info.pid} is now another process (it does not carry the block token)"
        return STALE, f"server pid {info.pid} is gone from this host"
    try:
        answered = sessions.handshake(info)
    except ConfigurationError:
        raise
    except DragonExecutorError as exc:
        refused = isinstance(exc, (AuthenticationFailed, VersionMismatch))
        return (REJECTED if refused else UNREACHABLE), why(exc, info, sessions)
    if answered != info.server_id:
        return STALE, f"another server ({answered}) now answers at {info.address}"
    return LIVE, ""


def status_record(found: Found, state: str, why: str, now: float) -> Dict[str, object]:
    """One server for ``--json``: the file's fields (not its key or token), its state and why."""
    record: Dict[str, object] = {"connection_file": found.path, "state": state, "why": why}
    if found.info is not None:
        info = asdict(found.info)
        for key in ("server_public_key", "block_token"):
            info.pop(key)
        record.update(info, this_host=on_this_host(found.info), age_s=round(now - found.info.created, 1))
    return record


def format_age(seconds: float) -> str:
    """``59s``, ``1m01s``, ``1h00m``, ``3d02h``."""
    seconds = max(0, int(seconds))
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if seconds >= size:
            return f"{seconds // size}{unit}{(seconds % size) // sub_size:02d}{sub}"
    return f"{seconds}s"


def format_record(r: Dict[str, object]) -> str:
    """One server as text: its state and ids, then one indented line per fact."""
    if r["state"] in (REFUSED, DAMAGED):
        return f"{r['state']:<12} {r['connection_file']}\n  why        {r['why']}"
    where = "this host" if r["this_host"] else "another host"
    lines = [f"{r['state']:<12} server {r['server_id']}  block {r['block_id'] or '-'}  "
             f"job {r['job_id'] or '-'}  age {format_age(r['age_s'])}",  # type: ignore[arg-type]
             f"  file       {r['connection_file']}",
             f"  address    {r['address']}",
             f"  host       {r['host']} ({where}), pid {r['pid']}, boot pid {r['launcher_pid'] or '-'}",
             f"  log        {r['log_path']}"]
    if r["why"]:
        lines.append(f"  why        {r['why']}")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace, paths: List[str]) -> int:
    """Print the state of every server found under ``paths``; the exit code."""
    found = load_found(paths)
    sessions = Sessions(client_key_path(args.key_path), args.timeout)
    try:
        now = time.time()
        records = [status_record(f, *probe(f, sessions), now) for f in found]
    finally:
        sessions.close()
    if args.json:
        print(json.dumps({"servers": records}, indent=2))
    elif records:
        print("\n".join(format_record(r) for r in records))
    if not records:
        error(f"no connection files ({CONNECTION_FILE}) found under: {', '.join(paths)}")
    return EXIT_OK if records and all(r["state"] == LIVE for r in records) else EXIT_FAILED
