import numpy as np
import pytest

from minifcn import Tensor, no_grad
from minifcn.functional import conv2d, relu


def test_gradients_accumulate_over_uses_and_calls():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    (x * x + x).sum().backward()  # d/dx = 2x + 1
    assert x.grad.tolist() == [3.0, 5.0]
    (x * 2.0).sum().backward()
    assert x.grad.tolist() == [5.0, 7.0]


def test_diamond_graph_sums_both_paths_before_going_back():
    x = Tensor(np.array(3.0), requires_grad=True)
    a = x * 2.0
    y = a * a + a  # dy/dx = (2a + 1) * 2 = 26
    y.backward()
    assert x.grad == 26.0


def test_no_grad_records_nothing():
    x = Tensor(np.ones(3), requires_grad=True)
    with no_grad():
        y = (x * 2.0).sum()
    assert not y.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward()


def test_constants_get_no_gradient():
    w = Tensor(np.ones((1, 1, 3, 3)), requires_grad=True)
    x = np.ones((1, 1, 4, 4))
    conv2d(x, w).sum().backward()
    assert w.grad.shape == (1, 1, 3, 3) and np.all(w.grad == 4)


def test_non_scalar_backward_needs_a_gradient():
    y = relu(Tensor(np.ones((2, 2)), requires_grad=True))
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        y.backward()
    with pytest.raises(ValueError, match=r"\(3,\) does not match"):
        y.backward(np.ones(3))


def test_float32_default_and_float64_kept():
    assert Tensor([1.0, 2.0]).dtype == np.float32
    assert Tensor(np.zeros(2)).dtype == np.float64
    assert (Tensor(np.zeros(2, np.float32)) * 2.0).dtype == np.float32


@pytest.mark.parametrize("op", [lambda t: t.mean(axis=1), lambda t: t.mean(), lambda t: t * np.float64(0.5),
                                lambda t: np.float64(2) * t, lambda t: t + np.float64(1),
                                lambda t: t / np.float64(3), lambda t: t - np.array(1.0)])
def test_a_scalar_keeps_a_float32_tensor_float32(op):
    """NumPy 2 promotes float32 * np.float64 to float64; an op's scalar constant follows the tensor instead,
    forward and backward (a float64 gradient would double the cost of every op below it)."""
    x = Tensor(np.ones((2, 3), np.float32), requires_grad=True)
    y = op(x)
    assert y.dtype == np.float32
    (y * y).sum().backward()
    assert x.grad.dtype == np.float32
    z = Tensor(np.ones(2, np.float64), requires_grad=True) * np.float32(2)  # and a float64 tensor stays float64
    assert z.dtype == np.float64


def test_deep_graph_does_not_hit_recursion_limit():
    x = Tensor(np.array(1.0), requires_grad=True)
    y = x
    for _ in range(5000):
        y = y + 1.0
    y.backward()
    assert x.grad == 1.0


def test_division_by_a_tensor_needing_grad_is_refused():
    x = Tensor(np.ones(2), requires_grad=True)
    assert (x / 2.0).data.tolist() == [0.5, 0.5]
    with pytest.raises(TypeError, match="divide by a constant"):
        x / x
