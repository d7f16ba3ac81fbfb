"""A stride-1 convolution as one matrix product per kernel tap, with no im2col copy.

Flatten the padded image row by row: (C, Hp, Wp) -> X of shape (C, Hp*Wp).
Output pixel (oh, ow) at tap (i, j) reads input pixel (oh + i*d, ow + j*d), which
sits at flat position (oh*Wp + ow) + (i*d*Wp + j*d). So for one tap, all outputs
read one contiguous slice of X, shifted by off = i*d*Wp + j*d:

    Y = sum over taps of  W_ij @ X[:, off : off + L],      W_ij = w[:, :, i, j]   (Cout x C)

where Y holds OH rows of Wp columns (the last Wp - OW of each row are "junk":
they wrap around into the next row, and are dropped). L = (OH-1)*Wp + OW.
The weight gradient reads the same slices:

    dW_ij = G @ X[:, off : off + L]^T              (G: the output gradient, junk columns zero)

Nine BLAS calls for a 3x3 kernel and no copy of the activations, where im2col
copies them nine times; the price is k*k passes over the output, which is the
better trade when the input has more channels than the output. (The input
gradient is a convolution too, of g with the flipped kernel: the Numba backend
routes it as one.)
"""

import numpy as np

from .gemm import matmul, sum_of_products


def _flat(x, padding):
    """The zero-padded image, flattened per channel: (N, C, Hp*Wp), and (Hp, Wp)."""
    ph, pw = padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else np.ascontiguousarray(x)
    return xp.reshape(xp.shape[0], xp.shape[1], -1), xp.shape[2:]


def _taps(kernel, dilation, Wp):
    (kh, kw), (dh, dw) = kernel, dilation
    return [(i, j, i * dh * Wp + j * dw) for i in range(kh) for j in range(kw)]


def conv2d(x, w, padding, dilation):
    """y = sum_ij W_ij @ X[:, off_ij : off_ij + L], junk columns dropped."""
    N, Cout = x.shape[0], w.shape[0]
    X, (Hp, Wp) = _flat(x, padding)
    OH, OW = Hp - dilation[0] * (w.shape[2] - 1), Wp - dilation[1] * (w.shape[3] - 1)
    L = (OH - 1) * Wp + OW
    y = np.zeros((N, Cout, OH * Wp), dtype=np.result_type(x.dtype, w.dtype))
    for i, j, off in _taps(w.shape[2:], dilation, Wp):
        y[:, :, :L] += matmul(w[:, :, i, j], X[:, :, off: off + L])
    return np.ascontiguousarray(y.reshape(N, Cout, OH, Wp)[:, :, :, :OW])


def _flat_grad(g, Wp):
    """The output gradient laid out like Y (Wp columns per row), its junk columns zero."""
    N, Cout, OH, OW = g.shape
    G = np.zeros((N, Cout, OH, Wp), dtype=g.dtype)
    G[..., :OW] = g
    return G.reshape(N, Cout, OH * Wp)


def conv2d_weight_grad(g, x, w_shape, padding, dilation):
    """dW_ij = sum over images of G @ X[:, off : off + L]^T."""
    X, (Hp, Wp) = _flat(x, padding)
    OH, OW = g.shape[2:]
    L = (OH - 1) * Wp + OW
    G = _flat_grad(g, Wp)[:, :, :L]
    dw = np.empty(w_shape, dtype=np.result_type(g.dtype, x.dtype))
    for i, j, off in _taps(w_shape[2:], dilation, Wp):
        dw[:, :, i, j] = sum_of_products(G, X[:, :, off: off + L].transpose(0, 2, 1))
    return dw
