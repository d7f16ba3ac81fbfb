"""minifcn: Fully Convolutional Networks from scratch in NumPy."""

import os

# Threads. Numba kernels and BLAS products take turns on the same cores, so a pool that waits for more
# work must sleep rather than spin.
# - Numba's OpenMP threads spun after each parallel loop: the demo's training step took 1.9 s, 1.3 s with
#   them asleep. OpenMP reads OMP_WAIT_POLICY at Numba's first parallel loop, after this import.
# - OpenBLAS's threads spin for 2**28 cycles (about 0.08 s) after each product, and it reads its timeout
#   only when numpy loads it, which may be before this import. So the Numba backend's own products never
#   wake them (kernels/gemm.py: BLAS on one thread per piece, the pieces on a pool that sleeps), which makes
#   the import order irrelevant to minifcn's speed. The short timeout below still helps where numpy is
#   loaded after minifcn and other code calls BLAS between minifcn's ops.
# A value already in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")
# Under mpiexec, the ranks on one machine share its cores: each BLAS gets its share (cores / ranks),
# or two ranks of two threads on two cores would fight. Numba's pool is sized per run (--threads).
from . import launcher  # noqa: E402 (reads the environment only; no numpy)
from . import cpu  # noqa: E402 (llvmlite only: full-width vectors on AVX-512, see minifcn/cpu.py)

cpu.use_full_width()
from . import memory  # noqa: E402 (freed memory kept for the next step, see minifcn/memory.py)

memory.keep_freed_memory()

if launcher.local_size() > 1:
    for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_name, str(launcher.default_threads()))

from .autograd import Function, Tensor, no_grad
from .backend import get_backend, set_autotune, set_backend, set_num_threads, set_workspace_limit, workspace_limit
from .conv_matrix import ConvMatrix
from .gradcheck import gradcheck

__version__ = "0.1.0"
__all__ = ["Tensor", "Function", "no_grad", "gradcheck", "ConvMatrix", "set_backend", "get_backend",
           "set_num_threads", "set_workspace_limit", "workspace_limit", "set_autotune"]
