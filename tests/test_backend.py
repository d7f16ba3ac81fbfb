"""The backend switch: selection, errors, and results that do not depend on it."""

import os
import subprocess
import sys

import numpy as np
import pytest

import minifcn
from minifcn import backend, models
from minifcn import functional as F
from minifcn.autograd import Tensor


@pytest.fixture
def restore_backend():
    name, limit = minifcn.get_backend(), minifcn.workspace_limit()
    yield
    minifcn.set_backend(name)
    minifcn.set_workspace_limit(limit)


def test_unknown_backend_is_named(restore_backend):
    with pytest.raises(ValueError, match="'tensorflow'"):
        minifcn.set_backend("tensorflow")


@pytest.mark.skipif(backend.available("cupy"), reason="this machine has a GPU; the error path needs none")
def test_cupy_without_gpu_says_what_is_missing(restore_backend):
    with pytest.raises(RuntimeError, match="CUDA"):
        minifcn.set_backend("cupy")
    assert minifcn.get_backend() in ("numpy", "numba")  # unchanged by the failed switch


def test_environment_variable_picks_the_backend():
    out = subprocess.run([sys.executable, "-c", "import minifcn; print(minifcn.get_backend())"],
                         env={"MINIFCN_BACKEND": "numpy", "PATH": ""}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "numpy"


def test_default_is_numba_when_installed():
    pytest.importorskip("numba")
    out = subprocess.run([sys.executable, "-c", "import minifcn; print(minifcn.get_backend())"],
                         env={"PATH": ""}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "numba"


def _fcn8s_step(dtype):
    model = models.build("fcn8s", num_classes=5, width=1 / 32, fc_width=16, input_mode="pad32", seed=1)
    for p in model.parameters():
        p.data = p.data.astype(dtype)
    model.eval()  # no dropout: the comparison is about kernels
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 45, 37)).astype(dtype)
    y = rng.integers(0, 5, (2, 45, 37))
    y[:, :3] = 255
    for p in model.parameters():  # non-zero scorers so every path carries gradient
        p.data = p.data + 0.01 * rng.standard_normal(p.shape).astype(dtype)
    scores = model(Tensor(x))
    loss = F.softmax_cross_entropy(scores, y)
    loss.backward()
    return scores.numpy(), {n: p.grad.copy() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("other", ["numba", pytest.param("cupy", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backends_agree_on_a_training_step(restore_backend, other, dtype):
    if not backend.available(other):
        pytest.skip(f"backend {other} is not available here" + (" (no CUDA GPU)" if other == "cupy" else ""))
    minifcn.set_backend("numpy")
    ref_scores, ref_grads = _fcn8s_step(dtype)
    minifcn.set_backend(other)
    scores, grads = _fcn8s_step(dtype)
    tol = 2e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(scores, ref_scores, rtol=tol, atol=tol)
    assert grads.keys() == ref_grads.keys() and len(grads) > 20
    for name in grads:
        g = grads[name].get() if hasattr(grads[name], "get") else grads[name]
        np.testing.assert_allclose(g, ref_grads[name], rtol=tol, atol=tol * np.abs(ref_grads[name]).max(),
                                   err_msg=name)


def test_chunked_convolution_equals_unchunked(restore_backend):
    """A tiny workspace forces one-row chunks; forward and all three gradients must not change."""
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal((2, 3, 11, 9)), rng.standard_normal((4, 3, 3, 2)), rng.standard_normal(4)

    def run():
        xt, wt, bt = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True), Tensor(b, requires_grad=True)
        y = F.conv2d(xt, wt, bt, stride=(2, 1), padding=(1, 2), dilation=(1, 2))
        z = F.conv_transpose2d(y, wt, None, stride=(2, 1), padding=(1, 2), dilation=(1, 2))
        (z * z).sum().backward()
        return y.data, z.data, xt.grad, wt.grad, bt.grad

    whole = run()
    minifcn.set_workspace_limit(8)  # smaller than one output row: every chunk is a single row
    for got, want in zip(run(), whole):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_workspace_limit_rejects_nonsense(restore_backend):
    with pytest.raises(ValueError, match="-5"):
        minifcn.set_workspace_limit(-5)


@pytest.mark.parametrize("padding", [0, 1, 2, 3])  # 3 > d(k-1) = 2: the tiled input gradient crops g
@pytest.mark.parametrize("route", ["tiled", "shifted", "im2col"])
def test_numba_routes_match_the_reference_backend(restore_backend, padding, route):
    """Forward, input and weight gradient of a stride-1 layer through each of Numba's routes."""
    numba_cpu = pytest.importorskip("minifcn.kernels.numba_cpu", reason="numba is not installed")
    rng = np.random.default_rng(padding)
    x, w, b = rng.standard_normal((2, 5, 13, 21)), rng.standard_normal((11, 5, 3, 3)), rng.standard_normal(11)

    def run():
        xt, wt, bt = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True), Tensor(b, requires_grad=True)
        y = F.conv2d(xt, wt, bt, padding=padding)
        (y * y).sum().backward()
        return y.data, xt.grad, wt.grad, bt.grad

    minifcn.set_backend("numpy")
    want = run()
    minifcn.set_backend("numba")
    numba_cpu.ROUTE = route
    try:
        got = run()
    finally:
        numba_cpu.ROUTE = None
    for a, ref in zip(got, want):
        np.testing.assert_allclose(a, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("given", [None, "ACTIVE"])
def test_idle_openmp_threads_sleep_unless_the_user_says_otherwise(given):
    """Spinning Numba threads would steal the cores from the BLAS GEMM that follows each kernel."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    out = subprocess.run([sys.executable, "-c", "import os, minifcn; print(os.environ['OMP_WAIT_POLICY'])"],
                         capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == (given or "PASSIVE")


def test_openblas_threads_nap_when_minifcn_is_imported_before_numpy():
    """OpenBLAS reads OPENBLAS_THREAD_TIMEOUT once, when numpy loads it: minifcn must have set it by then."""
    probe = ("import os, sys\n"
             "class Spy:\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             "        if name == 'numpy' and not hasattr(Spy, 'seen'):\n"
             "            Spy.seen = os.environ.get('OPENBLAS_THREAD_TIMEOUT')\n"
             "sys.meta_path.insert(0, Spy())\n"
             "import minifcn\n"
             "print(Spy.seen)\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "20"
    env["OPENBLAS_THREAD_TIMEOUT"] = "28"  # the user's own value wins
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "28"


FRESH_OR_CACHED = """
import hashlib, numpy as np, minifcn
from minifcn import functional as F, Tensor
minifcn.set_backend("numba")
rng = np.random.default_rng(0)
digest = hashlib.sha256()
for cin, cout, size in ((3, 8, 64), (8, 16, 32), (16, 16, 48)):  # sizes the register tiles take
    x = Tensor(rng.standard_normal((2, cin, size, size)).astype(np.float32), requires_grad=True)
    w = Tensor(rng.standard_normal((cout, cin, 3, 3)).astype(np.float32), requires_grad=True)
    y = F.conv2d(x, w, padding=1)
    y.backward(np.asarray(rng.standard_normal(y.shape), np.float32))
    for a in (y.data, x.grad, w.grad):
        digest.update(np.ascontiguousarray(a).tobytes())
print(digest.hexdigest())
"""


@pytest.mark.slow
def test_kernels_compiled_now_and_kernels_from_the_disk_cache_compute_the_same_bits(tmp_path):
    """A run cut off in the process that compiled the kernels resumes in one that loads them from Numba's
    cache: for the resume to be bit-for-bit, both must give the same bits (with every fastmath flag on, the
    tiles' weight gradient did not)."""
    pytest.importorskip("numba")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache"), "MINIFCN_BACKEND": "numba"}
    runs = [subprocess.run([sys.executable, "-c", FRESH_OR_CACHED], env=env, capture_output=True, text=True,
                           check=True).stdout.strip() for _ in range(2)]
    assert any((tmp_path / "numba-cache").rglob("*.nbi")), "the first run should have filled the cache"
    assert runs[0] == runs[1]
