"""How a DragonExecutor scales its blocks and takes their failures (a part of the executor).

:class:`BlockScaling` is a base class of ``DragonExecutor``: Parsl's scaling hooks
(``scale_out_facade``, ``scale_in``, ``handle_errors``) and the executor's answer to a block
that produced no server. It works on the executor's state (``_blocks``, ``_table``,
``_status``); it exists so that each file holds one role.
"""
from __future__ import annotations

import logging
from typing import Dict, List

from parsl.jobs.states import TERMINAL_STATES, JobStatus

from parsl_dragon.driver.blocks import BlockLaunch
from parsl_dragon.errors import DragonExecutorError
from parsl_dragon.wire import protocol as p

logger = logging.getLogger(__name__)

STOP_WAIT_SECONDS = 60.0  # a multi-node runtime can take a while to stop under load


class BlockScaling:
    """Scaling and block failures of a ``DragonExecutor`` (its attributes, documented there)."""

    def _on_block_failed(self, launch: BlockLaunch, exc: DragonExecutorError) -> None:
        """A block produced no usable server: mark it FAILED or MISSING and cancel it; with
        nothing else left, fail all."""
        logger.error("%s", exc)
        self._simulated_status[launch.block_id] = self._blocks.failed_status(launch, exc)
        self._blocks.cancel(launch)  # no half-started server stays behind
        with self._lock:
            starting = [b for b in self._launches if b not in self._simulated_status and not self._table.has_server(b)]
            hopeless = not self._router.servers and not starting
        if hopeless:
            exc.executor = self
            self.set_bad_state_and_fail_all(exc)

    def scale_out_facade(self, n: int) -> List[str]:
        if self._early_blocks and self.provider is not None and n == self.provider.init_blocks:
            self._early_blocks = None  # the strategy's first pass asks for the init_blocks start() launched
            return []
        if self._attached or self._stopping:
            return []  # a shared server belongs to whoever started it
        return super().scale_out_facade(n)

    def scale_in(self, blocks: int) -> List[str]:
        """Stop ``blocks`` blocks, idle ones first: servers are asked to stop, then jobs cancelled.
        A block holding kept results that the driver still references is not stopped (they would
        be lost); it becomes a candidate once they are released."""
        active = [b for b, s in self._status.items() if s.state not in TERMINAL_STATES]
        holding = [b for b in active if self._holds_kept(b)]
        if holding:
            logger.info("Not scaling in block(s) %s: they hold kept results the driver still references", holding)
        active = sorted((b for b in active if b not in holding), key=lambda b: len(self._table.block_tasks(b)))
        chosen = active[:blocks]
        self._stop_blocks(chosen)
        return chosen

    def _holds_kept(self, block_id: str) -> int:
        """How many kept results referenced in the driver the block holds (it goes last)."""
        return sum(self._kept.live(s.server_id) for s in self._table.servers if s.block_id == block_id)

    def _stop_blocks(self, block_ids: List[str]) -> None:
        with self._lock:
            servers = [s for s in self._servers if s.block_id in block_ids]
        for server in servers:
            self._detach(server.link.server_id, p.Shutdown(reason="block scaled in"))
        job_ids = [self.blocks_to_job_id[b] for b in block_ids if b in self.blocks_to_job_id]
        self._blocks.end_jobs(job_ids, STOP_WAIT_SECONDS if servers else 0.0)

    def handle_errors(self, status: Dict[str, JobStatus]) -> None:
        """Parsl's status poll saw these blocks' jobs. One that ended before its server answered fails
        its block with our error, naming its logs (not Parsl's generic one); one that ended while its
        server held tasks loses that server first, so they fail with ``ServerLost`` (retryable) as on
        a lease's expiry, whichever comes first; then Parsl's block error handler sees the block."""
        self._blocks.fail_ended(status)
        if self.bad_state_is_set:
            return
        ended = {b for b, s in status.items() if s.terminal and self._table.has_server(b)}
        for server in [s for s in self._servers if s.block_id in ended]:
            job = status[server.block_id]
            first_line = (job.message or "").strip().splitlines()[:1]
            why = ": ".join([job.status_name] + first_line)
            self._on_server_lost(server.link.server_id, f"its block's job ended ({why})")
            self._client.disconnect(server.link.server_id)  # type: ignore[union-attr]
        lost = {b: self._simulated_status[b] for b in ended if b in self._simulated_status}
        super().handle_errors({**status, **lost})
