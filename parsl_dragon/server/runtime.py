"""The boot process's watch over its Dragon runtime: start it, stop it when asked, clean up after it.

Runs in the block's boot process (:mod:`parsl_dragon.server.boot`), outside Dragon; steps 5-7 of
boot's docstring. One thread; signal handlers only note the signal::

    run()   stop asked (signal, driver gone)? -> do not start
     |
     +-> _run_once   Popen(dragon ...) in a process group of its own
     |     _wait     every 0.5 s: note the Dragon pools the token processes map, whether the
     |               connection file appeared, whether a stop was asked for; once asked:
     |               SIGTERM to our server (SIGINT to dragon before it is up), SIGKILL after the grace
     |     _clean_up SIGKILL what still carries the token, remove this runtime's shm pools
     |
     +-> failed before the server came up, and no stop asked? pause, then start once more
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from typing import Dict, List, Optional, Set

from parsl_dragon.host import local_sockets, startup
from parsl_dragon.host.processes import DriverWatch, carries_token, kill_leftovers, processes_with_token
from parsl_dragon.host.shm import pools_of, remove_pools
from parsl_dragon.vocabulary import RUNTIME_STOP_GRACE_SECONDS

logger = logging.getLogger(__name__)

STARTUP_STOP_GRACE_SECONDS = 2.0  # a launcher stopped before the server is up never ends by itself
START_ATTEMPTS = 2         # see boot's step 7
RETRY_PAUSE_SECONDS = 5.0  # lets the first attempt's processes on the other nodes go


class Boot:
    """Runs the runtime as a child, forwards stop signals (and the driver's end), cleans up
    afterwards, and starts it again (up to ``attempts`` times) when it fails before the server
    came up."""

    def __init__(self, command: List[str], env: Dict[str, str], log_path: str, token: str,
                 connection_file: Optional[str] = None, attempts: int = START_ATTEMPTS,
                 pause: float = RETRY_PAUSE_SECONDS, driver: Optional[DriverWatch] = None,
                 startup_dir: Optional[str] = None, refused_file: Optional[str] = None) -> None:
        self.command, self.env, self.log_path, self.token = command, env, log_path, token
        self.startup_dir = startup_dir  # where the block's start-up milestones go (host/startup.py)
        self.connection_file, self.attempts, self.pause = connection_file, attempts, pause
        self.refused_file = refused_file  # written by a server that refuses to start: no second attempt
        self.driver = driver
        self.child: Optional[subprocess.Popen] = None
        self.signalled = 0  # the first stop signal received, acted on by the main loop
        self.stop_requested = 0.0
        self.grace = RUNTIME_STOP_GRACE_SECONDS
        self.server_seen = False
        self.pools: Set[str] = set()

    def _on_signal(self, signum, _frame) -> None:
        """Only note the signal (no logging or I/O inside a handler): the main loop acts on it."""
        self.signalled = self.signalled or signum

    def _check_requests(self) -> None:
        """Start stopping the runtime once a stop signal came or the driver is gone."""
        if self.stop_requested:
            return
        if self.signalled:
            self._request_stop(f"Received {signal.Signals(self.signalled).name}")
            return
        why = self.driver.gone() if self.driver is not None else None
        if why:
            logger.warning("The block follows its driver, and %s", why)
            self._request_stop("Driver gone")

    def _request_stop(self, why: str) -> None:
        """Ask the runtime to stop; ``_wait`` kills it if it has not stopped after the grace period.

        With our server up, the server is asked (SIGTERM: it stops as on a Shutdown, and the
        runtime with it): Dragon's launcher, waiting in a queue read that never checks for
        signals, does not act on SIGINT. Before the server is up the launcher gets SIGINT and a
        short grace (see :meth:`_ask_runtime`). A server already gone means the runtime is
        ending by itself: it is left to finish within the grace period."""
        if self.stop_requested:
            return
        logger.info("%s: stopping the runtime", why)
        self.stop_requested = time.monotonic()
        if self.child is not None and self.child.poll() is None:
            self._ask_runtime()

    def _ask_runtime(self) -> None:
        assert self.child is not None
        server = self._server_pid()
        if server is not None:
            logger.info("Asking the server (pid %d) to stop", server)
            with contextlib.suppress(ProcessLookupError):
                os.kill(server, signal.SIGTERM)
        elif not self.server_seen:
            # Interrupted while starting, the launcher raises KeyboardInterrupt (or dies at once),
            # then waits for ever on its non-daemon logging thread: nothing to wait for.
            self.grace = STARTUP_STOP_GRACE_SECONDS
            self.child.send_signal(signal.SIGINT)
        else:
            logger.info("The server is gone: waiting for the runtime to end")

    def _server_pid(self) -> Optional[int]:
        """The pid in our connection file, if that process carries this block's token."""
        try:
            with open(self.connection_file or "") as handle:
                pid = json.load(handle).get("pid")
        except (OSError, ValueError, AttributeError):
            return None
        return pid if isinstance(pid, int) and pid > 0 and carries_token(pid, self.token) else None

    def run(self) -> int:
        """Start the runtime (again, see the class) and return its exit code once it is over."""
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        attempt, code = 0, 0
        while True:
            self._check_requests()
            if self.stop_requested:
                logger.info("Stop asked for before attempt %d: not starting the runtime", attempt + 1)
                return code
            attempt += 1
            code = self._run_once()
            self._check_requests()
            if code == 0 or self.stop_requested or self.server_seen or attempt >= self.attempts:
                return code
            if self.refused_file is not None and os.path.exists(self.refused_file):
                logger.error("The server refused to start (%s): not starting the runtime again", self.refused_file)
                return code
            logger.warning("Runtime failed (code %s) before the server came up (attempt %d of %d): "
                           "starting it again in %.0fs", code, attempt, self.attempts, self.pause)
            self._pause()

    def _pause(self) -> None:
        deadline = time.monotonic() + self.pause
        while time.monotonic() < deadline and not self.stop_requested:
            time.sleep(0.1)
            self._check_requests()

    def _run_once(self) -> int:
        started = time.time()
        with open(self.log_path, "ab") as log:
            self.child = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, process_group=0)
        if self.startup_dir is not None:
            startup.note(self.startup_dir, startup.RUNTIME_LAUNCHED)
        logger.info("Started dragon (pid %d): %s", self.child.pid, " ".join(self.command))
        code = self._wait()
        self._clean_up(started)
        logger.info("Runtime exited with code %s", code)
        return code

    def _clean_up(self, started: float) -> None:
        """Kill what still carries the token, then remove the pools this runtime made."""
        assert self.child is not None
        killed = kill_leftovers(self.token)
        remove_pools(self.child.pid, known=self.pools, exclude=killed + [self.child.pid],
                     created_after=started - 1.0)
        if self.startup_dir is not None:  # the block directory: its server's Unix sockets, if it could not
            local_sockets.remove(self.startup_dir)

    def _wait(self) -> int:
        assert self.child is not None
        while True:
            self._learn_pools()
            try:
                return self.child.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
            finally:
                self._note_server()
            self._check_requests()
            if self.stop_requested and time.monotonic() - self.stop_requested > self.grace:
                logger.warning("Runtime did not stop within %.0fs: killing it", self.grace)
                self.child.kill()
                kill_leftovers(self.token)

    def _learn_pools(self) -> None:
        """Note the Dragon pools the block's processes use: exactly the shm files to remove later
        (other /dev/shm files a task may use are not the runtime's)."""
        for pid in processes_with_token(self.token):
            new = pools_of(pid) - self.pools
            if new:
                logger.info("Runtime uses shm %s", sorted(new))
                self.pools |= new

    def _note_server(self) -> None:
        if not self.server_seen and self.connection_file and os.path.exists(self.connection_file):
            self.server_seen = True
