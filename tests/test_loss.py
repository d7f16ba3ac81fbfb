import numpy as np
import pytest

from minifcn import Tensor
from minifcn.functional import softmax_cross_entropy


def naive_cross_entropy(z, t, ignore=255, weight=None):
    total, count = 0.0, 0.0
    for n in range(z.shape[0]):
        for i in range(z.shape[2]):
            for j in range(z.shape[3]):
                if t[n, i, j] == ignore:
                    continue
                scores = z[n, :, i, j]
                wk = 1.0 if weight is None else weight[t[n, i, j]]
                total -= wk * (scores[t[n, i, j]] - np.log(np.exp(scores).sum()))
                count += wk
    return total, count


def test_matches_naive_per_pixel_definition():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((2, 5, 4, 3))
    t = rng.integers(0, 5, (2, 4, 3))
    t[1, 2] = 255
    weight = rng.uniform(0.5, 2, 5)
    total, count = naive_cross_entropy(z, t, weight=weight)
    assert np.isclose(softmax_cross_entropy(z, t, reduction="sum", weight=weight).item(), total)
    assert np.isclose(softmax_cross_entropy(z, t, weight=weight).item(), total / count)


def test_void_pixels_contribute_nothing():
    rng = np.random.default_rng(1)
    z = Tensor(rng.standard_normal((1, 3, 4, 4)), requires_grad=True)
    t = rng.integers(0, 3, (1, 4, 4))
    t[0, :2] = 255
    softmax_cross_entropy(z, t).backward()
    assert np.all(z.grad[0, :, :2] == 0) and np.any(z.grad[0, :, 2:] != 0)
    z2 = z.data.copy()
    z2[0, :, :2] += 100  # changing void pixels' scores changes nothing
    assert softmax_cross_entropy(z2, t).item() == softmax_cross_entropy(z.data, t).item()


def test_numerically_stable_for_huge_logits():
    z = np.array([[[[1e4]], [[0.0]], [[-1e4]]]], dtype=np.float32)
    loss = softmax_cross_entropy(z, np.array([[[1]]])).item()
    assert np.isfinite(loss) and np.isclose(loss, 1e4, rtol=1e-6)


def test_all_void_batch_gives_zero_loss_and_gradient():
    z = Tensor(np.ones((1, 2, 2, 2)), requires_grad=True)
    loss = softmax_cross_entropy(z, np.full((1, 2, 2), 255))
    loss.backward()
    assert loss.item() == 0 and not z.grad.any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_keeps_dtype(dtype):
    loss = softmax_cross_entropy(np.zeros((1, 3, 2, 2), dtype=dtype), np.zeros((1, 2, 2), dtype=np.uint8))
    assert loss.dtype == dtype and np.isclose(loss.item(), np.log(3))


def test_takes_classifier_logits():
    z = np.log(np.array([[0.2, 0.8], [0.5, 0.5]]))
    assert np.isclose(softmax_cross_entropy(z, np.array([1, 0])).item(), -(np.log(0.8) + np.log(0.5)) / 2)


@pytest.mark.parametrize("backend_name", ["numpy", "numba"])
def test_argmax_classes_gives_each_pixels_class_as_a_host_array(backend_name):
    import minifcn
    from minifcn.functional import argmax_classes
    z = np.random.default_rng(0).standard_normal((2, 5, 3, 700)).astype(np.float32)
    before = minifcn.get_backend()
    minifcn.set_backend(backend_name)
    try:
        for scores in (Tensor(z), z):
            got = argmax_classes(scores)
            assert isinstance(got, np.ndarray) and got.shape == (2, 3, 700)
            np.testing.assert_array_equal(got, z.argmax(axis=1))
    finally:
        minifcn.set_backend(before)
