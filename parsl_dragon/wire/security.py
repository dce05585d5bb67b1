"""Files we must trust: CURVE keys on disk, and private directories and files of the driver.

Layout of a key directory (``~/.parsl_dragon/keys`` unless configured)::

    <key_path>/            0700
      client.key           public key of this user's executors (z85, 0644 is fine)
      client.key_secret    secret key (0600)
      server.key           public key of this user's servers
      server.key_secret    secret key (0600)

The files are pyzmq's certificate format (``zmq.auth.create_certificates``),
so standard tools can read them. A directory or secret file that is group- or
world-accessible is refused with :class:`InsecureKeyPath`; secrets are never
logged. A pair is made in a private temporary directory and its secret file
hard-linked into place, so processes racing to make the first pair all end up
using the one that won.

Directories the driver, its blocks and its servers share (server directories, block
directories and their ``bin/``, the run directory's parts) are made, or tightened, to
0700 with :func:`private_directory`, and files read from them pass
:func:`check_trusted`: a file or directory that another user owns or can write, or a
symlink, would let that user point us at a server of theirs, so it is refused with
:class:`InsecurePath`.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from socket import gethostname
from typing import Mapping, Optional, Tuple

import zmq
import zmq.auth

from parsl_dragon.vocabulary import (
    ENV_SERVER_HOST,
    ENV_WORKER_ADDRESS,
    ENV_WORKER_LOCAL_ADDRESS,
    ENV_WORKER_SECRET,
    ENV_WORKER_SERVER_KEY,
    errors,
)

logger = logging.getLogger(__name__)

CLIENT = "client"
SERVER = "server"


@dataclass(frozen=True)
class KeyPair:
    """A CURVE key pair as z85 bytes. ``repr`` hides the secret."""

    public: bytes
    secret: bytes

    def __repr__(self) -> str:
        return f"KeyPair(public={self.public.decode()!r}, secret=<hidden>)"


def _kind(mode: int) -> str:
    """What kind of file ``mode`` describes, in words."""
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISREG, "a regular file"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a device"


def _problem(path: str, st: os.stat_result, directory: bool) -> Optional[Tuple[str, str]]:
    """(why, fix) if ``st`` is not our own directory / regular file closed to others' writes."""
    wanted, kind = ("a directory" if directory else "a regular file"), _kind(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        return ("it is a symbolic link, which whoever can change it may point anywhere",
                f"use the real path ({os.path.realpath(path)}) or replace the link")
    if kind != wanted:
        return f"it is {kind}, not {wanted}", "remove it or choose another path"
    if st.st_uid != os.geteuid():
        return (f"it belongs to uid {st.st_uid}, not to you (uid {os.geteuid()}), so that user controls it",
                "remove it (as its owner) or choose another path")
    if st.st_mode & 0o022:
        return "group or others can write it, so they could forge what it holds", f"run: chmod go-w {path}"
    return None


def check_trusted(path: str, st: os.stat_result, what: str, directory: bool = False) -> None:
    """Refuse ``path`` (``st`` from ``lstat`` or ``fstat``) unless it is a directory (or regular
    file) that we own and group and others cannot write; raises :class:`InsecurePath`."""
    problem = _problem(path, st, directory)
    if problem is not None:
        why, fix = problem
        raise errors().InsecurePath(f"refusing {what} {path} (owner uid {st.st_uid}, mode "
                                    f"{stat.S_IMODE(st.st_mode):04o}): {why}; {fix}")


def check_trusted_file(path: str, what: str = "file") -> None:
    """Refuse ``path`` unless it is a regular file (not a symlink) we own that others cannot write."""
    check_trusted(path, os.lstat(path), what)


def check_trusted_directory(path: str, what: str = "directory") -> None:
    """Refuse ``path`` unless it is a directory (not a symlink) we own that others cannot write."""
    check_trusted(path, os.lstat(path), what, directory=True)


def private_directory(path: str) -> None:
    """Make ``path`` a directory only we can enter: made 0700 (with missing parents) if missing, an
    existing one of ours tightened to exactly 0700.

    Raises
    ------
    InsecurePath
        ``path`` is a symlink or not a directory, another user owns it, or group or others can
        write it: what they may have put there (a connection file, a ``bin/dragon``) would be
        trusted. It is refused as it is, never changed.
    """
    if not os.path.lexists(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        try:
            os.mkdir(path, 0o700)  # umask may narrow the mode: made exact below
        except FileExistsError:
            pass  # made meanwhile, by us or by someone else: checked below like any existing one
    check_trusted_directory(path)
    _tighten_directory(path)


def _tighten_directory(path: str) -> None:
    """chmod 0700 the directory at ``path`` itself, checked once more through its descriptor: never
    what a symlink put there since the check points to."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
            raise
        raise errors().InsecurePath(f"refusing directory {path}: it was replaced while being checked "
                                    f"({exc.strerror})") from exc
    try:
        check_trusted(path, os.fstat(fd), "directory", directory=True)
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def check_private_dir(path: str) -> None:
    """Refuse a key directory that anybody but its owner can enter, or that is not ours."""
    st = os.stat(path)
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise errors().InsecureKeyPath(
            f"key directory {path} has mode {mode:04o}; it must be 0700 (run: chmod 700 {path})")
    if st.st_uid != os.geteuid():
        raise errors().InsecureKeyPath(f"key directory {path} belongs to uid {st.st_uid}, not to you "
                                       f"(uid {os.geteuid()}); use a key directory of your own")


def check_secret_file(path: str) -> None:
    """Refuse a secret key file that group or others can read."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise errors().InsecureKeyPath(
            f"secret key file {path} has mode {mode:04o}; it must be 0600 (run: chmod 600 {path})")


def ensure_key_dir(path: str) -> None:
    """Create ``path`` with mode 0700 if missing; refuse it if it is too open."""
    if not os.path.exists(path):
        private_directory(path)
        logger.info("Created key directory %s", path)
    elif not os.path.isdir(path):
        raise errors().ConfigurationError(f"key path {path} exists and is not a directory")
    check_private_dir(path)


def _create_pair(key_dir: str, name: str) -> None:
    """Make the ``name`` pair unless another process makes it first; either way one pair is left.

    The pair is written in a private temporary directory; hard-linking its secret file into
    place fails if one is already there, so exactly one racer publishes (then its public file).
    """
    scratch = tempfile.mkdtemp(prefix=f".{name}-", dir=key_dir)
    try:
        public, secret = zmq.auth.create_certificates(scratch, name)
        os.chmod(secret, 0o600)  # unreadable to others all along: the scratch directory is 0700
        try:
            os.link(secret, os.path.join(key_dir, os.path.basename(secret)))
        except FileExistsError:
            logger.debug("Another process created the CURVE %s key pair in %s first", name, key_dir)
            return
        os.replace(public, os.path.join(key_dir, os.path.basename(public)))
        logger.info("Created CURVE %s key pair in %s", name, key_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def load_pair(key_dir: str, name: str, create: bool = True) -> KeyPair:
    """Load the ``name`` key pair from ``key_dir``, creating it if allowed and missing."""
    if not zmq.has("curve"):
        raise errors().ConfigurationError("this pyzmq/libzmq build has no CURVE support")
    ensure_key_dir(key_dir)
    secret_path = os.path.join(key_dir, f"{name}.key_secret")
    if not os.path.exists(secret_path):
        if not create:
            raise errors().ConfigurationError(f"no {name} key in {key_dir} (expected {secret_path})")
        _create_pair(key_dir, name)
    check_secret_file(secret_path)
    try:
        public, secret = zmq.auth.load_certificate(secret_path)
    except (OSError, ValueError) as exc:
        raise errors().ConfigurationError(f"cannot read key file {secret_path}: {exc}") from exc
    if secret is None:
        raise errors().ConfigurationError(f"key file {secret_path} holds no secret key")
    return KeyPair(public=public, secret=secret)


def load_public(key_dir: str, name: str) -> bytes:
    """The public half of ``name`` in ``key_dir`` (no secret needed)."""
    path = os.path.join(key_dir, f"{name}.key")
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise errors().ConfigurationError(f"cannot read public key {path}: {exc}") from exc
    return public


def ephemeral_pair() -> KeyPair:
    """A fresh in-memory key pair (used inside an allocation for worker links)."""
    public, secret = zmq.curve_keypair()
    return KeyPair(public=public, secret=secret)


def make_curve_server(socket: zmq.Socket, secret: bytes, domain: str) -> None:
    """Make ``socket`` a CURVE server checked against ``domain`` (call before bind)."""
    socket.curve_secretkey = secret
    socket.curve_publickey = zmq.curve_public(secret)
    socket.curve_server = True
    socket.zap_domain = domain.encode()


def make_curve_client(socket: zmq.Socket, secret: bytes, server_public: bytes) -> None:
    """Make ``socket`` a CURVE client of the server with ``server_public`` (call before connect)."""
    socket.curve_secretkey = secret
    socket.curve_publickey = zmq.curve_public(secret)
    socket.curve_serverkey = server_public


def make_worker_link(socket: zmq.Socket, env: Mapping[str, str]) -> str:
    """Make ``socket`` a client of the block's backend socket from the variables the server
    gives its workers (:data:`~parsl_dragon.vocabulary.WORKER_LINK_VARS`, inherited by every
    task); returns the address to connect to: the server's Unix socket when this process runs
    on the server's host (``host/local_sockets.py``), else its TCP address, with CURVE."""
    local = env.get(ENV_WORKER_LOCAL_ADDRESS)
    if local and env.get(ENV_SERVER_HOST) == gethostname():
        return local
    make_curve_client(socket, env[ENV_WORKER_SECRET].encode(), env[ENV_WORKER_SERVER_KEY].encode())
    return env[ENV_WORKER_ADDRESS]
