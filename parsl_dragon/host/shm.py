"""A dead Dragon runtime's /dev/shm pools: their names, and removing them without touching anyone else's.

Used by a block's boot process after its runtime exits and by ``parsl-dragon teardown``; never
Dragon's user-wide ``dragon-cleanup``, which deletes every /dev/shm file of the user. Stdlib
only. What :func:`remove_pools` guarantees:

* **Only this runtime's pools**: the shm files its processes were seen mapping (``known``),
  plus the files named *exactly* as the pools Dragon's launcher creates itself
  (:func:`runtime_pool_files`; a prefix match would also take the pools of a launcher whose
  pid merely begins with the same digits).
* **Never a file another live process maps or holds open** (:func:`files_in_use`): a pool a
  live runtime or task uses stays, whoever made it.
* **Never one another live launcher could have made**: Dragon names pools after the last 3
  digits of the launcher's pid, so while a live ``dragon`` launcher shares them, the names
  are left alone.
* **Never one created before the runtime started** (``created_after``): an older file of the
  same name belongs to an earlier runtime, not to this one.

Dragon's names::

    /dev/shm/D + pool name;  pool name = D<uid last 3><launcher pid last 3><tail>
    tail = inf | def | log_ (logging pool, named after $USER's last 3 letters when set),
           a retry digit, then M (manifest) or D (data)          e.g. /dev/shm/DD0194def0M
"""
from __future__ import annotations

import logging
import os
import re
from typing import Iterable, List, Optional, Set

from parsl_dragon.host.processes import all_pids, command_line, files_of

logger = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"
# What follows the "D<uid3|user3><pid3>" stem in the shm files of the pools a Dragon launcher
# creates itself (dragon.infrastructure.facts.runtime_pool_name, dlogging's logging pool).
_RUNTIME_POOL_TAIL = re.compile(r"(inf|def|log_)[0-9][MD]")
_DRAGON_SHM_NAME = re.compile(r"D[D0-9]")  # any Dragon pool's shm file ("D" + a pool name "D...")


def pool_prefix(pid: int) -> str:
    """Shm files of a runtime's pools begin so: ``SHM_DIR/DD<uid last 3><launcher pid last 3>``.

    Only a prefix: ``DD042`` also begins ``DD0423...``; :func:`runtime_pool_files` matches whole names.
    """
    return f"{SHM_DIR}/DD{str(os.getuid())[-3:]}{str(pid)[-3:]}"


def runtime_pool_files(launcher_pid: int) -> List[str]:
    """Existing shm files named exactly as the pools Dragon's launcher ``launcher_pid`` creates
    (a pid with the same last 3 digits makes the same names: see :func:`remove_pools`)."""
    directory, stem = os.path.split(pool_prefix(launcher_pid))
    user = os.environ.get("USER")  # dlogging names the logging pool after $USER, else the uid
    stems = {stem} | ({"DD" + user[-3:] + str(launcher_pid)[-3:]} if user else set())
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(os.path.join(directory, n) for n in names
                  if any(n.startswith(s) and _RUNTIME_POOL_TAIL.fullmatch(n[len(s):]) for s in stems))


def shm_files_of(pid: int) -> Set[str]:
    """The /dev/shm files process ``pid`` maps or holds open."""
    return {path for path in files_of(pid) if path.startswith(SHM_DIR + "/")}


def pools_of(pid: int) -> Set[str]:
    """The shm files of Dragon pools process ``pid`` maps or holds open (not a task's other shm files)."""
    return {path for path in shm_files_of(pid) if _DRAGON_SHM_NAME.match(os.path.basename(path))}


def files_in_use(paths: Iterable[str], exclude: Iterable[int] = ()) -> Set[str]:
    """Those of ``paths`` that a live process, except ``exclude`` (and us), maps or holds open."""
    wanted, skip, used = set(paths), set(exclude) | {os.getpid()}, set()
    for pid in all_pids() if wanted else ():
        if pid not in skip:
            used |= files_of(pid) & wanted
    return used


def is_dragon_launcher(pid: int) -> bool:
    """``pid`` runs Dragon's ``dragon`` launcher (the creator of a runtime's pools)."""
    return any(os.path.basename(arg) == b"dragon" for arg in command_line(pid)[:2])


def remove_pools(launcher_pid: int, known: Iterable[str] = (), exclude: Iterable[int] = (),
                 created_after: Optional[float] = None) -> List[str]:
    """Remove the shm pools of the (dead) runtime started as ``launcher_pid``.

    Parameters
    ----------
    launcher_pid
        The runtime's ``dragon`` launcher: the files named as its own pools are removed.
    known
        Shm files the runtime's processes were seen using: removed too.
    exclude
        The block's own dying processes: what they still map does not count as in use.
    created_after
        The runtime's start (``time.time()``), when known: older files of those names are kept.

    Returns
    -------
    list of str
        The files removed. A file a live process outside ``exclude`` uses is kept, and so are
        the names derived from the pid while a live launcher shares its last 3 digits.
    """
    candidates = set(known) | set(_named_pools(launcher_pid, created_after))
    in_use = files_in_use(candidates, exclude)
    removed = []
    for path in sorted(candidates - in_use):
        try:
            os.unlink(path)
            removed.append(path)
        except OSError:
            pass
    if in_use:
        logger.warning("Kept shm files other live processes use: %s", sorted(in_use))
    if removed:
        logger.warning("Removed %d leftover shm pools: %s", len(removed), removed)
    return removed


def _named_pools(launcher_pid: int, created_after: Optional[float]) -> List[str]:
    """:func:`runtime_pool_files` of the launcher, unless a live launcher makes the same names."""
    for other in _dragon_launchers():
        if other != launcher_pid and str(other)[-3:] == str(launcher_pid)[-3:]:
            logger.warning("Not removing pools named after launcher %d: live launcher %d makes the same names",
                           launcher_pid, other)
            return []
    return [p for p in runtime_pool_files(launcher_pid) if created_after is None or _created(p) >= created_after]


def _created(path: str) -> float:
    try:
        return os.stat(path).st_ctime
    except OSError:
        return 0.0


def _dragon_launchers() -> List[int]:
    """Pids of the live ``dragon`` launchers on this host."""
    return [pid for pid in all_pids() if is_dragon_launcher(pid)]
