"""Matrix products for the Numba backend: BLAS on one thread per piece, the pieces on every core.

OpenBLAS keeps its worker threads spinning after each product, waiting for the next one, for as long
as ``OPENBLAS_THREAD_TIMEOUT`` says (2**28 cycles, about 0.08 s, unless set before numpy loads). A
Numba kernel that runs next then shares a core with a spinning thread. minifcn sets a short timeout
when it is imported first; a script that imports numpy first could not be helped that way and ran
the small FCN-8s step in 0.53-0.62 s instead of 0.44-0.47 s (2-core Intel Xeon).

So the products here never wake OpenBLAS's own threads: BLAS is held at one thread for the duration
of each call, and a product big enough to share is cut into one piece per thread, along the images of a
stack, the columns or the rows of its result. Each piece is one BLAS call in a thread of a small pool;
the pool's threads sleep on a queue between calls, so the Numba kernels that follow find the cores free,
whatever was imported first. Products too small to share run whole, in the calling thread.

``matmul(a, b)`` follows ``numpy.matmul`` for 2-D and 3-D operands (a stack against one matrix
broadcasts) and is tested against it.
"""

import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

SHARE_FLOPS = 1 << 22  # below this a product runs whole: handing out pieces costs tens of microseconds
_state = {"pool": None, "workers": 0, "blas": None}
_lock = threading.Lock()


def _blas_libraries():
    """threadpoolctl's handles on the BLAS libraries loaded in this process (found once; [] without it)."""
    if _state["blas"] is None:
        try:
            from threadpoolctl import ThreadpoolController
            _state["blas"] = list(ThreadpoolController().select(user_api="blas").lib_controllers)
        except Exception:  # not installed, or a BLAS it cannot drive: products run as numpy runs them
            _state["blas"] = []
    return _state["blas"]


class one_blas_thread:
    """Within the block, BLAS computes on the calling thread only; the previous counts come back after."""

    def __enter__(self):
        self.saved = [(lib, lib.get_num_threads()) for lib in _blas_libraries()]
        for lib, n in self.saved:
            if n != 1:
                lib.set_num_threads(1)

    def __exit__(self, *exc):
        for lib, n in self.saved:
            if n != 1:
                lib.set_num_threads(n)


def _pool(workers):
    with _lock:
        if _state["workers"] != workers:
            if _state["pool"] is not None:
                _state["pool"].shutdown(wait=True)
            _state["pool"] = ThreadPoolExecutor(workers, thread_name_prefix="minifcn-gemm") if workers else None
            _state["workers"] = workers
        return _state["pool"]


def _blasable(m):
    """m itself where BLAS can read it in place (unit stride along one of its last two axes), else a copy."""
    s = m.strides[-2:]
    return m if m.itemsize in s and min(s) >= 0 else np.ascontiguousarray(m)


def _bounds(size, parts, align=1):
    """parts + 1 cut points of range(size), multiples of align (but the last)."""
    step = -(-size // parts)
    step = -(-step // align) * align
    return [min(i * step, size) for i in range(parts)] + [size]


def _pieces(a, b, out, parts):
    """(a piece, b piece, out piece) triples that together compute out = a @ b."""
    M, N = out.shape[-2:]
    if out.ndim == 3 and out.shape[0] >= parts:
        cut = _bounds(out.shape[0], parts)
        return [(a[s:e] if a.ndim == 3 else a, b[s:e] if b.ndim == 3 else b, out[s:e]) for s, e in zip(cut, cut[1:])]
    if N >= M:
        cut = _bounds(N, parts, align=16)
        return [(a, b[..., s:e], out[..., s:e]) for s, e in zip(cut, cut[1:])]
    cut = _bounds(M, parts)
    return [(a[..., s:e, :], b, out[..., s:e, :]) for s, e in zip(cut, cut[1:])]


def matmul(a, b):
    """a @ b, with a and b 2-D or 3-D, on every Numba thread and without waking BLAS's own threads."""
    a, b = _blasable(a), _blasable(b)
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    out = np.empty(batch + (a.shape[-2], b.shape[-1]), dtype=np.result_type(a.dtype, b.dtype))
    threads = numba.get_num_threads()
    flops = 2 * out.size * a.shape[-1]
    with one_blas_thread():
        if threads == 1 or flops < SHARE_FLOPS:
            return np.matmul(a, b, out=out)
        pieces = [p for p in _pieces(a, b, out, threads) if p[2].size]
        pool = _pool(threads - 1)
        waiting = [pool.submit(np.matmul, pa, pb, out=po) for pa, pb, po in pieces[1:]]
        np.matmul(*pieces[0][:2], out=pieces[0][2])
        for w in waiting:
            w.result()
    return out


def sum_of_products(a, b):
    """sum_n a[n] @ b[n] for stacks a (N, M, L) and b (N, L, K): the weight gradient's sum over the images.

    As N products and a sum, this writes N results of M x K; as one product of the images side by side,
    [a_0 ... a_N-1] @ [b_0; ...; b_N-1], it copies both operands into that layout once. The copy is the
    smaller cost when M > L: a thick layer on a small map (fc6 over 4 x 4 pixels: 8 results of
    512 x 3136, 51 MB, against a 1.6 MB copy).
    """
    N, M, L = a.shape
    if N == 1 or M <= L:
        return matmul(a, b).sum(axis=0)
    return matmul(np.ascontiguousarray(a.transpose(1, 0, 2)).reshape(M, N * L),
                  np.ascontiguousarray(b).reshape(N * L, b.shape[2]))
