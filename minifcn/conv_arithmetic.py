"""Convolution arithmetic: output sizes, and the geometry of one convolution (Dumoulin & Visin's guide).

For an input of size n, kernel k, stride s, padding p and dilation d, the
dilated kernel spans d(k - 1) + 1 pixels and fits at

    out = floor((n + 2p - d(k - 1) - 1) / s) + 1

positions. The transposed convolution runs this map backwards. The floor
forgets up to s - 1 trailing pixels, so it needs ``output_padding`` to say how
many to add back:

    n = (out - 1) s - 2p + d(k - 1) + output_padding + 1
"""

import numbers
from typing import NamedTuple


def pair(value, name="value"):
    """(a, b) from an int or a pair of ints; anything else (2.7, "2", a triple) is refused by name."""
    if type(value) is int:  # the common cases first: every convolution pass asks several times
        return value, value
    if type(value) is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int:
        return value
    values = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(values) != 2 or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return int(values[0]), int(values[1])


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


class ConvGeometry(NamedTuple):
    """One convolution's parameters, each an (h, w) pair, and the output size they give."""
    kernel: tuple
    stride: tuple
    padding: tuple
    dilation: tuple
    out: tuple


def conv_geometry(input_shape, kernel_size, stride=1, padding=0, dilation=1):
    """The ConvGeometry of a convolution over an (N, C, H, W) input, checked: bad values are named."""
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
    out = (conv_output_size(H, kh, sh, ph, dh), conv_output_size(W, kw, sw, pw, dw))
    return ConvGeometry((kh, kw), (sh, sw), (ph, pw), (dh, dw), out)
