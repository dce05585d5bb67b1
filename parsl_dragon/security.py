"""CURVE keys on disk: create, load and check permissions.

Layout of a key directory (``~/.parsl_dragon/keys`` unless configured)::

    <key_path>/            0700
      client.key           public key of this user's executors (z85, 0644 is fine)
      client.key_secret    secret key (0600)
      server.key           public key of this user's servers
      server.key_secret    secret key (0600)

The files are pyzmq's certificate format (``zmq.auth.create_certificates``),
so standard tools can read them. A directory or secret file that is group- or
world-accessible is refused with :class:`InsecureKeyPath`; secrets are never
logged.
"""
from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass

import zmq
import zmq.auth

from parsl_dragon.errors import ConfigurationError, InsecureKeyPath

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


def check_private_dir(path: str) -> None:
    """Refuse a key directory that anybody but its owner can enter."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise InsecureKeyPath(
            f"key directory {path} has mode {mode:04o}; it must be 0700 (run: chmod 700 {path})")


def check_secret_file(path: str) -> None:
    """Refuse a secret key file that group or others can read."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise InsecureKeyPath(
            f"secret key file {path} has mode {mode:04o}; it must be 0600 (run: chmod 600 {path})")


def ensure_key_dir(path: str) -> None:
    """Create ``path`` with mode 0700 if missing; refuse it if it is too open."""
    if not os.path.exists(path):
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)  # umask may have narrowed mkdir's mode; make it exact
        logger.info("Created key directory %s", path)
    elif not os.path.isdir(path):
        raise ConfigurationError(f"key path {path} exists and is not a directory")
    check_private_dir(path)


def _create_pair(key_dir: str, name: str) -> None:
    old_umask = os.umask(0o077)
    try:
        zmq.auth.create_certificates(key_dir, name)
    finally:
        os.umask(old_umask)
    os.chmod(os.path.join(key_dir, f"{name}.key_secret"), 0o600)
    logger.info("Created CURVE %s key pair in %s", name, key_dir)


def load_pair(key_dir: str, name: str, create: bool = True) -> KeyPair:
    """Load the ``name`` key pair from ``key_dir``, creating it if allowed and missing."""
    if not zmq.has("curve"):
        raise ConfigurationError("this pyzmq/libzmq build has no CURVE support")
    ensure_key_dir(key_dir)
    secret_path = os.path.join(key_dir, f"{name}.key_secret")
    if not os.path.exists(secret_path):
        if not create:
            raise ConfigurationError(f"no {name} key in {key_dir} (expected {secret_path})")
        _create_pair(key_dir, name)
    check_secret_file(secret_path)
    try:
        public, secret = zmq.auth.load_certificate(secret_path)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read key file {secret_path}: {exc}") from exc
    if secret is None:
        raise ConfigurationError(f"key file {secret_path} holds no secret key")
    return KeyPair(public=public, secret=secret)


def load_public(key_dir: str, name: str) -> bytes:
    """The public half of ``name`` in ``key_dir`` (no secret needed)."""
    path = os.path.join(key_dir, f"{name}.key")
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read public key {path}: {exc}") from exc
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
