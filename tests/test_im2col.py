import numpy as np
from hypothesis import given
from strategies import conv_geometry, random_arrays

from minifcn.functional import col2im, im2col


@given(conv_geometry())
def test_col2im_is_adjoint_of_im2col(g):
    rng, x, w, _ = random_arrays(g)
    args = (g["w_shape"][2:], g["stride"], g["padding"], g["dilation"])
    cols = im2col(x, *args)
    c = rng.standard_normal(cols.shape)
    assert np.isclose((cols * c).sum(), (x * col2im(c, x.shape, *args)).sum())


@given(conv_geometry())
def test_im2col_rows_are_channel_then_kernel_offset(g):
    """Row (c*kh + i)*kw + j, column oh*OW + ow holds x_padded[c, oh*s + i*d, ow*s + j*d]: non-square kernels too."""
    _, x, _, _ = random_arrays(g)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = g["w_shape"][2:], g["stride"], g["padding"], g["dilation"]
    cols = im2col(x, (kh, kw), (sh, sw), (ph, pw), (dh, dw))
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    OW = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    C = x.shape[1]
    for r in range(C * kh * kw):
        c, i, j = r // (kh * kw), (r // kw) % kh, r % kw
        for l in range(cols.shape[2]):
            oh, ow = divmod(l, OW)
            assert cols[:, r, l].tolist() == xp[:, c, oh * sh + i * dh, ow * sw + j * dw].tolist()


def test_im2col_keeps_float32():
    x = np.ones((1, 2, 5, 5), dtype=np.float32)
    assert im2col(x, 3, padding=1).dtype == np.float32
    assert col2im(im2col(x, 3), x.shape, 3).dtype == np.float32


def test_col2im_sums_overlapping_windows():
    """A 3x3 kernel with stride 1 sees the centre of a 3x3 image from all 9 windows (with padding 1)."""
    ones = np.ones((1, 1 * 9, 9))
    counts = col2im(ones, (1, 1, 3, 3), 3, padding=1)
    assert counts[0, 0].tolist() == [[4, 6, 4], [6, 9, 6], [4, 6, 4]]
