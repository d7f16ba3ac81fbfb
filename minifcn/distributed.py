"""Data parallelism over MPI: N processes ("ranks") train one model as one process would.

    mpiexec -n 2 minifcn train --data ... --batch-size 8     # 2 ranks, 4 images each, one global batch of 8

The whole idea is one sum. The loss of a batch is an average over its pixels, so its gradient is a sum
over the images: split the batch across ranks, let each rank compute the gradient of its own images'
share, add the ranks' gradients (``Allreduce``: every rank receives the sum), and every rank holds the
gradient of the whole batch. Each applies the same update to the same weights, and the weights stay
equal everywhere without ever being sent.

What makes N ranks compute the steps of one process, up to the order of floating-point sums:

- every rank builds the same global batch -- the images, augmentations and padding depend on
  (seed, epoch, image), never on N -- and keeps its own rows (``World.rows``); reading is cheap next
  to the net;
- a dropout mask is drawn for the whole global batch and each rank keeps its rows (``nn.Dropout.shard``);
- the loss is divided by the labelled pixels of the *global* batch (``denominator``), which each rank
  can count, since it holds all the labels.

Evaluation splits the batches across ranks and sums the confusion matrices: integer counts, so the
metrics equal one process's exactly. ``import minifcn`` never imports mpi4py: only a process that an
MPI launcher started as one of several does (``launched_size``).
"""

import numpy as np

from .arrays import array_module, to_host
from .launcher import default_threads, launched_size, local_size  # noqa: F401 (part of this module's API)

class World:
    """One process, alone: rank 0 of 1. The MPI world below has the same methods."""

    rank, size = 0, 1

    def rows(self, n):
        """The rows of a global batch of ``n`` this rank computes: contiguous, sizes differing by at most 1."""
        bounds = np.linspace(0, n, self.size + 1).round().astype(int)
        return slice(int(bounds[self.rank]), int(bounds[self.rank + 1]))

    def mine(self, k):
        """Whether batch number ``k`` of an evaluation is this rank's (round robin)."""
        return k % self.size == self.rank

    def sum(self, array):
        """Every rank's ``array`` added up, in place; every rank receives the sum."""
        return array

    def barrier(self):
        pass

    def broadcast(self, value):
        """Rank 0's ``value`` on every rank."""
        return value

    def check_same(self, values, what):
        """Raise RuntimeError naming the rank whose ``values`` differ from rank 0's."""

    def abort(self, code):
        raise SystemExit(code)


class MPIWorld(World):
    def __init__(self, comm):
        from mpi4py import MPI
        self.comm, self.MPI = comm, MPI
        self.rank, self.size = comm.Get_rank(), comm.Get_size()

    def sum(self, array):
        self.comm.Allreduce(self.MPI.IN_PLACE, array, op=self.MPI.SUM)
        return array

    def barrier(self):
        self.comm.Barrier()

    def broadcast(self, value):
        return self.comm.bcast(value, root=0)

    def check_same(self, values, what):
        everyone = self.comm.allgather(np.asarray(values).tobytes())
        drifted = [r for r, v in enumerate(everyone) if v != everyone[0]]
        if drifted:
            raise DriftError(f"{what} differ between ranks (rank {drifted[0]} against rank 0): the ranks no longer "
                             f"train one model; the last checkpoint is from before the drift")

    def abort(self, code):
        self.comm.Abort(code)


class DriftError(RuntimeError):
    """The ranks' weights differ: they would go on training different models."""


class MPIUnavailable(RuntimeError):
    """mpiexec started several processes, but this one cannot join them (no mpi4py)."""


_world = None


def world():
    """The MPI world when an MPI launcher started this process as one of several, else a one-rank World."""
    global _world
    if _world is None:
        n = launched_size()
        if n == 1:
            _world = World()
        else:
            try:
                from mpi4py import MPI
            except ImportError:
                raise MPIUnavailable(f"this process is one of {n} that an MPI launcher started, but mpi4py is not "
                                   f"installed: pip install 'minifcn[mpi]' (or run without mpiexec)") from None
            _world = MPIWorld(MPI.COMM_WORLD)
    return _world


def use_device_of(rank):
    """On the GPU backend, rank r takes device r % device_count (a machine's ranks share its GPUs)."""
    from . import backend
    if backend.get_backend() == "cupy":
        import cupy
        cupy.cuda.Device(rank % cupy.cuda.runtime.getDeviceCount()).use()


def sum_gradients(world, parameters, extra=()):
    """Add up every rank's gradients, in place (one Allreduce of one flat buffer in the gradients' own
    dtype), and the float64 numbers ``extra`` (the step's loss and pixel counts, say), which are returned
    summed. A parameter this rank gave no gradient (its rows of a short last batch were none) adds zeros.
    """
    parameters = [p for p in parameters if p.requires_grad]
    host = [np.zeros(p.shape, p.dtype) if p.grad is None else to_host(p.grad) for p in parameters]
    flat = np.concatenate([g.ravel() for g in host]) if host else np.zeros(0, np.float32)
    world.sum(flat)
    start = 0
    for p, g in zip(parameters, host):
        p.grad = array_module(p.data).asarray(flat[start:start + g.size].reshape(g.shape))
        start += g.size
    return world.sum(np.array(extra, np.float64))


def checksum(parameters):
    """Per parameter: the float64 sum and sum of squares of its weights (bit-equal weights give equal sums)."""
    return np.array([[float(np.sum(to_host(p.data), dtype=np.float64)),
                      float(np.sum(np.square(to_host(p.data), dtype=np.float64)))] for p in parameters])
