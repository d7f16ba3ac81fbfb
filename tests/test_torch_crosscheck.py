"""Cross-checks against PyTorch (an oracle only: minifcn never imports it)."""

import numpy as np
import pytest
from hypothesis import given, settings
from strategies import conv_geometry, random_arrays, restoring_output_padding, transpose_geometry

from minifcn import Tensor
from minifcn import functional as F

torch = pytest.importorskip("torch", reason="PyTorch cross-checks need the 'crosscheck' extra")
pytestmark = pytest.mark.torch


@settings(max_examples=50)
@given(conv_geometry())
def test_conv2d_and_transpose_match_pytorch(g):
    _, x, w, b = random_arrays(g)
    args = dict(stride=g["stride"], padding=g["padding"], dilation=g["dilation"])
    ref = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w), torch.tensor(b), **args)
    np.testing.assert_allclose(F.conv2d(x, w, b, **args).data, ref.numpy(), atol=1e-10)
    extra = restoring_output_padding(g, ref.shape[2:])
    ref_t = torch.nn.functional.conv_transpose2d(ref, torch.tensor(w), output_padding=extra, **args)
    np.testing.assert_allclose(F.conv_transpose2d(ref.numpy(), w, output_padding=extra, **args).data,
                               ref_t.numpy(), atol=1e-9)


@settings(max_examples=50)
@given(transpose_geometry())
def test_conv_transpose2d_matches_pytorch_for_every_legal_output_padding(g):
    """PyTorch allows output_padding < max(stride, dilation); stride 1 with dilation > 1 once crashed here."""
    rng, x, w, _ = random_arrays(g)
    b = rng.standard_normal(w.shape[1])  # (Cin, Cout, kh, kw): one bias per output channel
    args = dict(stride=g["stride"], padding=g["padding"], output_padding=g["output_padding"], dilation=g["dilation"])
    ref = torch.nn.functional.conv_transpose2d(torch.tensor(x), torch.tensor(w), torch.tensor(b), **args)
    np.testing.assert_allclose(F.conv_transpose2d(x, w, b, **args).data, ref.numpy(), atol=1e-10)


@pytest.mark.parametrize("k,s,p", [(2, 2, 0), (3, 2, 1), (3, 3, 1)])
def test_ceil_mode_max_pool_matches_pytorch(k, s, p):
    x = np.random.default_rng(0).standard_normal((2, 3, 11, 8))
    ref = torch.nn.functional.max_pool2d(torch.tensor(x), k, s, p, ceil_mode=True)
    np.testing.assert_array_equal(F.max_pool2d(x, k, s, p, ceil_mode=True).data, ref.numpy())


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("k, s, p", [(1, 1, 0), (2, 2, 0), (2, 2, 1), (3, 1, 1), (3, 2, 1), (4, 3, 2)])
@pytest.mark.parametrize("ceil", [False, True])
def test_max_pool_gradient_goes_where_pytorchs_does_with_ties_and_minus_infinity(backend, k, s, p, ceil):
    """The first maximum wins, and a window of -inf sends its gradient to its first real input, not the padding."""
    import minifcn
    if not minifcn.backend.available(backend):
        pytest.skip(f"backend {backend} is not installed")
    previous = minifcn.get_backend()
    minifcn.set_backend(backend)
    try:
        for seed in range(4):
            rng = np.random.default_rng(seed)
            x = rng.choice([-np.inf, -1.0, 0.0, 1.0], (2, 2, 7, 6))
            xt, xr = Tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
            y = F.max_pool2d(xt, k, s, p, ceil_mode=ceil)
            ref = torch.nn.functional.max_pool2d(xr, k, s, p, ceil_mode=ceil)
            gy = rng.standard_normal(y.shape)
            y.backward(gy)
            ref.backward(torch.tensor(gy))
            np.testing.assert_array_equal(y.data, ref.detach().numpy())
            np.testing.assert_allclose(xt.grad, xr.grad.numpy(), rtol=1e-12, atol=1e-12)  # overlaps sum in any order
    finally:
        minifcn.set_backend(previous)


def test_cross_entropy_and_its_gradient_match_pytorch():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((2, 6, 5, 4))
    t = rng.integers(0, 6, (2, 5, 4))
    t[0, 0] = 255
    zt = torch.tensor(z, requires_grad=True)
    torch.nn.functional.cross_entropy(zt, torch.tensor(t), ignore_index=255).backward()
    mine = Tensor(z, requires_grad=True)
    loss = F.softmax_cross_entropy(mine, t)
    loss.backward()
    assert np.isclose(loss.item(), torch.nn.functional.cross_entropy(zt, torch.tensor(t), ignore_index=255).item())
    np.testing.assert_allclose(mine.grad, zt.grad.numpy(), atol=1e-12)
