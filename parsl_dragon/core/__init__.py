"""The pure scheduling core: resource specs, the slot table, worker assignment. No I/O, no zmq, no dragon."""
