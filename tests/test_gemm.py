"""The Numba backend's matrix product: numpy.matmul's result, cut into pieces across threads, with BLAS held
at one thread while it runs, whatever was imported first."""

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

gemm = pytest.importorskip("minifcn.kernels.gemm", reason="numba is not installed")


@st.composite
def operands(draw):
    """2-D or 3-D operands (a stack against a matrix broadcasts), some of them strided views."""
    M, K, N = draw(st.integers(1, 40)), draw(st.integers(1, 30)), draw(st.integers(1, 70))
    batch = draw(st.sampled_from([(), (1,), (2,), (5,)]))
    a_batch, b_batch = draw(st.sampled_from([(batch, batch), ((), batch), (batch, ())]))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    a = rng.standard_normal(a_batch + (M, K + 2)).astype(dtype)[..., 1:K + 1]  # rows not contiguous
    b = rng.standard_normal(b_batch + (N, K)).astype(dtype)
    b = b.swapaxes(-1, -2)  # a transposed view
    if draw(st.booleans()):
        b = np.ascontiguousarray(b)
    if draw(st.booleans()):  # neither axis of unit stride: must be copied before BLAS sees it
        a = np.repeat(a, 2, axis=-1)[..., ::2]
    return a, b


@pytest.mark.parametrize("share", [0, gemm.SHARE_FLOPS])
@given(operands())
@settings(max_examples=60, deadline=None)
def test_matmul_is_numpys(share, ab):
    a, b = ab
    original = gemm.SHARE_FLOPS
    gemm.SHARE_FLOPS = share  # 0: every product is cut into pieces, however small
    try:
        got = gemm.matmul(a, b)
    finally:
        gemm.SHARE_FLOPS = original
    want = np.matmul(a, b)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-5 if a.dtype == np.float32 else 1e-12, atol=1e-5)


@pytest.mark.parametrize("shape", [(7, 1), (1, 100), (3, 33), (200, 16)])
@pytest.mark.parametrize("parts", [1, 2, 3, 8])
def test_pieces_cover_the_result_once(shape, parts):
    M, N = shape
    a, b = np.ones((M, 4)), np.ones((4, N))
    out = np.zeros((M, N))
    for pa, pb, po in gemm._pieces(a, b, out, parts):
        po += 1
    assert (out == 1).all()


PROBE = r"""
import json, sys, threading
if sys.argv[1] == "numpy":
    import numpy  # loads OpenBLAS before minifcn can set its environment
import minifcn
import numpy as np
from threadpoolctl import threadpool_info
from minifcn.kernels import gemm, numba_cpu
minifcn.set_num_threads(2)
seen, real = [], np.matmul
def spy(*args, **kwargs):
    blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    seen.append([threading.current_thread().name, blas])
    return real(*args, **kwargs)
gemm.np.matmul = spy
before = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
x = np.random.default_rng(0).standard_normal((4, 64, 24, 24)).astype(np.float32)
w = np.random.default_rng(1).standard_normal((64, 64, 3, 3)).astype(np.float32)
numba_cpu.ROUTE = "shifted"
numba_cpu.conv2d(x, w, 1, 1)
after = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
print(json.dumps({"before": before, "after": after, "seen": seen}))
"""


@pytest.mark.parametrize("first", ["numpy", "minifcn"])
def test_products_never_wake_blas_threads_in_either_import_order(first):
    out = subprocess.run([sys.executable, "-c", PROBE, first], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["before"] and report["before"] == report["after"]  # the user's BLAS setting comes back
    assert len(report["seen"]) >= 9  # one product per tap of the 3x3 kernel at least
    assert all(blas == [1] * len(blas) for _, blas in report["seen"])
    assert len({thread for thread, _ in report["seen"]}) == 2  # the work was shared by two threads


@given(st.integers(1, 4), st.integers(1, 40), st.integers(1, 40), st.integers(1, 30), st.integers(0, 2**16))
@settings(max_examples=60, deadline=None)
def test_sum_of_products_is_the_sum_over_the_stack(N, M, L, K, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((N, M, L))
    b = rng.standard_normal((N, K, L)).transpose(0, 2, 1)  # a transposed view, as im2col's columns are read
    np.testing.assert_allclose(gemm.sum_of_products(a, b), sum(a[n] @ b[n] for n in range(N)), rtol=1e-12,
                               atol=1e-12)


def test_a_fully_connected_layer_multiplies_through_the_backend(monkeypatch):
    """nn.Linear's products (forward, and both gradients) are the backend's matmul: under Numba, gemm's, which
    keeps BLAS's threads from spinning beside the kernels. Values: the products written out."""
    from minifcn import Tensor, backend, nn
    ops, calls = backend.ops(), []
    real = ops.matmul
    monkeypatch.setattr(ops, "matmul", staticmethod(lambda a, b: calls.append((a.shape, b.shape)) or real(a, b)))
    rng = np.random.default_rng(0)
    layer = nn.Linear(6, 4, rng=rng)
    x = Tensor(rng.standard_normal((5, 6)).astype(np.float32), requires_grad=True)
    g = rng.standard_normal((5, 4)).astype(np.float32)
    y = layer(x)
    y.backward(g)
    assert calls == [((5, 6), (6, 4)), ((5, 4), (4, 6)), ((6, 5), (5, 4))]
    W = layer.weight.data
    np.testing.assert_allclose(y.data, x.data @ W.T + layer.bias.data, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(x.grad, g @ W, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.weight.grad, g.T @ x.data, rtol=1e-5, atol=1e-6)
