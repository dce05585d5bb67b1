"""Code that runs inside tasks: the MPI environment, $PARSL_MPI_PREFIX, the monitoring radio."""
