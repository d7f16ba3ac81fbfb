"""The ops as Numba CPU kernels: explicit loops, compiled, parallel over (image, channel) planes.

Each ``prange`` iteration owns one (n, c) plane of its output, so no two
threads ever write the same element and no atomics are needed. Bounds checks
replace padding: a pixel outside the image reads as 0 (convolution) or is
skipped (max-pool), so no padded copy of the input is made.
Compiled on first use per dtype and cached on disk (``cache=True``).
"""

import math

import numpy as np
from numba import njit, prange

from ..conv_arithmetic import conv_geometry
from . import numba_tiled, reference


@njit(cache=True)
def _valid_range(pad, offset, stride, size, out_size):
    """The outputs o with 0 <= o*stride - pad + offset < size: [lo, hi), so inner loops need no bounds test."""
    lo = max(0, -((offset - pad) // stride))
    hi = min(out_size, -((offset - pad - size) // stride))
    return lo, max(lo, hi)


@njit(parallel=True, cache=True)
def _im2col(x, kh, kw, sh, sw, ph, pw, dh, dw, OH, OW, out):
    N, C, H, W = x.shape
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        for i in range(kh):
            for j in range(kw):
                lo, hi = _valid_range(pw, j * dw, sw, W, OW)
                for oh in range(OH):
                    ih = oh * sh - ph + i * dh
                    row = out[n, c, i, j, oh]
                    if ih < 0 or ih >= H:
                        row[:] = 0
                        continue
                    row[:lo] = 0
                    row[hi:] = 0
                    for ow in range(lo, hi):
                        row[ow] = x[n, c, ih, ow * sw - pw + j * dw]


@njit(parallel=True, cache=True)
def _col2im(cols, kh, kw, sh, sw, ph, pw, dh, dw, out):
    N, C, H, W = out.shape
    OH, OW = cols.shape[4], cols.shape[5]
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        for i in range(kh):
            for j in range(kw):
                lo, hi = _valid_range(pw, j * dw, sw, W, OW)
                for oh in range(OH):
                    ih = oh * sh - ph + i * dh
                    if 0 <= ih < H:
                        for ow in range(lo, hi):
                            out[n, c, ih, ow * sw - pw + j * dw] += cols[n, c, i, j, oh, ow]


def im2col(x, kernel_size, stride=1, padding=0, dilation=1):
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (OH, OW) = conv_geometry(x.shape, kernel_size, stride, padding, dilation)
    N, C = x.shape[:2]
    if (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0):
        return reference.im2col(x, kernel_size)  # the image itself: nothing to copy
    out = np.empty((N, C, kh, kw, OH, OW), dtype=x.dtype)
    _im2col(np.ascontiguousarray(x), kh, kw, sh, sw, ph, pw, dh, dw, OH, OW, out)
    return out.reshape(N, C * kh * kw, OH * OW)


def col2im(cols, input_shape, kernel_size, stride=1, padding=0, dilation=1):
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (OH, OW) = conv_geometry(input_shape, kernel_size, stride, padding,
                                                                     dilation)
    N, C, H, W = input_shape
    if cols.shape != (N, C * kh * kw, OH * OW):
        raise ValueError(f"cols of shape {cols.shape} do not fit input shape {tuple(input_shape)}")
    if (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0):
        return reference.col2im(cols, input_shape, kernel_size)
    out = np.zeros((N, C, H, W), dtype=cols.dtype)
    _col2im(np.ascontiguousarray(cols).reshape(N, C, kh, kw, OH, OW), kh, kw, sh, sw, ph, pw, dh, dw, out)
    return out


# The convolution: the register-tiled kernels (numba_tiled.py) where they win, im2col (above) + BLAS
# elsewhere. Measured per layer shape by benchmarks/speed.py, which prints the table of routes.
ROUTE = None  # None: choose by shape; "tiled" or "gemm" forces one wherever it can run (tests, benchmarks)


def route(geo, in_channels, out_channels, weight_grad=False):
    """"tiled" for stride-1 kernels larger than 1x1 (3x3 only for the weight gradient), else "gemm"."""
    tiled = geo.stride == (1, 1) and geo.kernel != (1, 1) and (not weight_grad or geo.kernel == (3, 3))
    if not tiled or ROUTE is not None:
        return "tiled" if tiled and ROUTE == "tiled" else "gemm"
    return "tiled" if use_tiled(geo, in_channels, out_channels) else "gemm"


def use_tiled(geo, in_channels, out_channels):
    """Where the tiles beat BLAS: outputs at least a tile wide, and not too many channels."""
    return geo.out[1] >= numba_tiled.TILE_PIXELS // 2 and in_channels * out_channels <= TILED_MAX_CHANNEL_PRODUCT


TILED_MAX_CHANNEL_PRODUCT = 128 * 128


def conv2d(x, w, stride=1, padding=0, dilation=1):
    geo = conv_geometry(x.shape, w.shape[2:], stride, padding, dilation)
    if route(geo, w.shape[1], w.shape[0]) == "tiled":
        return numba_tiled.conv2d(x, w, geo.padding, geo.dilation)
    return reference.conv2d(x, w, stride, padding, dilation, unfold=im2col)


def conv2d_input_grad(g, w, input_shape, stride=1, padding=0, dilation=1):
    geo = conv_geometry(input_shape, w.shape[2:], stride, padding, dilation)
    if route(geo, w.shape[0], w.shape[1]) == "tiled":  # a convolution from Cout channels back to Cin
        return numba_tiled.conv2d_input_grad(g, w, input_shape, geo.padding, geo.dilation)
    return reference.conv2d_input_grad(g, w, input_shape, stride, padding, dilation, fold=col2im)


def conv2d_weight_grad(g, x, w_shape, stride=1, padding=0, dilation=1):
    geo = conv_geometry(x.shape, w_shape[2:], stride, padding, dilation)
    if route(geo, w_shape[1], w_shape[0], weight_grad=True) == "tiled":
        return numba_tiled.conv2d_weight_grad(g, x, w_shape, geo.padding, geo.dilation)
    return reference.conv2d_weight_grad(g, x, w_shape, stride, padding, dilation, unfold=im2col)


@njit(parallel=True, cache=True)
def _max_pool(x, kh, kw, sh, sw, ph, pw, y, argmax):
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        for oh in range(OH):
            for ow in range(OW):
                best, where = -np.inf, 0
                found = False
                for i in range(kh):
                    ih = oh * sh - ph + i
                    if 0 <= ih < H:
                        for j in range(kw):
                            iw = ow * sw - pw + j
                            if 0 <= iw < W:
                                v = x[n, c, ih, iw]
                                if not found or v > best or (v != v and best == best):
                                    best, where, found = v, i * kw + j, True
                y[n, c, oh, ow] = best
                argmax[n, c, oh, ow] = where


@njit(parallel=True, cache=True)
def _max_pool_backward(g, argmax, kw, sh, sw, ph, pw, dx):
    N, C, H, W = dx.shape
    OH, OW = g.shape[2], g.shape[3]
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        for oh in range(OH):
            for ow in range(OW):
                k = argmax[n, c, oh, ow]
                dx[n, c, oh * sh - ph + k // kw, ow * sw - pw + k % kw] += g[n, c, oh, ow]


def max_pool(x, kernel, stride, padding, out_hw):
    y = np.empty(x.shape[:2] + tuple(out_hw), dtype=x.dtype)
    argmax = np.empty(y.shape, dtype=np.uint8)
    _max_pool(np.ascontiguousarray(x), *kernel, *stride, *padding, y, argmax)
    return y, argmax


def max_pool_backward(g, argmax, x_shape, kernel, stride, padding):
    dx = np.zeros(x_shape, dtype=g.dtype)
    _max_pool_backward(np.ascontiguousarray(g), argmax, kernel[1], *stride, *padding, dx)
    return dx


@njit(parallel=True, cache=True)
def _relu(x, y):
    for k in prange(x.size):
        v = x[k]
        y[k] = 0 if v <= 0 else v  # NaN stays NaN, as in np.maximum


@njit(parallel=True, cache=True)
def _relu_backward(g, y, dx):
    for k in prange(g.size):
        dx[k] = g[k] if y[k] > 0 else 0


def relu(x):
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    _relu(x.reshape(-1), y.reshape(-1))
    return y


def relu_backward(g, y):
    dx = np.empty_like(g, order="C")
    _relu_backward(np.ascontiguousarray(g).reshape(-1), np.ascontiguousarray(y).reshape(-1), dx.reshape(-1))
    return dx


@njit(parallel=True, cache=True)
def _softmax_xent(z, t, weight, ignore_index, loss, wsum):
    N, K, P = z.shape
    for np_ in prange(N * P):
        n, p = np_ // P, np_ % P
        label = t[n, p]
        if label == ignore_index:
            loss[np_], wsum[np_] = 0.0, 0.0
            continue
        m = z[n, 0, p]
        for k in range(1, K):
            m = max(m, z[n, k, p])
        total = 0.0
        for k in range(K):
            total += math.exp(z[n, k, p] - m)
        w = weight[label]
        loss[np_] = w * (m + math.log(total) - z[n, label, p])
        wsum[np_] = w


@njit(parallel=True, cache=True)
def _softmax_xent_backward(z, t, weight, ignore_index, scale, dz):
    N, K, P = z.shape
    for np_ in prange(N * P):
        n, p = np_ // P, np_ % P
        label = t[n, p]
        if label == ignore_index:
            for k in range(K):
                dz[n, k, p] = 0
            continue
        m = z[n, 0, p]
        for k in range(1, K):
            m = max(m, z[n, k, p])
        total = 0.0
        for k in range(K):
            total += math.exp(z[n, k, p] - m)
        s = scale * weight[label]
        for k in range(K):
            dz[n, k, p] = s * (math.exp(z[n, k, p] - m) / total - (1.0 if k == label else 0.0))


def softmax_xent(z, t, weight, ignore_index):
    N, _, P = z.shape
    loss, wsum = np.empty(N * P, np.float64), np.empty(N * P, np.float64)
    _softmax_xent(np.ascontiguousarray(z), np.ascontiguousarray(t), weight.astype(np.float64), ignore_index,
                  loss, wsum)
    return z.dtype.type(loss.sum()), z.dtype.type(wsum.sum())


def softmax_xent_backward(z, t, weight, ignore_index, scale):
    dz = np.empty(z.shape, dtype=z.dtype)
    _softmax_xent_backward(np.ascontiguousarray(z), np.ascontiguousarray(t), weight.astype(np.float64),
                           ignore_index, float(scale), dz)
    return dz
