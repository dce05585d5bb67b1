#!/usr/bin/python3
"""Slurm Epilog: kill, by pid, every process that still carries this job's SLURM_JOB_ID.

Installed by scripts/slurm/up.sh as /etc/slurm/parsl-dragon-epilog. With
``ProctrackType=proctrack/linuxproc`` Slurm tracks a job's processes by parentage,
so processes re-parented to init (a Dragon runtime's infrastructure does that) survive
``scancel`` and walltime expiry. Every process a job starts inherits ``SLURM_JOB_ID``
(and ``SLURM_CLUSTER_NAME``) in its environment, so the environment identifies them.

Dragon's ``/dev/shm`` pools are removed too: the files the killed processes had mapped
or open, and Dragon-named files (``D<digits>``/``DD...``) of the job's user created since
the job started that no live process maps or holds open any more -- what a runtime leaves
when its processes were killed before this Epilog ran (e.g. on the other nodes of a
multi-node job after ``scancel``). Pools some live process uses are never touched.
It always exits 0: a failing Epilog would drain the node.
"""
import glob
import os
import re
import signal
import subprocess
import sys
import time

LOG = "/var/log/slurm/epilog.log"
GRACE_SECONDS = 2.0
SHM_DIR = "/dev/shm"
DRAGON_POOL_RE = re.compile(r"^D[D0-9]")
SCRIPT_CONTEXTS = {f"SLURM_SCRIPT_CONTEXT={c}".encode()
                   for c in ("prolog_slurmd", "epilog_slurmd", "prolog_slurmctld", "epilog_slurmctld")}


def _environ(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            return handle.read().split(b"\0")
    except OSError:
        return []


def _ancestors(pid):
    seen = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                stat = handle.read()
            pid = int(stat[stat.rfind(b")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return seen


def job_processes(job_id, cluster):
    """Pids whose environment has SLURM_JOB_ID=job_id (and the same cluster name, if they carry one).

    Prolog/Epilog scripts carry the job id too (with SLURM_SCRIPT_CONTEXT): never those, or
    one node's Epilog would kill another's where "nodes" share a pid namespace (test clusters).
    Tasks themselves may carry SLURM_SCRIPT_CONTEXT=prolog_task (left by a TaskProlog): those count."""
    needle = f"SLURM_JOB_ID={job_id}".encode()
    prefix = b"SLURM_CLUSTER_NAME="
    mine = _ancestors(os.getpid())
    found = []
    for path in glob.glob("/proc/[0-9]*"):
        pid = int(path.rsplit("/", 1)[1])
        if pid in mine:
            continue
        env = _environ(pid)
        if needle not in env or SCRIPT_CONTEXTS & set(env):
            continue
        names = [v[len(prefix):].decode(errors="replace") for v in env if v.startswith(prefix)]
        if cluster and names and names[0] != cluster:
            continue  # same job number on another test cluster
        found.append(pid)
    return found


def shm_files(pids):
    """``/dev/shm`` files the given processes have mapped or open."""
    files = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as handle:
                for line in handle:
                    parts = line.split(None, 5)
                    if len(parts) == 6 and parts[5].startswith("/dev/shm/"):
                        files.add(parts[5].strip().replace(" (deleted)", ""))
        except OSError:
            pass
        for fd in glob.glob(f"/proc/{pid}/fd/*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("/dev/shm/"):
                files.add(target.replace(" (deleted)", ""))
    return files


def in_use(files):
    """Which of ``files`` some live process still maps or holds open."""
    return shm_files(int(p.rsplit("/", 1)[1]) for p in glob.glob("/proc/[0-9]*")) & files


def job_start(job_id):
    """The job's start (epoch seconds) from slurmctld, or None."""
    try:
        out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True,
                             timeout=20).stdout
        stamp = re.search(r"\bStartTime=(\S+)", out).group(1)
        return time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S"))
    except (OSError, subprocess.SubprocessError, AttributeError, ValueError):
        return None


def orphaned_pools(uid, since):
    """Dragon-named /dev/shm files of ``uid`` created at or after ``since`` (minus slack)."""
    found = set()
    for name in os.listdir(SHM_DIR) if since is not None else ():
        path = os.path.join(SHM_DIR, name)
        try:
            info = os.stat(path)
        except OSError:
            continue
        if DRAGON_POOL_RE.match(name) and info.st_uid == uid and info.st_ctime >= since - 2:
            found.add(path)
    return found


def signal_all(pids, sig):
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def main():
    job_id = os.environ.get("SLURM_JOB_ID") or os.environ.get("SLURM_JOBID")
    if not job_id:
        return "no SLURM_JOB_ID in the epilog's environment"
    cluster = os.environ.get("SLURM_CLUSTER_NAME", "")
    pids = job_processes(job_id, cluster)
    shm, survivors = shm_files(pids), []
    if pids:
        signal_all(pids, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_SECONDS
        while time.monotonic() < deadline and job_processes(job_id, cluster):
            time.sleep(0.1)
        survivors = job_processes(job_id, cluster)
        signal_all(survivors, signal.SIGKILL)
        time.sleep(0.2)
    shm |= orphaned_pools(int(os.environ.get("SLURM_JOB_UID", os.getuid())), job_start(job_id))
    if not pids and not shm:
        return f"job {job_id}: nothing left"
    removed = []
    for path in sorted(shm - in_use(shm)):
        try:
            os.unlink(path)
            removed.append(path)
        except OSError:
            pass
    return (f"job {job_id}: SIGTERM to {len(pids)} leftover processes {pids}, SIGKILL to {survivors}, "
            f"removed {len(removed)} /dev/shm files {removed}")


if __name__ == "__main__":
    try:
        message = main()
    except Exception as exc:  # never drain the node
        message = f"epilog error: {exc!r}"
    try:
        with open(LOG, "a") as log:
            log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {os.uname().nodename} {message}\n")
    except OSError:
        pass
    sys.exit(0)
