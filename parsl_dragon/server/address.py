"""The address a server publishes for clients and workers, resolved on the node where it runs.

Dragon chooses where the head process (our server) runs; in a multi-node allocation that
need not be the node the batch script (and boot) runs on. So the server resolves
``--host-address`` itself: ``auto``, an interface name, or an address/name passed through.
Standard library only (Linux ioctls for interfaces).
"""
from __future__ import annotations

import fcntl
import ipaddress
import logging
import socket
import struct
from typing import List, Optional

from parsl_dragon.vocabulary import LOOPBACK

logger = logging.getLogger(__name__)

_SIOCGIFADDR, _SIOCGIFFLAGS, _IFF_UP = 0x8915, 0x8913, 0x1


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return True


def _resolve(name: str) -> Optional[str]:
    try:
        return socket.gethostbyname(name)
    except OSError:
        return None


def interface_address(name: str) -> Optional[str]:
    """IPv4 address of network interface ``name`` if it is up, else None (Linux ioctls)."""
    packed = struct.pack("256s", name.encode()[:15])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            flags = struct.unpack("H", fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, packed)[16:18])[0]
            if not flags & _IFF_UP:
                return None
            return socket.inet_ntoa(fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, packed)[20:24])
        except OSError:
            return None


def host_address(value: str) -> str:
    """The address the server publishes, resolved on the node where it runs.

    ``auto``: this host's name if it resolves to a non-loopback address (Debian maps
    the hostname to 127.0.1.1, unreachable from a login node), else the IPv4 address
    of the first interface that is up and not loopback, else 127.0.0.1. The name of a
    local interface (``hsn0``, ``bond0``) gives that interface's address. Anything
    else is an address or name the user chose, passed through."""
    if value != "auto":
        address = interface_address(value) if value in _interface_names() else None
        return address or value
    for name in (socket.getfqdn(), socket.gethostname()):
        address = _resolve(name)
        if address is not None and not _is_loopback(address):
            return address
    for name in _interface_names():
        address = interface_address(name)
        if address is not None and not _is_loopback(address):
            return address
    logger.warning("No non-loopback address found on %s: publishing 127.0.0.1 (only clients on this "
                   "host can connect)", socket.gethostname())
    return LOOPBACK


def _interface_names() -> List[str]:
    try:
        return [name for _, name in sorted(socket.if_nameindex())]
    except OSError:
        return []
