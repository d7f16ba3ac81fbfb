"""Convolutions within a memory budget: any backend's conv ops, run on pieces that fit.

im2col columns are kh*kw times the image they unfold: a 3x3 convolution over one
500x500 map of 64 channels unfolds into 576 MB. The wrappers below cut the
work into pieces whose columns stay under ``backend.workspace_limit()`` (128 MiB
unless set): whole images while they fit, else blocks of output rows of one
image. Output rows r0 .. r1-1 read the padded input's rows r0*s .. (r1-1)*s +
d(kh-1), so each piece is a slice of the padded input, convolved with no
further padding. When one piece holds everything, or the backend's route for
this shape makes no columns (``unfolds``), the op gets the call as it came.

Padding wider than a stride-1 kernel's reach (FCN's pad 100 before conv1_1) leaves a border of outputs
whose windows read nothing but zeros. Those outputs are 0, and their gradients reach only the padding, so
the three ops compute the inner block alone, with the padding cut to the reach d(k - 1), and place it
(``_zero_border``). At pad 100 on a 128-px input, that is 130 of the 326 rows and columns.
"""

import numpy as np

from . import backend
from .arrays import array_module
from .conv_arithmetic import conv_geometry


def pieces(input_shape, geometry, channels, itemsize):
    """[(batch slice, output-row slice, padded-input-row slice)] whose columns fit in the workspace.

    ``channels`` and ``itemsize`` size the columns: channels*kh*kw*OW values per output row.
    """
    N = input_shape[0]
    (kh, kw), (sh, _), _, (dh, _), (OH, OW) = geometry
    rows = max(1, backend.workspace_limit() // max(channels * kh * kw * OW * itemsize, 1))
    if rows >= OH:  # whole images, as many at a time as fit
        items = max(1, rows // OH)
        spans = [(slice(n, min(n + items, N)), slice(0, OH)) for n in range(0, N, items)]
    else:  # one image at a time, in blocks of output rows
        spans = [(slice(n, n + 1), slice(r, min(r + rows, OH))) for n in range(N) for r in range(0, OH, rows)]
    return [(ns, rs, slice(rs.start * sh, (rs.stop - 1) * sh + dh * (kh - 1) + 1)) for ns, rs in spans]


def whole(op, plan, input_shape, w_shape, geo):
    """Whether ``op`` runs in one call: it fits, or it unfolds nothing (a padded copy is input-sized)."""
    return len(plan) == 1 or not backend.ops().unfolds(op, tuple(input_shape), tuple(w_shape), geo.stride,
                                                         geo.padding, geo.dilation)


def padded(x, padding):
    ph, pw = padding
    return array_module(x).pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else x


def _zero_border(geo):
    """(the padding that computes the outputs whose windows touch the input, where those lie in the whole
    output, how many rows and columns they are), or None where every output's window touches it. Stride 1
    only: output row r reads padded rows r ... r + d(k - 1), so past a padding of d(k - 1) the outer rows
    read only zeros, as many at the bottom as at the top."""
    if geo.stride != (1, 1):
        return None
    inner = tuple(min(p, d * (k - 1)) for p, k, d in zip(geo.padding, geo.kernel, geo.dilation))
    if inner == geo.padding:
        return None
    offset = tuple(p - q for p, q in zip(geo.padding, inner))
    return inner, offset, tuple(n - 2 * o for n, o in zip(geo.out, offset))


def _inner(a, offset, shape):
    """The block of ``a``'s last two axes at ``offset`` that is ``shape`` large."""
    return a[:, :, offset[0]: offset[0] + shape[0], offset[1]: offset[1] + shape[1]]


def conv2d(x, w, stride=1, padding=0, dilation=1):
    """The backend's conv2d, piece by piece: y[piece] = conv2d(padded x[piece rows], w)."""
    geo = conv_geometry(x.shape, w.shape[2:], stride, padding, dilation)
    border = _zero_border(geo)
    if border:
        inner, offset, block = border
        y = array_module(x).zeros((x.shape[0], w.shape[0]) + geo.out, dtype=np.result_type(x.dtype, w.dtype))
        _inner(y, offset, block)[...] = conv2d(x, w, 1, inner, geo.dilation)
        return y
    plan = pieces(x.shape, geo, x.shape[1], x.itemsize)
    if whole("conv2d", plan, x.shape, w.shape, geo):
        return backend.ops().conv2d(x, w, geo.stride, geo.padding, geo.dilation)
    xp = padded(x, geo.padding)
    y = array_module(x).empty((x.shape[0], w.shape[0]) + geo.out, dtype=np.result_type(x.dtype, w.dtype))
    for ns, rs, rows in plan:
        y[ns, :, rs] = backend.ops().conv2d(xp[ns, :, rows], w, geo.stride, 0, geo.dilation)
    return y


def conv2d_input_grad(g, w, input_shape, stride=1, padding=0, dilation=1):
    """The backend's input gradient, piece by piece, each piece's fold added into its padded rows."""
    geo = conv_geometry(input_shape, w.shape[2:], stride, padding, dilation)
    border = _zero_border(geo)
    if border:
        inner, offset, block = border
        return conv2d_input_grad(_inner(g, offset, block), w, input_shape, 1, inner, geo.dilation)
    plan = pieces(input_shape, geo, input_shape[1], g.itemsize)
    if whole("conv2d_input_grad", plan, input_shape, w.shape, geo):
        return backend.ops().conv2d_input_grad(g, w, tuple(input_shape), geo.stride, geo.padding, geo.dilation)
    (ph, pw), (H, W) = geo.padding, input_shape[2:]
    dxp = array_module(g).zeros((input_shape[0], input_shape[1], H + 2 * ph, W + 2 * pw),
                                dtype=np.result_type(g.dtype, w.dtype))
    for ns, rs, rows in plan:
        piece = dxp[ns, :, rows]
        piece += backend.ops().conv2d_input_grad(g[ns, :, rs], w, piece.shape, geo.stride, 0, geo.dilation)
    return dxp[:, :, ph: ph + H, pw: pw + W]


def conv2d_weight_grad(g, x, w_shape, stride=1, padding=0, dilation=1):
    """The backend's weight gradient, summed over the pieces."""
    geo = conv_geometry(x.shape, w_shape[2:], stride, padding, dilation)
    border = _zero_border(geo)
    if border:
        inner, offset, block = border
        return conv2d_weight_grad(_inner(g, offset, block), x, w_shape, 1, inner, geo.dilation)
    plan = pieces(x.shape, geo, x.shape[1], x.itemsize)
    if whole("conv2d_weight_grad", plan, x.shape, w_shape, geo):
        return backend.ops().conv2d_weight_grad(g, x, tuple(w_shape), geo.stride, geo.padding, geo.dilation)
    xp = padded(x, geo.padding)
    dw = array_module(g).zeros(w_shape, dtype=np.result_type(g.dtype, x.dtype))
    for ns, rs, rows in plan:
        dw += backend.ops().conv2d_weight_grad(g[ns, :, rs], xp[ns, :, rows], tuple(w_shape), geo.stride, 0,
                                               geo.dilation)
    return dw
