"""The ops as CUDA kernels through CuPy: one GPU thread per output element.

The index arithmetic is the reference's, read backwards from a flat thread
index. col2im gathers (each input pixel sums the columns that saw it) instead
of scattering, so it needs no atomics; max-pool's backward scatters with
atomicAdd, because overlapping windows may pick the same input.
Imported only when the "cupy" backend is chosen.
"""

import functools

import cupy as cp

from ..conv_arithmetic import conv_geometry
from . import reference

_IDX = "ptrdiff_t"

_im2col = cp.ElementwiseKernel(
    "raw T x, int32 C, int32 H, int32 W, int32 kh, int32 kw, int32 sh, int32 sw, int32 ph, int32 pw, "
    "int32 dh, int32 dw, int32 OH, int32 OW", "T col", f"""
    {_IDX} r = i;
    int ow = r % OW; r /= OW; int oh = r % OH; r /= OH; int j = r % kw; r /= kw; int ii = r % kh; r /= kh;
    int c = r % C; {_IDX} n = r / C;
    int ih = oh * sh - ph + ii * dh, iw = ow * sw - pw + j * dw;
    col = (ih >= 0 && ih < H && iw >= 0 && iw < W) ? x[((n * C + c) * H + ih) * W + iw] : (T)0;
    """, "minifcn_im2col")

_col2im = cp.ElementwiseKernel(
    "raw T cols, int32 C, int32 H, int32 W, int32 kh, int32 kw, int32 sh, int32 sw, int32 ph, int32 pw, "
    "int32 dh, int32 dw, int32 OH, int32 OW", "T out", f"""
    {_IDX} r = i;
    int w = r % W; r /= W; int h = r % H; r /= H; int c = r % C; {_IDX} n = r / C;
    T acc = 0;
    for (int ii = 0; ii < kh; ++ii) {{
        int t = h + ph - ii * dh;
        if (t < 0 || t % sh != 0 || t / sh >= OH) continue;
        int oh = t / sh;
        for (int j = 0; j < kw; ++j) {{
            int u = w + pw - j * dw;
            if (u < 0 || u % sw != 0 || u / sw >= OW) continue;
            acc += cols[((((n * C + c) * kh + ii) * kw + j) * OH + oh) * OW + u / sw];
        }}
    }}
    out = acc;
    """, "minifcn_col2im")

_max_pool = cp.ElementwiseKernel(
    "raw T x, int32 H, int32 W, int32 kh, int32 kw, int32 sh, int32 sw, int32 ph, int32 pw, int32 OH, int32 OW",
    "T y, uint8 argmax", f"""
    {_IDX} plane = i / (OH * OW);
    int oh = (i / OW) % OH, ow = i % OW;
    T best = 0; int where = 0; bool found = false;
    for (int ii = 0; ii < kh; ++ii) {{
        int ih = oh * sh - ph + ii;
        if (ih < 0 || ih >= H) continue;
        for (int j = 0; j < kw; ++j) {{
            int iw = ow * sw - pw + j;
            if (iw < 0 || iw >= W) continue;
            T v = x[(plane * H + ih) * W + iw];
            if (!found || v > best || (v != v && best == best)) {{ best = v; where = ii * kw + j; found = true; }}
        }}
    }}
    y = best; argmax = where;
    """, "minifcn_max_pool")

_max_pool_backward = cp.ElementwiseKernel(
    "T g, uint8 argmax, int32 H, int32 W, int32 kw, int32 sh, int32 sw, int32 ph, int32 pw, int32 OH, int32 OW",
    "raw T dx", f"""
    {_IDX} plane = i / (OH * OW);
    int oh = (i / OW) % OH, ow = i % OW;
    int ih = oh * sh - ph + argmax / kw, iw = ow * sw - pw + argmax % kw;
    atomicAdd(&dx[(plane * H + ih) * W + iw], g);
    """, "minifcn_max_pool_backward")

_relu = cp.ElementwiseKernel("T x", "T y", "y = x <= 0 ? (T)0 : x", "minifcn_relu")
_relu_backward = cp.ElementwiseKernel("T g, T y", "T dx", "dx = y > 0 ? g : (T)0", "minifcn_relu_backward")

_softmax_xent = cp.ElementwiseKernel(
    "raw T z, int64 t, raw float64 weight, int64 ignore, int32 K, int64 P", "float64 loss, float64 wsum", """
    ptrdiff_t n = i / P, p = i % P;
    if (t == ignore) { loss = 0; wsum = 0; }
    else {
        double m = z[(n * K) * P + p];
        for (int k = 1; k < K; ++k) m = max(m, (double)z[(n * K + k) * P + p]);
        double total = 0;
        for (int k = 0; k < K; ++k) total += exp((double)z[(n * K + k) * P + p] - m);
        double w = weight[t];
        loss = w * (m + log(total) - (double)z[(n * K + t) * P + p]);
        wsum = w;
    }
    """, "minifcn_softmax_xent")

_softmax_xent_backward = cp.ElementwiseKernel(
    "raw T z, int64 t, raw float64 weight, int64 ignore, int32 K, int64 P, float64 scale", "raw T dz", """
    ptrdiff_t n = i / P, p = i % P;
    if (t == ignore) { for (int k = 0; k < K; ++k) dz[(n * K + k) * P + p] = 0; }
    else {
        double m = z[(n * K) * P + p];
        for (int k = 1; k < K; ++k) m = max(m, (double)z[(n * K + k) * P + p]);
        double total = 0;
        for (int k = 0; k < K; ++k) total += exp((double)z[(n * K + k) * P + p] - m);
        double s = scale * weight[t];
        for (int k = 0; k < K; ++k)
            dz[(n * K + k) * P + p] = (T)(s * (exp((double)z[(n * K + k) * P + p] - m) / total - (k == t ? 1.0 : 0.0)));
    }
    """, "minifcn_softmax_xent_backward")


def im2col(x, kernel_size, stride=1, padding=0, dilation=1):
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (OH, OW) = conv_geometry(x.shape, kernel_size, stride, padding, dilation)
    N, C, H, W = x.shape
    out = cp.empty((N, C, kh, kw, OH, OW), dtype=x.dtype)
    _im2col(cp.ascontiguousarray(x), C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, OH, OW, out)
    return out.reshape(N, C * kh * kw, OH * OW)


def col2im(cols, input_shape, kernel_size, stride=1, padding=0, dilation=1):
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (OH, OW) = conv_geometry(input_shape, kernel_size, stride, padding,
                                                                     dilation)
    N, C, H, W = input_shape
    if cols.shape != (N, C * kh * kw, OH * OW):
        raise ValueError(f"cols of shape {cols.shape} do not fit input shape {tuple(input_shape)}")
    out = cp.empty((N, C, H, W), dtype=cols.dtype)
    _col2im(cp.ascontiguousarray(cols), C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, OH, OW, out)
    return out


# The convolution is the reference's im2col + GEMM (cuBLAS) with the kernels above for the unfolding.
conv2d = functools.partial(reference.conv2d, unfold=im2col)
conv2d_input_grad = functools.partial(reference.conv2d_input_grad, fold=col2im)
conv2d_weight_grad = functools.partial(reference.conv2d_weight_grad, unfold=im2col)


def max_pool(x, kernel, stride, padding, out_hw):
    y = cp.empty(x.shape[:2] + tuple(out_hw), dtype=x.dtype)
    argmax = cp.empty(y.shape, dtype=cp.uint8)
    _max_pool(cp.ascontiguousarray(x), x.shape[2], x.shape[3], *kernel, *stride, *padding, *out_hw, y, argmax)
    return y, argmax


def max_pool_backward(g, argmax, x_shape, kernel, stride, padding):
    dx = cp.zeros(x_shape, dtype=g.dtype)
    _max_pool_backward(cp.ascontiguousarray(g), argmax, x_shape[2], x_shape[3], kernel[1], *stride, *padding,
                       g.shape[2], g.shape[3], dx)
    return dx


def relu(x):
    return _relu(x)


def relu_backward(g, y):
    return _relu_backward(g, y)


def softmax_xent(z, t, weight, ignore_index):
    N, K, P = z.shape
    loss, wsum = _softmax_xent(cp.ascontiguousarray(z), t, weight.astype(cp.float64), ignore_index, K, P)
    return z.dtype.type(loss.sum().get()), z.dtype.type(wsum.sum().get())


def softmax_xent_backward(z, t, weight, ignore_index, scale):
    N, K, P = z.shape
    dz = cp.empty(z.shape, dtype=z.dtype)
    _softmax_xent_backward(cp.ascontiguousarray(z), t, weight.astype(cp.float64), ignore_index, K, P,
                           float(scale), dz)
    return dz
