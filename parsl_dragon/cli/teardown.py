"""``parsl-dragon teardown``: stop each server found and clean up after its block on this host.

Teardown of one server::

    handshake + Shutdown ----> wait --timeout for the server, its boot process and
                               every process carrying the block token to exit
    still running? ----------> SIGTERM, later SIGKILL, to the boot process (it stops the
                               runtime and cleans up), then to every token process
    runtime launcher dead? --> remove its /dev/shm pools
    server gone? ------------> remove the connection file

Only processes that provably belong to the block are signalled (:class:`~parsl_dragon.cli.block.Block`),
each through a pidfd taken before the proof (:class:`~parsl_dragon.host.processes.ProcessHandle`),
so a recycled pid is never hit; pools go by :func:`~parsl_dragon.host.shm.remove_pools`'s rules.
For a server on another host only the shutdown request is possible.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import time
from typing import List, Optional, Tuple

from parsl_dragon.cli.block import Block, wait_until
from parsl_dragon.cli.discover import Found, load_found, on_this_host
from parsl_dragon.cli.report import EXIT_FAILED, EXIT_OK, Report
from parsl_dragon.cli.sessions import HANDSHAKE_TIMEOUT, Sessions, client_key_path, why
from parsl_dragon.errors import ConfigurationError, DragonExecutorError
from parsl_dragon.host import local_sockets, shm
from parsl_dragon.host.processes import ProcessHandle
from parsl_dragon.vocabulary import RUNTIME_STOP_GRACE_SECONDS
from parsl_dragon.wire.connection import CONNECTION_FILE, ConnectionInfo, read_connection, remove_connection

logger = logging.getLogger(__name__)

TEARDOWN_TIMEOUT = 30.0
BOOT_GRACE = RUNTIME_STOP_GRACE_SECONDS + 5.0  # boot stops the runtime, then cleans up
TERM_GRACE = 5.0
SHUTDOWN_REASON = "parsl-dragon teardown"


def ask_to_shut_down(info: ConnectionInfo, sessions: Sessions, out: Report) -> bool:
    """Send Shutdown to the server ``info`` names (not to another one at its address); whether sent."""
    if on_this_host(info) and not Block(info).server_running():
        out.say(f"server pid {info.pid} is already gone")
        return False
    try:
        answered = sessions.handshake(info, shutdown_reason=SHUTDOWN_REASON)
    except DragonExecutorError as exc:
        out.say(f"could not ask the server to shut down: {why(exc, info, sessions)}")
        return False
    if answered != info.server_id:
        out.say(f"did not ask to shut down: another server ({answered}) answers at {info.address}")
        return False
    out.say("asked the server to shut down")
    return True


def stop_remote(found: Found, asked: bool, timeout: float, out: Report) -> None:
    """A server on another host: wait for it to remove its connection file, if it was asked to stop."""
    info = found.info
    assert info is not None
    out.say(f"the server runs on host {info.host}, this is {socket.gethostname()}: only the shutdown request "
            f"is possible from here (run parsl-dragon teardown on {info.host} to stop its processes)")
    if asked and wait_until(lambda: not _names(found.path, info.server_id), timeout):
        out.say("the server stopped: it removed its connection file")
    else:
        out.say("the server is not known to have stopped: its connection file remains", ok=False)


def _names(path: str, server_id: str) -> bool:
    try:
        return read_connection(path).server_id == server_id
    except (FileNotFoundError, ConfigurationError):
        return False


def signal_all(handles: List[ProcessHandle], sig: signal.Signals) -> List[int]:
    """Signal each handle's process; the pids that got it."""
    return [h.pid for h in handles if h.send(sig)]


def escalate(block: Block, boot_handle: Optional[ProcessHandle], out: Report) -> None:
    """SIGTERM then SIGKILL to the boot process, then to every process carrying the token."""
    boot_pid = block.info.launcher_pid
    if block.boot_running():
        if boot_handle is None:
            out.say(f"not signalling boot process {boot_pid} (no token process proves it is this block's): "
                    f"waiting up to {BOOT_GRACE:.0f}s for it to exit")
        elif signal_all([boot_handle], signal.SIGTERM):
            out.say(f"sent SIGTERM to boot process {boot_pid}")
        gone = wait_until(lambda: not block.boot_running(), BOOT_GRACE)
        if not gone and boot_handle is not None and signal_all([boot_handle], signal.SIGKILL):
            out.say(f"sent SIGKILL to boot process {boot_pid} (still running after {BOOT_GRACE:.0f}s)")
    for sig in (signal.SIGTERM, signal.SIGKILL):
        handles = [h for h in (ProcessHandle.open(pid, block.owns) for pid in block.token_pids()) if h]
        pids = signal_all(handles, sig)
        for handle in handles:
            handle.close()
        logger.debug("%s to token processes %s of block %s", sig.name, pids, block.info.block_id)
        if not pids:
            break
        out.say(f"sent {sig.name} to {len(pids)} processes carrying the block token: {pids}")
        if wait_until(lambda: not block.token_pids(), TERM_GRACE):
            break


def stop_local(block: Block, boot_handle: Optional[ProcessHandle], asked: bool, timeout: float,
               out: Report) -> None:
    """Wait for the block's processes here if the server was asked to stop, else (or then) escalate."""
    if not block.token:
        out.say("the connection file names no block token: no process will be signalled")
    started = time.monotonic()
    if asked and wait_until(block.all_gone, timeout):
        out.say(f"the server and its runtime exited within {time.monotonic() - started:.1f}s")
    elif not block.all_gone():
        if asked:
            out.say(f"still running after {timeout:.0f}s: escalating")
        escalate(block, boot_handle, out)


POOL_USERS_GRACE = 5.0  # seconds for processes just killed to finish exiting (and unmap the pools)


def remove_pools(launcher_pid: int, grace: float = POOL_USERS_GRACE) -> Tuple[List[str], List[str]]:
    """Remove the shm pools of the dead runtime launched as ``launcher_pid`` (:func:`shm.remove_pools`'s
    rules); (removed, kept). A pool still mapped is tried again for ``grace`` seconds: a process
    SIGKILLed a moment ago may still be unmapping its memory."""
    removed: List[str] = []

    def all_removed() -> bool:
        removed.extend(shm.remove_pools(launcher_pid))
        return not shm.runtime_pool_files(launcher_pid)
    wait_until(all_removed, grace, interval=0.2)
    return removed, shm.runtime_pool_files(launcher_pid)


def clean_local(found: Found, block: Block, launcher: Optional[int], out: Report) -> None:
    """Say what is still running, remove the dead runtime's pools and the stale connection file."""
    left = block.token_pids() + ([block.info.pid] if block.server_running() else [])
    if block.boot_running() and block.info.launcher_pid is not None:
        left.append(block.info.launcher_pid)
    if left:
        out.say(f"still running: {sorted(set(left))}", ok=False)
    if launcher is None:
        out.say("runtime launcher unknown (no token process, no boot.log): shm pools not checked")
    elif block.alive(launcher):
        out.say(f"kept the shm pools: runtime launcher {launcher} is still running", ok=False)
    else:
        removed, kept = remove_pools(launcher)
        prefix = shm.pool_prefix(launcher)
        out.say(f"removed {len(removed)} shm pools of runtime launcher {launcher} ({prefix}*)" if removed
                else f"no shm pools left ({prefix}*)")
        if kept:
            out.say(f"kept {len(kept)} shm pools ({', '.join(os.path.basename(k) for k in kept)}): another live "
                    "process uses them, or a live dragon launcher could have made the same names")
    if not block.server_running():  # its same-host Unix sockets, if it could not remove them itself
        local_sockets.remove(os.path.dirname(block.info.log_path))
    if block.server_running():
        out.say("kept the connection file: the server is still running", ok=False)
    elif remove_connection(found.path, block.info.server_id):
        out.say(f"removed the stale connection file {found.path}")
    elif os.path.lexists(found.path):
        out.say(f"kept the connection file: it no longer names this server, or is refused now ({found.path})")
    else:
        out.say("connection file already removed by the server")


def teardown_one(found: Found, sessions: Sessions, args: argparse.Namespace, out: Report) -> None:
    """Ask, wait, escalate and clean up for one connection file."""
    info = found.info
    if info is None:
        out.say(f"nothing done: {found.error}", ok=False)
        return
    if not on_this_host(info):
        stop_remote(found, not args.force and ask_to_shut_down(info, sessions, out), args.timeout, out)
        return
    block = Block(info)
    launcher = block.runtime_launcher()  # both while the runtime still runs
    boot_handle = ProcessHandle.open(info.launcher_pid, block.owns) if info.launcher_pid is not None else None
    try:
        stop_local(block, boot_handle, not args.force and ask_to_shut_down(info, sessions, out), args.timeout, out)
    finally:
        if boot_handle is not None:
            boot_handle.close()
    clean_local(found, block, launcher, out)


def cmd_teardown(args: argparse.Namespace, paths: List[str]) -> int:
    """Tear down every server found under ``paths``, saying what was done; the exit code."""
    found = load_found(paths)
    if not found:
        print(f"nothing to tear down: no connection files ({CONNECTION_FILE}) under: {', '.join(paths)}")
        return EXIT_OK
    sessions = Sessions(client_key_path(args.key_path), min(args.timeout, HANDSHAKE_TIMEOUT))
    ok = True
    try:
        for item in found:
            name = f"server {item.info.server_id}" if item.info else "connection file"
            where = f" on {item.info.host} (pid {item.info.pid})" if item.info else ""
            print(f"{name}{where}: {item.path}", flush=True)
            report = Report(sys.stdout)
            teardown_one(item, sessions, args, report)
            print(f"  => {'done' if report.ok else 'NOT CLEAN'}", flush=True)
            ok = ok and report.ok
    finally:
        sessions.close()
    return EXIT_OK if ok else EXIT_FAILED
