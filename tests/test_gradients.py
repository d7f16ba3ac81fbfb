"""Every op's backward against central finite differences (gradcheck, float64)."""

import numpy as np
import pytest
from hypothesis import given, settings
from strategies import conv_geometry, random_arrays, restoring_output_padding, transpose_geometry

from minifcn import Function, Tensor, gradcheck
from minifcn import functional as F


def leaf(rng, *shape):
    return Tensor(rng.standard_normal(shape), requires_grad=True)


@settings(max_examples=25)
@given(conv_geometry(max_size=5))
def test_conv2d_gradients(g):
    _, x, w, b = random_arrays(g)
    x, w, b = (Tensor(a, requires_grad=True) for a in (x, w, b))
    assert gradcheck(lambda x, w, b: F.conv2d(x, w, b, g["stride"], g["padding"], g["dilation"]), x, w, b)


@settings(max_examples=25)
@given(conv_geometry(max_size=5))
def test_conv_transpose2d_gradients(g):
    """Run on the output of the matching conv2d, so that the transposed output is never empty."""
    _, x, w, _ = random_arrays(g)
    z = F.conv2d(x, w, None, g["stride"], g["padding"], g["dilation"]).data
    b = np.random.default_rng(g["seed"]).standard_normal(w.shape[1])
    extra = restoring_output_padding(g, z.shape[2:])
    z, w, b = (Tensor(a, requires_grad=True) for a in (z, w, b))
    assert gradcheck(lambda z, w, b: F.conv_transpose2d(z, w, b, g["stride"], g["padding"], extra, g["dilation"]),
                     z, w, b)


@settings(max_examples=25)
@given(transpose_geometry(max_size=4))
def test_conv_transpose2d_gradients_with_any_output_padding(g):
    rng, x, w, _ = random_arrays(g)
    x, w = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)
    assert gradcheck(lambda x, w: F.conv_transpose2d(x, w, None, g["stride"], g["padding"], g["output_padding"],
                                                     g["dilation"]), x, w)


@pytest.mark.parametrize("kernel,stride,padding,ceil", [(2, 2, 0, True), (3, 2, 1, True), (3, 2, 0, False),
                                                        (2, 1, 1, False), ((3, 2), (2, 1), (1, 0), True)])
def test_max_pool2d_gradients(kernel, stride, padding, ceil):
    x = leaf(np.random.default_rng(0), 2, 3, 7, 6)
    assert gradcheck(lambda x: F.max_pool2d(x, kernel, stride, padding, ceil), x)


def test_elementwise_and_shape_gradients():
    rng = np.random.default_rng(0)
    a, b, c, m = leaf(rng, 3, 4), leaf(rng, 4), leaf(rng, 3, 1), leaf(rng, 4, 5)
    assert gradcheck(lambda a, b, c: (a + b) * c - a, a, b, c)
    assert gradcheck(lambda a, b: (a / 3.0 + 2.0 * b).sum(axis=1), a, b)
    assert gradcheck(lambda a: a.mean(axis=0, keepdims=True) + a.mean(), a)
    assert gradcheck(lambda a: a.reshape(2, 6).transpose(1, 0)[1:5], a)
    assert gradcheck(lambda a, m: a @ m, a, m)
    assert gradcheck(lambda a: F.relu(a), a)


def test_pad_and_crop_gradients():
    x = leaf(np.random.default_rng(0), 1, 2, 4, 5)
    assert gradcheck(lambda x: F.crop(F.pad2d(x, 1, 2, 3, 0), 2, 1, 4, 6), x)


def test_dropout_gradient_with_fixed_mask():
    x = leaf(np.random.default_rng(0), 2, 3, 4, 4)
    assert gradcheck(lambda x: F.dropout(x, 0.5, True, np.random.default_rng(7)), x)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_softmax_cross_entropy_gradient(reduction):
    rng = np.random.default_rng(0)
    z = leaf(rng, 2, 4, 3, 5)
    t = rng.integers(0, 4, (2, 3, 5))
    t[0, 1, :3] = 255
    weight = np.array([0.5, 1.0, 2.0, 1.5])
    assert gradcheck(lambda z: F.softmax_cross_entropy(z, t, reduction=reduction), z)
    assert gradcheck(lambda z: F.softmax_cross_entropy(z, t, reduction=reduction, weight=weight), z)


def test_gradcheck_catches_a_wrong_backward():
    class Square(Function):
        def forward(self, x):
            self.x = x
            return x * x

        def backward(self, g):
            return g * self.x  # wrong: should be 2x

    with pytest.raises(AssertionError, match="differs from finite differences"):
        gradcheck(lambda x: Square.apply(x), leaf(np.random.default_rng(0), 3))
