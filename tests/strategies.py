"""Hypothesis strategies and independent (loop) references shared by the tests."""

import numpy as np
from hypothesis import strategies as st


@st.composite
def conv_geometry(draw, max_size=8):
    """A valid 2-D convolution: shapes, stride, padding, dilation (odd and even sizes, non-square kernels)."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    min_h = max(1, dilation[0] * (kh - 1) + 1 - 2 * padding[0])
    min_w = max(1, dilation[1] * (kw - 1) + 1 - 2 * padding[1])
    H = draw(st.integers(min_h, max(min_h, max_size)))
    W = draw(st.integers(min_w, max(min_w, max_size)))
    N, Cin, Cout = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**16))
    return dict(x_shape=(N, Cin, H, W), w_shape=(Cout, Cin, kh, kw), stride=stride, padding=padding,
                dilation=dilation, seed=seed)


def random_arrays(geometry, dtype=np.float64):
    rng = np.random.default_rng(geometry["seed"])
    x = rng.standard_normal(geometry["x_shape"]).astype(dtype)
    w = rng.standard_normal(geometry["w_shape"]).astype(dtype)
    b = rng.standard_normal(geometry["w_shape"][0]).astype(dtype)
    return rng, x, w, b


def naive_conv2d(x, w, b, stride, padding, dilation):
    """Direct definition: loops over batch, output channel, output pixel and kernel offset."""
    N, Cin, H, W = x.shape
    Cout, _, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    OH = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    OW = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    y = np.zeros((N, Cout, OH, OW))
    for n in range(N):
        for o in range(Cout):
            for oh in range(OH):
                for ow in range(OW):
                    total = b[o]
                    for i in range(kh):
                        for j in range(kw):
                            ih, iw = oh * sh - ph + i * dh, ow * sw - pw + j * dw
                            if 0 <= ih < H and 0 <= iw < W:
                                total += x[n, :, ih, iw] @ w[o, :, i, j]
                    y[n, o, oh, ow] = total
    return y


def restoring_output_padding(g, out_hw):
    """output_padding that makes conv_transpose2d return the conv2d input's size.

    conv2d's floor drops up to stride-1 trailing rows; the transposed op must be told to add them back.
    """
    H, W = g["x_shape"][2:]
    sizes = []
    for n, m, k, s, p, d in zip((H, W), out_hw, g["w_shape"][2:], g["stride"], g["padding"], g["dilation"]):
        sizes.append(n - ((m - 1) * s - 2 * p + d * (k - 1) + 1))
    return tuple(sizes)


@st.composite
def transpose_geometry(draw, max_size=5):
    """A valid transposed convolution, any legal output_padding (< max(stride, dilation)) included.

    Stride 1 with dilation > 1 and a non-zero output_padding is the case where the convolution being
    transposed has more output rows than the transposed op's input: those rows must read as zero.
    """
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    output_padding = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    H, W = draw(st.integers(1, max_size)), draw(st.integers(1, max_size))
    out = [(n - 1) * s - 2 * p + d * (k - 1) + op + 1 for n, k, s, p, op, d in
           zip((H, W), (kh, kw), stride, padding, output_padding, dilation)]
    if min(out) < 1:  # padding larger than what the kernel spreads: an empty output, not a valid case
        padding = (0, 0)
    N, Cin, Cout = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return dict(x_shape=(N, Cin, H, W), w_shape=(Cin, Cout, kh, kw), stride=stride, padding=padding,
                output_padding=output_padding, dilation=dilation, seed=draw(st.integers(0, 2**16)))


def naive_conv_transpose2d(x, w, stride, padding, output_padding, dilation):
    """Direct definition: every input pixel adds its value times the kernel onto the output (a scatter).

    Input pixel (h, w) lands kernel tap (i, j) at output (h*s - p + i*d, w*s - p + j*d); taps that fall
    outside the output are dropped. output_padding only makes the output larger.
    """
    N, Cin, H, W = x.shape
    _, Cout, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    OH = (H - 1) * sh - 2 * ph + dh * (kh - 1) + output_padding[0] + 1
    OW = (W - 1) * sw - 2 * pw + dw * (kw - 1) + output_padding[1] + 1
    y = np.zeros((N, Cout, OH, OW))
    for n in range(N):
        for c in range(Cin):
            for h in range(H):
                for v in range(W):
                    for i in range(kh):
                        for j in range(kw):
                            oh, ow = h * sh - ph + i * dh, v * sw - pw + j * dw
                            if 0 <= oh < OH and 0 <= ow < OW:
                                y[n, :, oh, ow] += x[n, c, h, v] * w[c, :, i, j]
    return y
