"""im2col and col2im: a convolution becomes one matrix product.

For an input ``x`` of shape (N, C, H, W), a kernel of size (kh, kw), stride s,
padding p and dilation d, output pixel (oh, ow) sees input pixels

    ih = oh * s - p + i * d,    iw = ow * s - p + j * d,    0 <= i < kh, 0 <= j < kw.

im2col copies them into a matrix of shape (N, C*kh*kw, OH*OW) whose row
``r = (c*kh + i)*kw + j`` holds channel c at kernel offset (i, j) for every
output position; its column ``l = oh*OW + ow``. A convolution with weights
``w`` of shape (Cout, C, kh, kw) is then ``w.reshape(Cout, -1) @ cols``.

The loops run over the kh*kw kernel offsets, not over the H*W pixels: for a
fixed (i, j) the pixels needed by all outputs form one strided slice of the
padded input, ``xp[:, :, i*d : i*d + s*OH : s, j*d : j*d + s*OW : s]``.

col2im is the adjoint (transpose) of im2col: the same loop with ``+=``, so a
pixel seen by several windows receives the sum of their contributions.
"""

from .arrays import array_module, as_array
from .conv_arithmetic import (ConvGeometry, conv_geometry, conv_output_hw, conv_output_size,  # noqa: F401
                              conv_transpose_output_size, pair)


def im2col(x, kernel_size, stride=1, padding=0, dilation=1):
    """Unfold (N, C, H, W) into (N, C*kh*kw, OH*OW) patch columns (see module doc)."""
    x = as_array(x)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (OH, OW) = conv_geometry(x.shape, kernel_size, stride, padding, dilation)
    N, C = x.shape[:2]
    if (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0):  # each column is one pixel: the image itself, no copy
        return x.reshape(N, C, OH * OW)
    xp = array_module(x).pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else x
    cols = array_module(x).empty((N, C, kh, kw, OH, OW), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = xp[:, :, i * dh: i * dh + sh * OH: sh, j * dw: j * dw + sw * OW: sw]
    return cols.reshape(N, C * kh * kw, OH * OW)


def col2im(cols, input_shape, kernel_size, stride=1, padding=0, dilation=1):
    """Fold patch columns back onto an (N, C, H, W) image, summing overlaps.

    The exact adjoint of ``im2col``: <im2col(x), c> == <x, col2im(c)>.
    """
    cols = as_array(cols)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (OH, OW) = conv_geometry(input_shape, kernel_size, stride, padding,
                                                                     dilation)
    N, C, H, W = input_shape
    if cols.shape != (N, C * kh * kw, OH * OW):
        raise ValueError(f"cols of shape {cols.shape} do not fit input shape {tuple(input_shape)}: "
                         f"expected {(N, C * kh * kw, OH * OW)}")
    if (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0):
        return cols.reshape(N, C, H, W)
    cols = cols.reshape(N, C, kh, kw, OH, OW)
    xp = array_module(cols).zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            xp[:, :, i * dh: i * dh + sh * OH: sh, j * dw: j * dw + sw * OW: sw] += cols[:, :, i, j]
    return xp[:, :, ph: ph + H, pw: pw + W]
