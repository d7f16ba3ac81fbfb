import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minifcn import Tensor
from minifcn.functional import max_pool2d, pool_output_size


def naive_max_pool(x, k, s, p, ceil_mode):
    """Enumerate window starts: a window must start inside the image or its left padding."""
    N, C, H, W = x.shape

    def starts(n):
        last = n + 2 * p - k
        count = (math.ceil(last / s) if ceil_mode else last // s) + 1
        return [i * s - p for i in range(count) if i * s < n + p]

    ys, xs = starts(H), starts(W)
    out = np.empty((N, C, len(ys), len(xs)))
    for a, y0 in enumerate(ys):
        for b, x0 in enumerate(xs):
            out[:, :, a, b] = x[:, :, max(y0, 0):y0 + k, max(x0, 0):x0 + k].max(axis=(2, 3))
    return out


@given(st.integers(1, 4), st.integers(1, 3), st.integers(0, 2), st.booleans(), st.integers(1, 12),
       st.integers(1, 12), st.integers(0, 999))
def test_max_pool_equals_window_enumeration(k, s, p, ceil_mode, H, W, seed):
    p = min(p, k // 2)
    x = np.random.default_rng(seed).standard_normal((2, 3, H, W))
    expected = naive_max_pool(x, k, s, p, ceil_mode)
    if expected.size == 0:  # no window fits (floor mode on a too-small input)
        with pytest.raises(ValueError, match="larger than the padded input"):
            max_pool2d(x, k, s, p, ceil_mode)
    else:
        np.testing.assert_array_equal(max_pool2d(x, k, s, p, ceil_mode).data, expected)


@pytest.mark.parametrize("size,ceil,expected", [(7, True, 4), (7, False, 3), (500, True, 250), (375, True, 188),
                                                (375, False, 187), (1, True, 1)])
def test_ceil_mode_sizes_on_odd_inputs(size, ceil, expected):
    """The paper's 2x2/2 pools: 375 -> 188 in ceil mode (Caffe), 187 in floor mode."""
    assert pool_output_size(size, 2, 2, 0, ceil) == expected
    y = max_pool2d(np.zeros((1, 1, size, size + 1)), 2, 2, 0, ceil)
    assert y.shape[2] == expected


def test_pooling_counts_padding_in_output_size():
    y = max_pool2d(np.zeros((1, 1, 6, 6)), 3, 2, 1)
    assert y.shape == (1, 1, 3, 3)


def test_gradient_goes_to_the_max():
    x = Tensor(np.array([[[[1., 5., 2.], [3., 4., 9.], [0., 8., 7.]]]]), requires_grad=True)
    y = max_pool2d(x, 2, 2, ceil_mode=True)  # windows: [1 5;3 4] [2;9] [0 8] [7]
    assert y.data[0, 0].tolist() == [[5, 9], [8, 7]]
    y.backward(np.array([[[[10., 20.], [30., 40.]]]]))
    assert x.grad[0, 0].tolist() == [[0, 10, 0], [0, 0, 20], [0, 30, 40]]


def test_a_window_of_more_than_256_places_is_refused():
    """The arg-max's place in its window is kept in one byte: 17 x 17 = 289 places would wrap around."""
    max_pool2d(np.zeros((1, 1, 16, 16)), 16)  # 256 places: the largest that fits
    with pytest.raises(ValueError, match=r"kernel_size \(17, 17\) has 289 places; at most 256"):
        max_pool2d(np.zeros((1, 1, 20, 20)), 17)
