"""The side of parsl-dragon that runs inside a block: boot, server, backend, workers."""
