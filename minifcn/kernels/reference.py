"""The reference ops: plain array code, written to mirror the math (see kernels/__init__.py).

They run on NumPy or CuPy arrays alike (``array_module``), so the CuPy backend
uses them for anything it has no CUDA kernel for.
"""

import operator

import numpy as np

from ..arrays import array_module
from ..conv_arithmetic import conv_geometry
from ..im2col import col2im, im2col  # the reference im2col lives with its derivation


# The convolution, the textbook way. With W = w.reshape(Cout, Cin*kh*kw) and cols = im2col(x),
#     y = W @ cols                        (one matrix product per image)
# and the chain rule through that product gives the two gradients:
#     dL/dcols = W^T @ g  ->  dL/dx = col2im(W^T @ g)      (col2im is im2col's adjoint)
#     dL/dW = g @ cols^T, summed over the images
# ``unfold``, ``fold``, ``product`` and ``sum_of_products`` let a backend run the same equations with its
# own im2col, col2im and matrix products.

def matmul(a, b):
    """a @ b: the fully connected layers' product (NumPy's or CuPy's BLAS)."""
    return a @ b


def conv2d(x, w, stride=1, padding=0, dilation=1, unfold=im2col, product=operator.matmul):
    """y = W @ im2col(x): every output pixel is a kernel-sized patch dotted with each filter."""
    N, Cout = x.shape[0], w.shape[0]
    OH, OW = conv_geometry(x.shape, w.shape[2:], stride, padding, dilation).out
    cols = unfold(x, w.shape[2:], stride, padding, dilation)
    return product(w.reshape(Cout, -1), cols).reshape(N, Cout, OH, OW)


def conv2d_input_grad(g, w, input_shape, stride=1, padding=0, dilation=1, fold=col2im, product=operator.matmul):
    """dL/dx = col2im(W^T @ g): each output's gradient spread back over the patch it read."""
    N, Cout = g.shape[:2]
    return fold(product(w.reshape(Cout, -1).T, g.reshape(N, Cout, -1)), input_shape, w.shape[2:], stride, padding, dilation)


def conv2d_weight_grad(g, x, w_shape, stride=1, padding=0, dilation=1, unfold=im2col, sum_of_products=None):
    """dL/dW = sum over images of g @ cols^T: each filter weight meets every pixel it multiplied."""
    N, Cout = g.shape[:2]
    cols = unfold(x, w_shape[2:], stride, padding, dilation)
    if sum_of_products is None:
        return (g.reshape(N, Cout, -1) @ cols.transpose(0, 2, 1)).sum(axis=0).reshape(w_shape)
    return sum_of_products(g.reshape(N, Cout, -1), cols.transpose(0, 2, 1)).reshape(w_shape)


def unfolds(op, input_shape, w_shape, stride=1, padding=0, dilation=1):
    """Whether conv ``op`` builds im2col columns at this shape: here always, so minifcn.workspace cuts large
    ones into pieces. A backend whose routes read the input in place answers for itself."""
    return True


def _padded(x, kernel, stride, padding, out_hw, fill=-np.inf):
    """x padded with ``fill`` on every side a window can reach (ceil mode may overhang bottom/right)."""
    (kh, kw), (sh, sw), (ph, pw), (OH, OW) = kernel, stride, padding, out_hw
    bottom, right = (OH - 1) * sh + kh - x.shape[2] - ph, (OW - 1) * sw + kw - x.shape[3] - pw
    return array_module(x).pad(x, ((0, 0), (0, 0), (ph, max(bottom, 0)), (pw, max(right, 0))),
                               constant_values=fill)


def _windows(xp, kernel, stride, out_hw):
    """(kh*kw, N, C, OH, OW): tap i*kw + j of every window."""
    (kh, kw), (sh, sw), (OH, OW) = kernel, stride, out_hw
    return array_module(xp).stack([xp[:, :, i: i + sh * OH: sh, j: j + sw * OW: sw]
                                   for i in range(kh) for j in range(kw)])


def max_pool(x, kernel, stride, padding, out_hw):
    """y[n, c, oh, ow] = max_{i,j} x[n, c, oh*sh - ph + i, ow*sw - pw + j]; argmax = the winning i*kw + j.

    The winner is the first maximum, a NaN beats any number, and it is always a real input, never the
    padding (PyTorch's rule): a window of -inf sends its gradient to its first real input."""
    windows = _windows(_padded(x, kernel, stride, padding, out_hw), kernel, stride, out_hw)
    real = _windows(_padded(array_module(x).ones(x.shape, bool), kernel, stride, padding, out_hw, False),
                    kernel, stride, out_hw)
    y = windows.max(axis=0)
    won = ((windows == y) | (windows != windows)) & real  # y is NaN exactly when the window holds one
    return y, won.argmax(axis=0).astype(np.uint8)


def max_pool_backward(g, argmax, x_shape, kernel, stride, padding):
    """Each output's gradient goes back to the one input that won its window."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    N, C, H, W = x_shape
    OH, OW = g.shape[2:]
    dxp = array_module(g).zeros((N, C, max(H + ph, (OH - 1) * sh + kh), max(W + pw, (OW - 1) * sw + kw)),
                                dtype=g.dtype)
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, i: i + sh * OH: sh, j: j + sw * OW: sw] += g * (argmax == i * kw + j)
    return dxp[:, :, ph: ph + H, pw: pw + W]


def relu(x):
    """max(x, 0)."""
    return array_module(x).maximum(x, 0)


def relu_backward(g, y):
    """d relu / dx is 1 where the output is positive, else 0."""
    return g * (y > 0)


def batch_norm_stats(x):
    """Per-channel mean and (biased) variance of (N, C, H, W) ``x`` over its N H W values."""
    return x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))


def batch_norm_forward(x, mean, invstd, gamma, beta):
    """x^ = (x - mean) invstd and y = gamma x^ + beta, per channel; returns (y, x^)."""
    shape = (1, -1, 1, 1)
    xhat = (x - mean.reshape(shape)) * invstd.reshape(shape)
    return xhat * gamma.reshape(shape) + beta.reshape(shape), xhat


def batch_norm_backward(g, xhat, gamma, invstd, training):
    """(dx, dgamma, dbeta). With the batch's own statistics (``training``) every output of a channel
    depends on every input of it; with M values per channel:

        dx = gamma invstd (g - mean(g) - x^ mean(g x^)),

    the two means being the paths through the batch mean and variance. With fixed statistics the
    layer is affine per channel: dx = gamma invstd g."""
    axes, shape = (0, 2, 3), (1, -1, 1, 1)
    dgamma, dbeta = (g * xhat).sum(axis=axes), g.sum(axis=axes)
    scale = (gamma * invstd).reshape(shape)
    if training:
        m = g.size // g.shape[1]
        dx = scale * (g - (dbeta / m).reshape(shape) - xhat * (dgamma / m).reshape(shape))
    else:
        dx = scale * g
    return dx.astype(g.dtype, copy=False), dgamma, dbeta


def _log_softmax(z):
    """log softmax over axis 1: z - m - log sum exp(z - m), m = max z, so no exponent overflows."""
    xp = array_module(z)
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))


def _pixel_weights(t, weight, ignore_index):
    """w[t] where the label is valid, 0 where it is ignored; and the labels made safe to index with."""
    valid = t != ignore_index
    safe = array_module(t).where(valid, t, 0)
    return weight[safe] * valid, safe


def argmax_classes(z):
    """Each pixel's class, argmax_k z[n, k, p]: the first k where there are ties, a NaN counting as the largest."""
    return z.argmax(axis=1)


def softmax_xent(z, t, weight, ignore_index):
    """sum_pixels -w[t] log softmax(z)[t], and sum_pixels w[t]."""
    w, safe = _pixel_weights(t, weight, ignore_index)
    picked = array_module(z).take_along_axis(_log_softmax(z), safe[:, None], axis=1)[:, 0]
    return -(w * picked).sum(), w.sum()


def softmax_xent_backward(z, t, weight, ignore_index, scale):
    """scale * w[t] * (softmax(z) - onehot(t)), recomputing softmax from z (nothing big kept)."""
    xp = array_module(z)
    w, safe = _pixel_weights(t, weight, ignore_index)
    p = xp.exp(_log_softmax(z))
    xp.put_along_axis(p, safe[:, None], xp.take_along_axis(p, safe[:, None], axis=1) - 1, axis=1)
    return p * (scale * w)[:, None].astype(z.dtype)
