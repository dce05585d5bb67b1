"""Facts of this host: the batch job it runs in (driver and boot), and block hygiene -- proving
which processes and /dev/shm files are a block's and cleaning up only those (boot and
``parsl-dragon``). Standard library only."""
