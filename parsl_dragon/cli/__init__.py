"""``parsl-dragon``: find, check and tear down parsl-dragon servers through their connection files.

Usage::

    parsl-dragon status   [PATH ...] [--json] [--timeout S] [--key-path DIR]
    parsl-dragon teardown [PATH ...] [--force] [--timeout S] [--key-path DIR]

A PATH is a connection file or a directory searched recursively for
``connection.json``; without PATH: ``$PARSL_DRAGON_SERVER_PATH`` (if set) and
``./runinfo``. A server found there is::

    live         it answered the handshake made with our client key
    stale        its pid is gone from this host (or another server answers at its address)
    unreachable  no answer within --timeout
    rejected     it refused us: our key is not trusted, or the versions differ
    refused      we refuse the connection file: another user owns or can write it or its
                 directory, or it is not a regular file (a symlink, a FIFO); nothing it says is used
    damaged      the connection file cannot be read, or a field has the wrong type

Teardown of one server::

    handshake + Shutdown ----> wait --timeout for the server, its boot process and
                               every process carrying the block token to exit
    still running? ----------> SIGTERM, later SIGKILL, to the boot process (it stops the
                               runtime and cleans up), then to every token process
    runtime launcher dead? --> remove its /dev/shm pools
    server gone? ------------> remove the connection file

Only processes that provably belong to the block are signalled: their environment
carries ``PARSL_DRAGON_BLOCK_TOKEN=<block_token>`` from the connection file, or (the
boot process, which makes the token for its children) they are the parent of one that
does. Signals go through a pidfd, so a recycled pid is never hit. For a server on
another host only the shutdown request is possible.

Exit codes: 0 ok; 1 a server is not live (status) or something is still running or
left behind (teardown); 2 usage or configuration error.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Sequence, TextIO, Tuple

import zmq

from parsl_dragon.driver.client import DragonClient
from parsl_dragon.driver.settings import ENV_KEY_PATH, ENV_SERVER_PATH, resolve_settings
from parsl_dragon.errors import (
    AuthenticationFailed,
    ConfigurationError,
    DragonExecutorError,
    HandshakeTimeout,
    InsecurePath,
    ServerConnectionError,
    VersionMismatch,
)
from parsl_dragon.server import boot
from parsl_dragon.wire import protocol as p
from parsl_dragon.wire import security
from parsl_dragon.wire.connection import CONNECTION_FILE, ConnectionInfo, read_connection, remove_connection

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
LIVE, STALE, UNREACHABLE, REJECTED = "live", "stale", "unreachable", "rejected"
REFUSED, DAMAGED = "refused", "damaged"  # the connection file itself: not trusted / not readable
HANDSHAKE_TIMEOUT = 3.0
TEARDOWN_TIMEOUT = 30.0
BOOT_GRACE = boot.STOP_GRACE_SECONDS + 5.0  # boot stops the runtime, then cleans up
TERM_GRACE = 5.0
SHUTDOWN_REASON = "parsl-dragon teardown"
_BOOT_LOG_LAUNCH = re.compile(r"Started dragon \(pid (\d+)\)")


# ---- discovery --------------------------------------------------------------
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
    return info.host == socket.gethostname()


# ---- processes of a block on this host -------------------------------------
def _proc(pid: int, name: str) -> bytes:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def _stat_fields(pid: int) -> List[bytes]:
    stat = _proc(pid, "stat")  # the command name (field 2) may hold spaces and ')'
    return stat[stat.rfind(b")") + 2:].split() if stat else []


def is_running(pid: int) -> bool:
    """The process exists and is not a zombie."""
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] not in (b"Z", b"X")


def parent_pid(pid: int) -> Optional[int]:
    fields = _stat_fields(pid)
    return int(fields[1]) if len(fields) > 1 else None


def carries_token(pid: int, token: Optional[str]) -> bool:
    """Whether ``pid``'s environment holds the block token (never for zombies or others' processes)."""
    return bool(token) and boot.carries_token(pid, token)  # type: ignore[arg-type]


class Block:
    """What a connection file lets us prove about its block's processes on this host."""

    def __init__(self, info: ConnectionInfo) -> None:
        self.info = info
        self.token = info.block_token

    def token_pids(self) -> List[int]:
        return sorted(boot.processes_with_token(self.token)) if self.token else []

    def owns(self, pid: int) -> bool:
        """Carries the token, or is the boot process and the parent of a process that does."""
        if carries_token(pid, self.token):
            return True
        return pid == self.info.launcher_pid and any(parent_pid(c) == pid for c in self.token_pids())

    def alive(self, pid: int) -> bool:
        """``pid`` is (still) this block's process; without a token, merely that it runs."""
        return carries_token(pid, self.token) if self.token else is_running(pid)

    def server_running(self) -> bool:
        return self.alive(self.info.pid)

    def boot_running(self) -> bool:
        """The boot process still runs (its command line names the boot module and this block's dir)."""
        pid = self.info.launcher_pid
        argv = _proc(pid, "cmdline").split(b"\0") if pid is not None and is_running(pid) else []
        return b"parsl_dragon.server.boot" in argv and os.path.dirname(self.info.log_path).encode() in argv

    def all_gone(self) -> bool:
        return not (self.server_running() or self.boot_running() or self.token_pids())

    def runtime_launcher(self) -> Optional[int]:
        """The ``dragon`` launcher (creator of the shm pools): the boot's child among the token
        processes, else the token process running ``dragon``, else what boot.log recorded."""
        pids = self.token_pids()
        for pid in pids:
            if self.info.launcher_pid is not None and parent_pid(pid) == self.info.launcher_pid:
                return pid
        for pid in pids:
            if any(os.path.basename(a) == b"dragon" for a in _proc(pid, "cmdline").split(b"\0")[:2]):
                return pid
        return launcher_from_boot_log(os.path.join(os.path.dirname(self.info.log_path), "boot.log"))


def launcher_from_boot_log(path: str) -> Optional[int]:
    try:
        with open(path, errors="replace") as handle:
            found = _BOOT_LOG_LAUNCH.findall(handle.read())
    except OSError:
        return None
    return int(found[-1]) if found else None


class ProcessHandle:
    """A process proven to be the block's; signalled through a pidfd, so a recycled pid is never hit."""

    def __init__(self, pid: int, fd: Optional[int], proof: Callable[[int], bool]) -> None:
        self.pid, self.fd, self.proof = pid, fd, proof

    @classmethod
    def open(cls, pid: int, proof: Callable[[int], bool]) -> Optional["ProcessHandle"]:
        """A handle if ``proof(pid)`` holds, else None (the pidfd is taken first, then proven)."""
        try:
            fd: Optional[int] = os.pidfd_open(pid)
        except ProcessLookupError:
            return None
        except (AttributeError, OSError):
            fd = None  # no pidfds (old kernel): prove again right before each signal instead
        if not proof(pid):
            if fd is not None:
                os.close(fd)
            return None
        return cls(pid, fd, proof)

    def send(self, sig: signal.Signals) -> bool:
        try:
            if self.fd is not None:
                signal.pidfd_send_signal(self.fd, sig)
            elif self.proof(self.pid):
                os.kill(self.pid, sig)
            else:
                return False
            return True
        except ProcessLookupError:
            return False

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def remove_pools(launcher_pid: int) -> Tuple[List[str], List[str]]:
    """Remove the shm pools of the dead runtime launched as ``launcher_pid`` (boot's rules: exact
    pool names, none another live process uses or another live launcher could have made);
    (removed, kept)."""
    removed = boot.remove_pools(launcher_pid)
    return removed, boot.runtime_pool_files(launcher_pid)


def wait_until(done: Callable[[], bool], timeout: float, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


# ---- talking to servers ------------------------------------------------------
def client_key_path(arg: Optional[str]) -> str:
    """--key-path > PARSL_DRAGON_KEY_PATH > ~/.parsl_dragon/keys."""
    return resolve_settings(key_path=arg, env={ENV_KEY_PATH: os.environ.get(ENV_KEY_PATH, "")}).key_path


class Sessions:
    """One short-lived client per command, made on first use; a key problem is remembered."""

    def __init__(self, key_path: str, timeout_s: float) -> None:
        self.key_path, self.timeout_s = key_path, timeout_s
        self._client: Optional[DragonClient] = None
        self._error: Optional[ConfigurationError] = None

    def _get(self) -> DragonClient:
        if self._error is not None:
            raise self._error
        if self._client is None:
            try:
                if not os.path.isdir(self.key_path):
                    raise ConfigurationError(f"key directory {self.key_path} does not exist "
                                             "(--key-path / PARSL_DRAGON_KEY_PATH)")
                keys = security.load_pair(self.key_path, security.CLIENT, create=False)
            except ConfigurationError as exc:
                self._error = exc
                raise
            self._client = DragonClient(keys, timeout_s=self.timeout_s, heartbeat_period=3600.0,
                                        heartbeat_threshold=1000, on_results=_ignore,
                                        on_monitoring=_ignore, on_server_lost=_ignore)
            self._client.start()
        return self._client

    def handshake(self, info: ConnectionInfo, shutdown_reason: str = "") -> str:
        """Handshake with the server ``info`` names, leave with Shutdown (if asked and it is that
        server) or Goodbye; return the id of the server that answered."""
        client = self._get()
        try:
            link = client.connect(info, owner=False)
        except (zmq.ZMQError, ValueError) as exc:
            raise ServerConnectionError(f"cannot connect to {info.address}: {exc}") from exc
        same = link.server_id == info.server_id
        logger.debug("Server %s at %s answered as %s", info.server_id, info.address, link.server_id)
        client.disconnect(link.server_id, p.Shutdown(reason=shutdown_reason) if shutdown_reason and same
                          else p.Goodbye())
        wait_until(lambda: link.socket.closed, 5.0, 0.01)  # the I/O thread sends, then closes it
        return link.server_id

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def _ignore(*_args: object) -> None:
    pass


def why(exc: DragonExecutorError, info: ConnectionInfo, sessions: Sessions) -> str:
    """The error as one line; a handshake timeout names this command's option, not the executor's."""
    if isinstance(exc, HandshakeTimeout):
        return f"no answer from {info.address} within {sessions.timeout_s:.1f}s (--timeout)"
    return exc.message


# ---- status ------------------------------------------------------------------
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
    record: Dict[str, object] = {"connection_file": found.path, "state": state, "why": why}
    if found.info is not None:
        info = asdict(found.info)
        for key in ("server_public_key", "block_token"):
            info.pop(key)
        record.update(info, this_host=on_this_host(found.info), age_s=round(now - found.info.created, 1))
    return record


def format_age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if seconds >= size:
            return f"{seconds // size}{unit}{(seconds % size) // sub_size:02d}{sub}"
    return f"{seconds}s"


def format_record(r: Dict[str, object]) -> str:
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
        _error(f"no connection files ({CONNECTION_FILE}) found under: {', '.join(paths)}")
    return EXIT_OK if records and all(r["state"] == LIVE for r in records) else EXIT_FAILED


# ---- teardown ----------------------------------------------------------------
@dataclass
class Report:
    """What teardown did to one server, printed as it happens."""

    stream: TextIO
    ok: bool = True

    def say(self, text: str, ok: bool = True) -> None:
        self.ok = self.ok and ok
        print(f"  {text}", file=self.stream, flush=True)


def ask_to_shut_down(info: ConnectionInfo, sessions: Sessions, out: Report) -> bool:
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


def clean_local(found: Found, block: Block, launcher: Optional[int], out: Report) -> None:
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
        prefix = boot.pool_prefix(launcher)
        out.say(f"removed {len(removed)} shm pools of runtime launcher {launcher} ({prefix}*)" if removed
                else f"no shm pools left ({prefix}*)")
        if kept:
            out.say(f"kept {len(kept)} shm pools ({', '.join(os.path.basename(k) for k in kept)}): another live "
                    "process uses them, or a live dragon launcher could have made the same names")
    if block.server_running():
        out.say("kept the connection file: the server is still running", ok=False)
    elif remove_connection(found.path, block.info.server_id):
        out.say(f"removed the stale connection file {found.path}")
    elif os.path.lexists(found.path):
        out.say(f"kept the connection file: it no longer names this server, or is refused now ({found.path})")
    else:
        out.say("connection file already removed by the server")


def teardown_one(found: Found, sessions: Sessions, args: argparse.Namespace, out: Report) -> None:
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


# ---- command line ------------------------------------------------------------
def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text}")
    return value


def _add_common(sub: argparse.ArgumentParser, timeout: float, timeout_help: str) -> None:
    sub.add_argument("paths", nargs="*", metavar="PATH",
                     help="connection file or directory searched recursively for connection.json "
                          "(default: $PARSL_DRAGON_SERVER_PATH and ./runinfo)")
    sub.add_argument("--timeout", type=_seconds, default=timeout, metavar="S", help=timeout_help)
    sub.add_argument("--key-path", metavar="DIR",
                     help="client key directory (default: $PARSL_DRAGON_KEY_PATH, else ~/.parsl_dragon/keys)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parsl-dragon",
                                     description="Find, check and tear down parsl-dragon servers through "
                                                 "their connection files.",
                                     epilog="exit codes: 0 ok, 1 not live / not clean, 2 usage or configuration")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv: debug)")
    subs = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status = subs.add_parser("status", help="show the servers found and whether each is live",
                             description="Show each server found: live, stale, unreachable, rejected, refused or "
                                         "damaged. Exit 0 only if at least one was found and all are live.")
    _add_common(status, HANDSHAKE_TIMEOUT, f"handshake timeout per server (default {HANDSHAKE_TIMEOUT:.0f})")
    status.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    status.set_defaults(run=cmd_status)
    teardown = subs.add_parser("teardown", help="stop the servers found and clean up after them",
                               description="Ask each server to shut down, wait, then signal what is left of its "
                                           "block (only processes carrying its block token), remove its shm "
                                           "pools and its stale connection file. Exit 0 if nothing is left.")
    _add_common(teardown, TEARDOWN_TIMEOUT, f"how long to wait for a server to stop after asking it "
                f"(default {TEARDOWN_TIMEOUT:.0f}; the handshake waits at most {HANDSHAKE_TIMEOUT:.0f})")
    teardown.add_argument("--force", action="store_true",
                          help="do not ask or wait: signal the block's processes right away")
    teardown.set_defaults(run=cmd_teardown)
    return parser


def _error(message: str) -> None:
    print(f"parsl-dragon: {message}", file=sys.stderr, flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, format="parsl-dragon: %(levelname)s %(name)s: %(message)s",
                        level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)])
    if not args.verbose:  # boot's helpers log for boot.log; teardown prints what they did
        logging.getLogger(boot.logger.name).setLevel(logging.ERROR)
    try:
        missing = [path for path in args.paths if not os.path.exists(path)]
        if missing:
            raise ConfigurationError(f"no such file or directory: {', '.join(missing)}")
        return args.run(args, args.paths or default_paths(dict(os.environ)))
    except ConfigurationError as exc:
        _error(exc.message)
        return EXIT_USAGE
    except DragonExecutorError as exc:
        _error(exc.message)
        return EXIT_FAILED
    except OSError as exc:  # e.g. a connection file we may not remove
        _error(str(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:
        _error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
