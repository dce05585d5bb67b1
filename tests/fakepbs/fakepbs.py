#!/usr/bin/env python3
"""FAKE PBS for tests; no PBS server exists in Debian or PyPI.

A tiny single-host batch system with the PBS Pro command-line surface that Parsl's
``PBSProProvider`` uses, so PBS blocks can be tested end to end on this machine.
It is NOT PBS: no server, no MoM, no scheduler, no queues' limits. Stdlib only::

    qsub [-q QUEUE] [-A ACCOUNT] [-N NAME] [-l RES=VAL[,...]] [-o PATH] [-e PATH] [-j oe] [-V] [-v VARS] SCRIPT
    qstat [-x] [-f [-F json]] [JOBID ...]     (PBS Pro's `qstat -x -f -F json` shape)
    qdel JOBID ...

(``tests/fakepbs/bin/`` holds the three commands; prepend it to PATH.)

State lives in ``$FAKEPBS_HOME`` (default ``/tmp/fakepbs-<uid>``): ``state.json`` (guarded
by ``state.lock``), ``aux/<jobid>`` node files, ``runner-<jobid>.log``. Job ids are
``<n>.fakepbs``. Jobs really run, at once (no queueing), on this host:

* ``qsub`` records the job (state ``Q``) and starts a detached runner (own session) that
  runs ``bash SCRIPT`` in its own process group with PBS's job environment: ``PBS_JOBID``,
  ``PBS_JOBNAME``, ``PBS_NODEFILE`` (this host, once per ``select`` chunk),
  ``PBS_O_WORKDIR`` (qsub's cwd), ``PBS_O_HOST``, ``PBS_O_PATH``, ``PBS_QUEUE``,
  ``PBS_ENVIRONMENT=PBS_BATCH``. Like PBS, the submitter's environment is NOT passed
  unless ``-V`` (all) or ``-v A,B=x``; the job starts in ``$HOME`` with a system PATH.
  ``#PBS`` directives in the script are read; command-line options win.
* the walltime (``-l walltime=[[HH:]MM:]SS``) is enforced: SIGTERM, then SIGKILL after
  ``KILL_WAIT`` seconds, to the job's process group and to every process whose
  environment carries its ``PBS_JOBID`` (Exit_status -29, as PBS Pro's walltime kill).
* ``qdel`` does the same at once (Exit_status 271 = 256 + SIGTERM).
* whenever a job ends, anything still carrying its ``PBS_JOBID`` is killed (as a MoM
  kills a job's leftover processes); the job stays visible to ``qstat -x`` as ``F``.
"""
from __future__ import annotations

import fcntl
import glob
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Tuple

FAKE_BANNER = "FAKE PBS for tests; no PBS server exists in Debian or PyPI"
SERVER = "fakepbs"
VERSION = f"0.0-fake ({FAKE_BANNER})"
KILL_WAIT = float(os.environ.get("FAKEPBS_KILL_WAIT", "5"))
POLL = 0.2
WALLTIME_EXIT, QDEL_EXIT = -29, 271
UNKNOWN_JOB_EXIT = 153
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
TIME_FORMAT = "%a %b %d %H:%M:%S %Y"


# ---------------------------------------------------------------- state

def home() -> str:
    path = os.environ.get("FAKEPBS_HOME") or f"/tmp/fakepbs-{os.getuid()}"
    os.makedirs(os.path.join(path, "aux"), exist_ok=True)
    return path


@contextmanager
def state() -> Iterator[dict]:
    """The state, locked for this block; written back when the block ends without error."""
    with open(os.path.join(home(), "state.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = os.path.join(home(), "state.json")
        try:
            with open(path) as handle:
                data = json.load(handle)
        except FileNotFoundError:
            data = {"next_id": 1, "jobs": {}}
        yield data
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "w") as handle:
            json.dump(data, handle, indent=1)
        os.replace(tmp, path)


def find(data: dict, job_id: str) -> Optional[str]:
    """The full id for ``job_id`` (``42`` or ``42.fakepbs``), if known."""
    for full in (job_id, f"{job_id}.{SERVER}"):
        if full in data["jobs"]:
            return full
    return None


# ---------------------------------------------------------------- qsub

def parse_walltime(text: str) -> int:
    seconds = 0
    for part in text.split(":"):
        seconds = seconds * 60 + int(part)
    return seconds


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def parse_options(argv: List[str]) -> Tuple[Dict[str, object], List[str]]:
    """qsub's options (a subset) -> (options, rest). Unknown options are an error, as in qsub."""
    options: Dict[str, object] = {"resources": {}, "vars": []}
    args = list(argv)
    while args and args[0].startswith("-"):
        flag = args.pop(0)
        if flag == "-V":
            options["all_env"] = True
            continue
        if flag not in ("-q", "-A", "-N", "-l", "-o", "-e", "-j", "-v", "-S", "-m", "-W"):
            raise SystemExit(f"qsub: invalid option -- '{flag.lstrip('-')}' ({FAKE_BANNER})")
        if not args:
            raise SystemExit(f"qsub: option {flag} needs a value")
        value = args.pop(0)
        if flag == "-l":
            for item in value.split(","):
                key, _, val = item.partition("=")
                options["resources"][key] = val  # type: ignore[index]
        elif flag == "-v":
            options["vars"] += value.split(",")  # type: ignore[operator]
        else:
            options[flag] = value
    return options, args


def script_directives(text: str) -> List[str]:
    """The ``#PBS`` option words of a job script (until the first command line)."""
    words: List[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#PBS"):
            words += shlex.split(stripped[4:])
        elif stripped and not stripped.startswith("#"):
            break
    return words


def merged_options(argv: List[str]) -> Tuple[Dict[str, object], str]:
    cli, rest = parse_options(argv)
    if len(rest) != 1:
        raise SystemExit("usage: qsub [options] SCRIPT (the fake reads the script from a file only)")
    script = os.path.abspath(rest[0])
    with open(script) as handle:
        from_script, _ = parse_options(script_directives(handle.read()))
    merged = dict(from_script)
    merged.update({k: v for k, v in cli.items() if k not in ("resources", "vars")})
    merged["resources"] = {**from_script["resources"], **cli["resources"]}  # type: ignore[dict-item]
    merged["vars"] = list(from_script["vars"]) + list(cli["vars"])  # type: ignore[call-overload]
    return merged, script


def chunks(select: str) -> int:
    head = select.split(":", 1)[0]
    return int(head) if head.isdigit() else 1


def job_environment(job: dict) -> Dict[str, str]:
    submit_env = job["submit_env"]
    env = dict(submit_env) if job["all_env"] else {
        k: submit_env[k] for k in ("HOME", "USER", "LOGNAME", "SHELL", "LANG", "TERM", "TZ") if k in submit_env}
    env.setdefault("PATH", SYSTEM_PATH)
    if not job["all_env"]:
        env["PATH"] = SYSTEM_PATH
    for item in job["vars"]:
        key, eq, val = item.partition("=")
        if eq:
            env[key] = val
        elif key in submit_env:
            env[key] = submit_env[key]
    env.update({
        "PBS_JOBID": job["id"], "PBS_JOBNAME": job["name"], "PBS_NODEFILE": job["nodefile"],
        "PBS_O_WORKDIR": job["workdir"], "PBS_O_HOST": socket.gethostname(),
        "PBS_O_PATH": submit_env.get("PATH", ""), "PBS_O_HOME": submit_env.get("HOME", ""),
        "PBS_QUEUE": job["queue"], "PBS_ENVIRONMENT": "PBS_BATCH", "PBS_O_SHELL": "/bin/bash",
        "FAKEPBS": FAKE_BANNER,
    })
    if job["account"]:
        env["PBS_ACCOUNT"] = job["account"]
    return env


def qsub(argv: List[str]) -> int:
    options, script = merged_options(argv)
    resources: Dict[str, str] = options["resources"]  # type: ignore[assignment]
    workdir = os.getcwd()
    with state() as data:
        number = data["next_id"]
        data["next_id"] += 1
        job_id = f"{number}.{SERVER}"
        name = str(options.get("-N") or os.path.basename(script))[:236]
        join = options.get("-j") == "oe"
        out = str(options.get("-o") or os.path.join(workdir, f"{name}.o{number}")).split(":", 1)[-1]
        err = out if join else str(options.get("-e") or os.path.join(workdir, f"{name}.e{number}")).split(":", 1)[-1]
        select = resources.get("select", "1")
        data["jobs"][job_id] = {
            "id": job_id, "name": name, "script": script, "queue": str(options.get("-q") or "workq"),
            "account": str(options.get("-A") or ""), "resources": resources, "select": select,
            "nodes": chunks(select), "walltime": parse_walltime(resources.get("walltime", "01:00:00")),
            "stdout": out, "stderr": err, "workdir": workdir, "all_env": bool(options.get("all_env")),
            "vars": options["vars"], "submit_env": dict(os.environ), "state": "Q", "ctime": time.time(),
            "stime": None, "mtime": time.time(), "pid": None, "exit_status": None, "delete": None,
            "nodefile": os.path.join(home(), "aux", job_id),
        }
    runner_log = open(os.path.join(home(), f"runner-{job_id}.log"), "ab")
    subprocess.Popen([sys.executable, os.path.abspath(__file__), "_run", job_id], stdin=subprocess.DEVNULL,
                     stdout=runner_log, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                     env={k: v for k, v in os.environ.items() if k != "PBS_JOBID"})
    print(job_id)
    return 0


# ---------------------------------------------------------------- the runner (one per job)

def carriers(job_id: str) -> List[int]:
    """Pids whose environment has PBS_JOBID=job_id (not this process).

    The same /proc scan as parsl_dragon.host.processes.processes_with_token, written out on
    purpose: this fake stands in for an external batch system, stays stdlib-only and runs
    under any python3, where importing parsl_dragon (Parsl, ZeroMQ) may not be possible."""
    needle = f"PBS_JOBID={job_id}".encode()
    found = []
    for path in glob.glob("/proc/[0-9]*/environ"):
        pid = int(path.split("/")[2])
        if pid == os.getpid():
            continue
        try:
            with open(path, "rb") as handle:
                if needle in handle.read().split(b"\0"):
                    found.append(pid)
        except OSError:
            continue
    return found


def kill_job(job_id: str, pgid: Optional[int], sig: int) -> None:
    if pgid:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    for pid in carriers(job_id):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def terminate(job_id: str, child: subprocess.Popen) -> None:
    """SIGTERM, KILL_WAIT seconds, SIGKILL: the job's process group and its PBS_JOBID carriers."""
    kill_job(job_id, child.pid, signal.SIGTERM)
    deadline = time.monotonic() + KILL_WAIT
    while time.monotonic() < deadline and (child.poll() is None or carriers(job_id)):
        time.sleep(POLL)
    kill_job(job_id, child.pid, signal.SIGKILL)


def update(job_id: str, **fields) -> dict:
    with state() as data:
        job = data["jobs"][job_id]
        job.update(fields, mtime=time.time())
        return dict(job)


def run(job_id: str) -> int:
    with state() as data:
        job = dict(data["jobs"][job_id])
    if job["state"] != "Q":  # deleted before it started
        return 0
    with open(job["nodefile"], "w") as handle:
        handle.write(f"{socket.gethostname()}\n" * job["nodes"])
    out = open(job["stdout"], "ab")
    err = out if job["stderr"] == job["stdout"] else open(job["stderr"], "ab")
    env = job_environment(job)
    child = subprocess.Popen(["/bin/bash", job["script"]], cwd=env.get("HOME") or "/", env=env,
                             stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)
    job = update(job_id, state="R", stime=time.time(), pid=child.pid)
    deadline = time.monotonic() + job["walltime"]
    exit_status = None
    while child.poll() is None:
        time.sleep(POLL)
        with state() as data:
            deleted = data["jobs"][job_id]["delete"]
        if deleted:
            terminate(job_id, child)
            exit_status = QDEL_EXIT
        elif time.monotonic() > deadline:
            err.write(f"=>> PBS: job killed: walltime {job['walltime']} exceeded limit ({FAKE_BANNER})\n".encode())
            err.flush()
            terminate(job_id, child)
            exit_status = WALLTIME_EXIT
    if exit_status is None:
        exit_status = child.returncode if child.returncode >= 0 else 256 - child.returncode
    update(job_id, state="E")
    kill_job(job_id, child.pid, signal.SIGKILL)  # leftovers of a job that ended by itself, too
    try:
        os.unlink(job["nodefile"])
    except OSError:
        pass
    update(job_id, state="F", exit_status=exit_status, pid=None)
    return 0


# ---------------------------------------------------------------- qdel

def qdel(argv: List[str]) -> int:
    ids = [a for a in argv if not a.startswith("-")]
    if not ids:
        print("usage: qdel JOBID ...", file=sys.stderr)
        return 2
    status = 0
    with state() as data:
        for given in ids:
            job_id = find(data, given)
            if job_id is None:
                print(f"qdel: Unknown Job Id {given}", file=sys.stderr)
                status = UNKNOWN_JOB_EXIT
                continue
            job = data["jobs"][job_id]
            if job["state"] in ("F", "E"):
                print(f"qdel: Job has finished {job_id}", file=sys.stderr)
                status = status or 35
            elif job["state"] == "Q":
                job.update(state="F", exit_status=QDEL_EXIT, delete=time.time(), mtime=time.time())
            else:
                job.update(delete=time.time(), mtime=time.time())
                if job["pid"]:
                    try:
                        os.killpg(job["pid"], signal.SIGTERM)  # the runner escalates and records the end
                    except (ProcessLookupError, PermissionError):
                        pass
    return status


# ---------------------------------------------------------------- qstat

def job_record(job: dict) -> dict:
    """One job in PBS Pro's ``qstat -f -F json`` shape (the attributes Parsl and people read)."""
    host = socket.gethostname()
    resources = {"nodect": job["nodes"], "select": job["select"], "walltime": format_seconds(job["walltime"]),
                 "place": "scatter"}
    resources.update({k: v for k, v in job["resources"].items() if k not in resources})
    record = {
        "Job_Name": job["name"], "Job_Owner": f"{job['submit_env'].get('USER', 'root')}@{host}",
        "job_state": job["state"], "queue": job["queue"], "server": SERVER,
        "ctime": time.strftime(TIME_FORMAT, time.localtime(job["ctime"])),
        "mtime": time.strftime(TIME_FORMAT, time.localtime(job["mtime"])),
        "Output_Path": f"{host}:{job['stdout']}", "Error_Path": f"{host}:{job['stderr']}",
        "Resource_List": resources, "Submit_arguments": job["script"],
        "Variable_List": {"PBS_O_WORKDIR": job["workdir"], "PBS_O_HOST": host, "PBS_O_QUEUE": job["queue"]},
        "comment": FAKE_BANNER,
    }
    if job["account"]:
        record["Account_Name"] = job["account"]
    if job["stime"]:
        record["stime"] = time.strftime(TIME_FORMAT, time.localtime(job["stime"]))
        end = time.time() if job["state"] in ("R", "E") else job["mtime"]
        record["resources_used"] = {"walltime": format_seconds(end - job["stime"])}
        record["exec_host"] = "+".join(f"{host}/{i}" for i in range(job["nodes"]))
        record["exec_vnode"] = "+".join(f"({host}:ncpus=1)" for _ in range(job["nodes"]))
    if job["exit_status"] is not None:
        record["Exit_status"] = job["exit_status"]
    return record


def qstat(argv: List[str]) -> int:
    history = "-x" in argv
    full = "-f" in argv
    as_json = "-F" in argv and argv[argv.index("-F") + 1:argv.index("-F") + 2] == ["json"]
    ids = [a for i, a in enumerate(argv) if not a.startswith("-") and (i == 0 or argv[i - 1] != "-F")]
    with state() as data:
        jobs = dict(data["jobs"])
        wanted, status = [], 0
        for given in ids:
            job_id = find(data, given)
            if job_id is None or (not history and jobs[job_id]["state"] == "F"):
                print(f"qstat: Unknown Job Id {given}" if job_id is None else f"qstat: {job_id} Job has finished, "
                      "use -x or -H to obtain historical job information", file=sys.stderr)
                status = UNKNOWN_JOB_EXIT
            else:
                wanted.append(job_id)
        if not ids:
            wanted = [j for j in jobs if history or jobs[j]["state"] != "F"]
    records = {job_id: job_record(jobs[job_id]) for job_id in wanted}
    if full and as_json:
        print(json.dumps({"timestamp": int(time.time()), "pbs_version": VERSION, "pbs_server": SERVER,
                          "Jobs": records}, indent=4))
    elif full:
        for job_id, record in records.items():
            print(f"Job Id: {job_id}")
            for key, value in record.items():
                if isinstance(value, dict):
                    for sub, val in value.items():
                        print(f"    {key}.{sub} = {val}")
                else:
                    print(f"    {key} = {value}")
            print()
    elif records:
        print(f"{'Job id':<17} {'Name':<16} {'User':<16} {'Time Use':>8} S Queue")
        print(f"{'-' * 17} {'-' * 16} {'-' * 16} {'-' * 8} - {'-' * 5}")
        for job_id, record in records.items():
            used = record.get("resources_used", {}).get("walltime", "0")
            print(f"{job_id:<17} {record['Job_Name'][:16]:<16} {record['Job_Owner'].split('@')[0][:16]:<16} "
                  f"{used:>8} {record['job_state']} {record['queue']}")
    return status


COMMANDS = {"qsub": qsub, "qstat": qstat, "qdel": qdel}


def main(argv: List[str]) -> int:
    if len(argv) >= 2 and argv[0] == "_run":
        return run(argv[1])
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: fakepbs.py {{qsub,qstat,qdel}} ARGS  -- {FAKE_BANNER}", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
