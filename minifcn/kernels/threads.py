"""Independent tasks on every thread: how the Numba backend runs in parallel.

A kernel is a plain compiled loop over a range of tasks, ``kernel(*args, lo, hi)``, that releases the
GIL (``nogil=True``); each task owns its part of the output (an image plane, a row of tiles). ``run``
cuts range(tasks) into one contiguous block per thread, hands every block but the first to a thread of a
small pool and runs the first itself. No two blocks write the same element, so there are no locks, and
every cut computes the same bits.

Why not Numba's ``prange``: Numba compiles a prange loop about twice over (the loop body becomes a function
of its own, then the function around it, with parallel-analysis passes on top). On a 2-core AMD Zen 4,
max pooling took 1.0 s to compile with prange and 0.3 s as a plain loop, and the first training step
spent 11 of its 14 s compiling a dozen such kernels. Handing a block to a pool thread costs tens of
microseconds, so work below ``SHARE_ELEMENTS`` runs whole in the calling thread.

The same pool runs the pieces of BLAS products (gemm.py). Its threads sleep on a queue between calls, so
they never spin on a core another library's threads want.
"""

import threading
from concurrent.futures import ThreadPoolExecutor

import numba

SHARE_ELEMENTS = 1 << 15  # outputs below this run in one block: a hand-off costs about as much as the work
_state = {"pool": None, "workers": 0}
_lock = threading.Lock()


def pool(workers):
    """The shared pool with ``workers`` threads (made anew when the count changes), or None for 0."""
    with _lock:
        if _state["workers"] != workers:
            if _state["pool"] is not None:
                _state["pool"].shutdown(wait=True)
            _state["pool"] = ThreadPoolExecutor(workers, thread_name_prefix="minifcn") if workers else None
            _state["workers"] = workers
        return _state["pool"]


def blocks(tasks, parts):
    """parts + 1 cut points of range(tasks), as even as integers allow."""
    return [tasks * i // parts for i in range(parts + 1)]


def run(kernel, tasks, *args, elements=None):
    """kernel(*args, lo, hi) over blocks [lo, hi) of range(tasks), one block per thread (minifcn's thread
    count, ``numba.get_num_threads()``); ``elements``, the size of the output, keeps small work whole."""
    threads = numba.get_num_threads()
    parts = min(threads, tasks)
    if parts <= 1 or (elements is not None and elements < SHARE_ELEMENTS):
        kernel(*args, 0, tasks)
        return
    cut, workers = blocks(tasks, parts), pool(threads - 1)
    waiting = [workers.submit(kernel, *args, lo, hi) for lo, hi in zip(cut[1:-1], cut[2:])]
    kernel(*args, cut[0], cut[1])
    for w in waiting:
        w.result()
