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

import numpy as np

from .autograd import array_module, as_array


def pair(value, name="value"):
    """(a, b) from an int or a pair; rejects anything else by name."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair, got {value!r}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


def conv_output_size(size, kernel, stride=1, padding=0, dilation=1):
    """floor((size + 2p - d(k-1) - 1) / s) + 1, the convolution arithmetic."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv_transpose_output_size(size, kernel, stride=1, padding=0, output_padding=0, dilation=1):
    """(size - 1)s - 2p + d(k-1) + output_padding + 1: the inverse of conv_output_size."""
    return (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def conv_output_hw(hw, kernel_size, stride=1, padding=0, dilation=1):
    """(OH, OW) of a convolution over an (H, W) map; every argument an int or a pair."""
    return tuple(conv_output_size(n, k, s, p, d) for n, k, s, p, d in
                 zip(hw, pair(kernel_size), pair(stride), pair(padding), pair(dilation)))


def _geometry(input_shape, kernel_size, stride, padding, dilation):
    kh, kw = pair(kernel_size, "kernel_size")
    sh, sw = pair(stride, "stride")
    ph, pw = pair(padding, "padding")
    dh, dw = pair(dilation, "dilation")
    if min(kh, kw, sh, sw, dh, dw) < 1 or min(ph, pw) < 0:
        raise ValueError(f"kernel_size {(kh, kw)}, stride {(sh, sw)} and dilation {(dh, dw)} must be >= 1 "
                         f"and padding {(ph, pw)} >= 0")
    if len(input_shape) != 4:
        raise ValueError(f"expected an (N, C, H, W) input, got shape {tuple(input_shape)}")
    H, W = input_shape[2:]
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1  # extent of the dilated kernel
    if eh > H + 2 * ph or ew > W + 2 * pw:
        raise ValueError(f"kernel extent {(eh, ew)} is larger than the padded input "
                         f"{(H + 2 * ph, W + 2 * pw)} (input shape {tuple(input_shape)}, padding {(ph, pw)})")
    OH = conv_output_size(H, kh, sh, ph, dh)
    OW = conv_output_size(W, kw, sw, pw, dw)
    return (kh, kw), (sh, sw), (ph, pw), (dh, dw), (OH, OW)


def im2col(x, kernel_size, stride=1, padding=0, dilation=1):
    """Unfold (N, C, H, W) into (N, C*kh*kw, OH*OW) patch columns (see module doc)."""
    x = as_array(x)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (OH, OW) = _geometry(x.shape, kernel_size, stride, padding, dilation)
    N, C = x.shape[:2]
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
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (OH, OW) = _geometry(input_shape, kernel_size, stride, padding, dilation)
    N, C, H, W = input_shape
    if cols.shape != (N, C * kh * kw, OH * OW):
        raise ValueError(f"cols of shape {cols.shape} do not fit input shape {tuple(input_shape)}: "
                         f"expected {(N, C * kh * kw, OH * OW)}")
    cols = cols.reshape(N, C, kh, kw, OH, OW)
    xp = array_module(cols).zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            xp[:, :, i * dh: i * dh + sh * OH: sh, j * dw: j * dw + sw * OW: sw] += cols[:, :, i, j]
    return xp[:, :, ph: ph + H, pw: pw + W]
