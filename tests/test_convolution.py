import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import (conv_geometry, naive_conv2d, naive_conv_transpose2d, random_arrays, restoring_output_padding,
                        transpose_geometry)

from minifcn import Tensor
from minifcn.functional import conv2d, conv_output_size, conv_transpose2d, conv_transpose_output_size


@given(conv_geometry())
def test_conv2d_equals_naive_loop_reference(g):
    _, x, w, b = random_arrays(g)
    y = conv2d(x, w, b, g["stride"], g["padding"], g["dilation"]).data
    np.testing.assert_allclose(y, naive_conv2d(x, w, b, g["stride"], g["padding"], g["dilation"]), atol=1e-10)


@given(conv_geometry())
def test_conv2d_output_shape_follows_conv_arithmetic(g):
    _, x, w, _ = random_arrays(g)
    y = conv2d(x, w, None, g["stride"], g["padding"], g["dilation"])
    expected = tuple(conv_output_size(n, k, s, p, d) for n, k, s, p, d in
                     zip(x.shape[2:], w.shape[2:], g["stride"], g["padding"], g["dilation"]))
    assert y.shape == (x.shape[0], w.shape[0]) + expected


@given(conv_geometry())
def test_transposed_conv_is_conv_input_gradient(g):
    """The review's figure 8: d/dx sum(conv2d(x, w) * y) == conv_transpose2d(y, w)."""
    rng, x, w, _ = random_arrays(g)
    x = Tensor(x, requires_grad=True)
    z = conv2d(x, w, None, g["stride"], g["padding"], g["dilation"])
    y = rng.standard_normal(z.shape)
    (z * y).sum().backward()
    extra = restoring_output_padding(g, z.shape[2:])
    t = conv_transpose2d(y, w, None, g["stride"], g["padding"], extra, g["dilation"]).data
    np.testing.assert_allclose(x.grad, t, atol=1e-10)


@given(conv_geometry())
def test_conv_transpose2d_output_size_inverts_conv(g):
    _, x, w, _ = random_arrays(g)
    z = conv2d(x, w, None, g["stride"], g["padding"], g["dilation"])
    extra = restoring_output_padding(g, z.shape[2:])
    back = conv_transpose2d(z, w, None, g["stride"], g["padding"], extra, g["dilation"])
    assert back.shape == x.shape
    assert back.shape[2:] == tuple(conv_transpose_output_size(m, k, s, p, e, d) for m, k, s, p, e, d in
                                   zip(z.shape[2:], w.shape[2:], g["stride"], g["padding"], extra, g["dilation"]))


@given(transpose_geometry())
def test_conv_transpose2d_equals_naive_scatter_for_every_legal_output_padding(g):
    rng, x, w, _ = random_arrays(g)
    b = rng.standard_normal(w.shape[1])  # (Cin, Cout, kh, kw): one bias per output channel
    args = (g["stride"], g["padding"], g["output_padding"], g["dilation"])
    y = conv_transpose2d(x, w, b, *args).data
    np.testing.assert_allclose(y, naive_conv_transpose2d(x, w, *args) + b[:, None, None], atol=1e-10)


def test_worked_example_of_the_review():
    """2x2 input [[0,1],[2,3]], 2x2 kernel [[0,1],[2,3]], stride 1: a sum of four scaled kernels."""
    x = np.array([[[[0, 1], [2, 3]]]], dtype=np.float32)
    w = np.array([[[[0, 1], [2, 3]]]], dtype=np.float32)
    y = conv_transpose2d(x, w).data
    assert y.dtype == np.float32
    assert y[0, 0].tolist() == [[0, 0, 1], [0, 4, 6], [4, 12, 9]]


def test_stride_two_opens_gaps():
    x = np.array([[[[0, 1], [2, 3]]]], dtype=np.float64)
    w = np.array([[[[0, 1], [2, 3]]]], dtype=np.float64)
    assert conv_transpose2d(x, w, stride=2).data[0, 0].tolist() == [
        [0, 0, 0, 1], [0, 0, 2, 3], [0, 2, 0, 3], [4, 6, 6, 9]]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_convolutions_keep_dtype(dtype):
    x = np.ones((1, 2, 6, 5), dtype=dtype)
    assert conv2d(x, np.ones((3, 2, 3, 3), dtype=dtype), padding=1).dtype == dtype
    assert conv_transpose2d(x, np.ones((2, 3, 4, 4), dtype=dtype), stride=2).dtype == dtype


@given(st.data())
def test_padding_past_the_kernels_reach_gives_zeros_there_and_the_same_gradients(data):
    """FCN's pad 100: where the padding is wider than d(k - 1), the outer outputs read only zeros. The
    forward against the loop reference, both gradients against the transposed convolution and the
    windows' sum, at padding up to 12 (stride 1, where workspace computes only the inner block)."""
    k, d, p = (tuple(data.draw(st.integers(lo, hi)) for _ in range(2)) for lo, hi in ((1, 4), (1, 2), (0, 12)))
    H, W = (data.draw(st.integers(max(1, di * (ki - 1) + 1 - 2 * pi), 8)) for ki, di, pi in zip(k, d, p))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    x, w, b = rng.standard_normal((2, 3, H, W)), rng.standard_normal((2, 3, *k)), rng.standard_normal(2)
    xt, wt = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)
    y = conv2d(xt, wt, b, 1, p, d)
    np.testing.assert_allclose(y.data, naive_conv2d(x, w, b, (1, 1), p, d), atol=1e-10)
    probe = rng.standard_normal(y.shape)
    (y * Tensor(probe)).sum().backward()
    np.testing.assert_allclose(xt.grad, naive_conv_transpose2d(probe, w, (1, 1), p, (0, 0), d), atol=1e-10)
    padded = np.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])))
    extent = [di * (ki - 1) + 1 for ki, di in zip(k, d)]
    windows = np.lib.stride_tricks.sliding_window_view(padded, extent, axis=(2, 3))[..., ::d[0], ::d[1]]
    np.testing.assert_allclose(wt.grad, np.einsum("noyx,ncyxij->ocij", probe, windows), atol=1e-10)
