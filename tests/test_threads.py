"""How the Numba backend runs in parallel: blocks of tasks on a pool of threads (minifcn/kernels/threads.py).
Every task runs once, small work stays in the calling thread, errors come back, the kernels release the GIL
(or the threads would take turns), and any thread count computes the same bits."""

import inspect
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

threads = pytest.importorskip("minifcn.kernels.threads", reason="numba is not installed")
import numba  # noqa: E402

from minifcn.kernels import numba_cpu, numba_tiled  # noqa: E402


@pytest.fixture
def thread_count():
    """Set Numba's thread count for one test (at most what Numba started with), restored after."""
    saved = numba.get_num_threads()
    yield lambda n: numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(saved)


@given(st.integers(0, 500), st.integers(1, 64))
def test_blocks_cut_the_range_evenly(tasks, parts):
    cut = threads.blocks(tasks, parts)
    assert cut[0] == 0 and cut[-1] == tasks and len(cut) == parts + 1
    sizes = np.diff(cut)
    assert sizes.min() >= 0 and sizes.max() - sizes.min() <= 1


@given(st.integers(0, 300), st.sampled_from([None, 1, 10 ** 9]))
@settings(deadline=None, max_examples=40)
def test_every_task_runs_once(tasks, elements):
    seen, lock = [], threading.Lock()

    def kernel(out, begin, end):
        with lock:
            out.extend(range(begin, end))
    threads.run(kernel, tasks, seen, elements=elements)
    assert sorted(seen) == list(range(tasks))


def test_small_work_stays_in_the_calling_thread(thread_count):
    thread_count(2)
    if numba.get_num_threads() < 2:
        pytest.skip("this machine gives Numba one thread: there is no other thread to hand work to")
    where = []

    def kernel(begin, end):
        where.append(threading.get_ident())
    threads.run(kernel, 8, elements=threads.SHARE_ELEMENTS - 1)
    assert where == [threading.get_ident()]
    where.clear()
    threads.run(kernel, 8, elements=threads.SHARE_ELEMENTS)
    assert len(where) == 2 and threading.get_ident() in where and len(set(where)) == 2


def test_an_error_in_a_block_comes_back(thread_count):
    thread_count(2)

    def kernel(begin, end):
        if end == 10:  # the last block, which a pool thread runs when there are two
            raise ValueError("block failed")
    with pytest.raises(ValueError, match="block failed"):
        threads.run(kernel, 10)


def _block_kernels():
    """Every compiled kernel that takes a block of tasks (its last two parameters: begin, end)."""
    found = []
    for module in (numba_cpu, numba_tiled):
        found += [(name, f) for name, f in vars(module).items() if isinstance(f, numba.core.registry.CPUDispatcher)]
    for pixels, kernels in numba_tiled.KERNELS.items():
        found += [(f"tile{pixels}.{name}", f) for name, f in vars(kernels).items()
                  if isinstance(f, numba.core.registry.CPUDispatcher)]
    return [(name, f) for name, f in found if list(inspect.signature(f.py_func).parameters)[-2:] == ["begin", "end"]]


def test_block_kernels_release_the_gil():
    kernels = _block_kernels()
    assert len(kernels) >= 15, [name for name, _ in kernels]
    held = [name for name, f in kernels if not f.targetoptions.get("nogil")]
    assert not held, f"these kernels hold the GIL, so their blocks would run one after another: {held}"


def test_any_thread_count_computes_the_same_bits(thread_count):
    """The convolutions, pooling, the loss, forward and backward: one thread and two agree bit for bit (with
    the routes fixed: autotune keeps one table per thread count, and may choose other routes)."""
    from minifcn import Tensor, functional as F, models
    from minifcn.kernels import autotune
    was = autotune.enabled()
    autotune.set_autotune(False)
    rng = np.random.default_rng(3)
    model = models.build("fcn8s", width=0.125, fc_width=64, num_classes=5, input_mode="pad32")
    model.eval()  # no dropout: both passes see the same net
    x = rng.standard_normal((2, 3, 64, 48)).astype(np.float32)
    t = rng.integers(0, 5, (2, 64, 48))
    results = []
    try:
        for n in (1, 2):
            thread_count(n)
            for p in model.parameters():
                p.grad = None
            loss = F.softmax_cross_entropy(model(Tensor(x)), t)
            loss.backward()
            results.append([loss.data.copy()] + [p.grad.copy() for p in model.parameters() if p.grad is not None])
    finally:
        autotune.set_autotune(was)
    assert len(results[0]) > 10
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
