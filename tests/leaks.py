"""Find what a Dragon/parsl-dragon run may leave behind, and what is new since a snapshot.

Stdlib only, so the scripts can run it before anything else is importable::

    python tests/leaks.py snapshot FILE           # record what exists now
    python tests/leaks.py check FILE [--wait S]   # list what is new since FILE; exit 1 if any

Three kinds of leftovers are tracked:

* processes: a command line mentioning ``parsl_dragon`` (our server, boot, workers) or
  a Dragon launcher/runtime process (``dragon``, ``dragon-backend``, ...,
  ``python -c 'from dragon...'`` children, ``python -m dragon...``);
* ``/dev/shm`` files named like Dragon's pools. Dragon names a runtime's pools
  ``D<uid last 3><pid last 3>...`` and the shm file gets one more ``D`` in front
  (for uid 0: ``DD0709def0M``), dictionary pools start with ``DD`` too. Hence
  ``^D[D0-9]``, which includes the plain ``^D[0-9]{6}`` form;
* ``/tmp/dragon-*`` (and Dragon's per-user attach dir ``/tmp/dragon_<uid>``), and the
  private directories of our same-host sockets, ``/tmp/parsl-dragon-<uid>/*``.

Processes are identified by (pid, start time) so a recycled pid is not mistaken
for an old process. The current process and its ancestors are never reported.
"""

import argparse
import glob
import json
import os
import re
import sys
import time
from typing import Dict, Iterable, List, Optional, Set

SHM_DIR = "/dev/shm"
SHM_POOL_RE = re.compile(r"^D[D0-9]")
TMP_GLOBS = ("/tmp/dragon-*", "/tmp/dragon_*", f"/tmp/parsl-dragon-{os.getuid()}/*")  # the last: same-host sockets

# Console scripts of dragonhpc that run (parts of) the runtime.
DRAGON_PROGRAMS = {
    "dragon", "dragon-backend", "dragon-localservices", "dragon-globalservices",
    "dragon-tcp", "dragon-hsta", "dragon-hsta-if", "drbe", "drun",
}
_DRAGON_CODE_RE = re.compile(r"\b(from|import)\s+dragon\b")


def _read_argv(pid: int) -> Optional[List[str]]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    if not raw:  # kernel thread or zombie
        return None
    return [a.decode(errors="replace") for a in raw.rstrip(b"\0").split(b"\0")]


def _start_time(pid: int) -> Optional[str]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read().decode(errors="replace")
    except OSError:
        return None
    # Field 22 (starttime); the command name (field 2) may contain spaces and ')'.
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


def _ancestors(pid: int) -> Set[int]:
    seen = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                stat = handle.read().decode(errors="replace")
            pid = int(stat[stat.rfind(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return seen


def is_dragon_argv(argv: List[str]) -> bool:
    """Whether a command line looks like parsl-dragon or the Dragon runtime."""
    if any("parsl_dragon" in arg for arg in argv):
        return True
    # `dragon ARGS`, or `python /venv/bin/dragon ARGS` (console scripts run via their interpreter)
    if any(os.path.basename(arg) in DRAGON_PROGRAMS for arg in argv[:2]):
        return True
    for flag, value in zip(argv, argv[1:]):
        if flag == "-m" and (value == "dragon" or value.startswith("dragon.")):
            return True
        if flag == "-c" and _DRAGON_CODE_RE.search(value):
            return True
    return False


def dragon_processes() -> Dict[str, str]:
    """``{"pid:starttime": "pid cmdline"}`` of Dragon-looking processes, not ours or our ancestors'."""
    exclude = _ancestors(os.getpid())
    found = {}
    for path in glob.glob("/proc/[0-9]*"):
        pid = int(path.rsplit("/", 1)[1])
        if pid in exclude:
            continue
        argv = _read_argv(pid)
        if argv is None or not is_dragon_argv(argv):
            continue
        started = _start_time(pid)
        if started is None:
            continue
        found[f"{pid}:{started}"] = f"pid {pid}: {' '.join(argv)}"
    return found


def shm_pools() -> List[str]:
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return []
    return sorted(os.path.join(SHM_DIR, n) for n in names if SHM_POOL_RE.match(n))


def tmp_dirs() -> List[str]:
    return sorted({p for pattern in TMP_GLOBS for p in glob.glob(pattern)})


def snapshot() -> dict:
    return {"processes": dragon_processes(), "shm": shm_pools(), "tmp": tmp_dirs()}


def new_since(before: dict) -> Dict[str, List[str]]:
    """What exists now that was not in ``before`` (a :func:`snapshot`), by kind; empty kinds omitted."""
    now = snapshot()
    leaked = {
        "processes": [desc for key, desc in sorted(now["processes"].items()) if key not in before["processes"]],
        "shm": [p for p in now["shm"] if p not in set(before["shm"])],
        "tmp": [p for p in now["tmp"] if p not in set(before["tmp"])],
    }
    return {kind: items for kind, items in leaked.items() if items}


def wait_for_no_leaks(before: dict, timeout: float = 30.0, interval: float = 0.5) -> Dict[str, List[str]]:
    """Poll until nothing new remains or ``timeout`` seconds passed; return what still remains."""
    deadline = time.monotonic() + timeout
    while True:
        leaked = new_since(before)
        if not leaked or time.monotonic() >= deadline:
            return leaked
        time.sleep(interval)


_TITLES = {"processes": "processes still running", "shm": "Dragon shm pools in /dev/shm",
           "tmp": "Dragon dirs in /tmp"}


def describe(leaked: Dict[str, List[str]]) -> str:
    lines = []
    for kind, items in leaked.items():
        lines.append(f"{len(items)} leaked {_TITLES.get(kind, kind)}:")
        lines.extend(f"  {item}" for item in items)
    return "\n".join(lines)


def _main(argv: Iterable[str]) -> int:
    parser = argparse.ArgumentParser(prog="tests/leaks.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    snap = sub.add_parser("snapshot", help="write what exists now to FILE")
    snap.add_argument("file")
    check = sub.add_parser("check", help="list what is new since the snapshot in FILE; exit 1 if any")
    check.add_argument("file")
    check.add_argument("--wait", type=float, default=30.0,
                       help="seconds to keep polling for leftovers to go away (default 30)")
    args = parser.parse_args(list(argv))

    if args.command == "snapshot":
        with open(args.file, "w") as handle:
            json.dump(snapshot(), handle)
        return 0

    with open(args.file) as handle:
        before = json.load(handle)
    leaked = wait_for_no_leaks(before, timeout=args.wait)
    if leaked:
        print("LEAK CHECK FAILED: left behind by the test run:\n" + describe(leaked), flush=True)
        return 1
    print("Leak check: no Dragon processes, /dev/shm pools or /tmp/dragon-* left behind.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
