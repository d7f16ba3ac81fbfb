"""What an MPI launcher (mpiexec, mpirun, srun) tells each process it starts, read from the environment.

Kept free of numpy so that ``minifcn/__init__.py`` can size the thread pools before numpy loads.
"""

import os

# The world size, and how many ranks share this machine, as MPICH, Open MPI, PMIx and MVAPICH name them.
SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE")
LOCAL_SIZE_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "MV2_COMM_WORLD_LOCAL_SIZE")


def _first_int(names):
    for name in names:
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) >= 1:
            return int(value)
    return None


def launched_size():
    """How many ranks the launcher started (1 outside mpiexec)."""
    return _first_int(SIZE_VARIABLES) or 1


def local_size():
    """How many ranks share this machine's cores (all of them, if the launcher does not say)."""
    return _first_int(LOCAL_SIZE_VARIABLES) or launched_size()


def default_threads():
    """Threads per rank: this machine's cores shared equally among its ranks."""
    return max(1, (os.cpu_count() or 1) // local_size())
