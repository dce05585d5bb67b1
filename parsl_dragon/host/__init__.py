"""Block hygiene on this host: proving which processes and /dev/shm files are a block's, and
cleaning up only those (stdlib only; used by the block's boot process and by ``parsl-dragon``)."""
