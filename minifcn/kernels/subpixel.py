"""A strided convolution as one stride-1 convolution over the input's s x s phases (space-to-depth).

With stride s, output pixel oh reads padded-input pixels oh*s + i, i < k. Write
each tap as i = a*s + r (its phase r < s and its step a < A = ceil(k/s)):

    oh*s + i = (oh + a)*s + r

so the taps of phase r read the sub-image X_r[u] = xp[u*s + r] at u = oh + a:
a stride-1 convolution of X_r with the sub-kernel w_r[a] = w[a*s + r]. The
stride-s convolution is the sum of these s*s (in 2-D) small convolutions.
Stacking the phases as channels -- X[(r, q, c)] and w[o, (r, q, c)] -- makes
the sum one stride-1 convolution with s*s times the channels and an A x A
kernel. Taps past the kernel's end (a*s + r >= k) get zero weights.

The transposed convolution (an upsampler) is the adjoint: each output phase is
a stride-1 transposed convolution of the small map, interleaved back ("sub-pixel
convolution", Shi et al. 2016). For FCN's 16x16 upsampler with stride 8 this
turns an im2col 256 times the size of its input into 2x2 stride-1 problems.

Each function takes the stride-1 op it reduces to, so a backend routes those
as it likes, and may bring faster ``to_phases`` / ``from_phases`` copies than
the reshapes below.
"""

import numpy as np


def applies(geo):
    """Stride above 1, no dilation, and a kernel at least a stride wide (no all-zero phases)."""
    return (geo.stride != (1, 1) and geo.dilation == (1, 1)
            and geo.kernel[0] >= geo.stride[0] and geo.kernel[1] >= geo.stride[1])


def _steps(geo):
    return tuple(-(-k // s) for k, s in zip(geo.kernel, geo.stride))


def stack_kernel(w, geo):
    """(Cout, Cin, kh, kw) -> (Cout, sh*sw*Cin, Ah, Aw): the sub-kernel of each phase, phases as channels."""
    (sh, sw), (Ah, Aw) = geo.stride, _steps(geo)
    Cout, Cin, kh, kw = w.shape
    padded = np.zeros((Cout, Cin, Ah * sh, Aw * sw), dtype=w.dtype)
    padded[:, :, :kh, :kw] = w
    return padded.reshape(Cout, Cin, Ah, sh, Aw, sw).transpose(0, 3, 5, 1, 2, 4).reshape(Cout, sh * sw * Cin, Ah, Aw)


def unstack_kernel(stacked, geo, w_shape):
    """The inverse of stack_kernel (taps past the kernel's end dropped)."""
    (sh, sw), (Ah, Aw) = geo.stride, _steps(geo)
    Cout, Cin, kh, kw = w_shape
    full = stacked.reshape(Cout, sh, sw, Cin, Ah, Aw).transpose(0, 3, 4, 1, 5, 2).reshape(Cout, Cin, Ah * sh, Aw * sw)
    return np.ascontiguousarray(full[:, :, :kh, :kw])


def _phase_size(geo):
    """(U, V): the phase images hold the OH + A - 1 rows (and columns) the stride-1 convolution reads."""
    return tuple(o + a - 1 for o, a in zip(geo.out, _steps(geo)))


def space_to_depth(x, geo):
    """The padded input split into its phases, stacked as channels: (N, sh*sw*C, U, V)."""
    (sh, sw), (ph, pw), (U, V) = geo.stride, geo.padding, _phase_size(geo)
    N, C, H, W = x.shape
    grid = np.zeros((N, C, U * sh, V * sw), dtype=x.dtype)  # rows past the padded input meet zero weights
    h, w = max(min(H, U * sh - ph), 0), max(min(W, V * sw - pw), 0)
    grid[:, :, ph: ph + h, pw: pw + w] = x[:, :, :h, :w]
    return grid.reshape(N, C, U, sh, V, sw).transpose(0, 3, 5, 1, 2, 4).reshape(N, sh * sw * C, U, V)


def depth_to_space(stacked, geo, input_shape):
    """The inverse: phases interleaved back onto the padded grid, then the padding cropped off."""
    (sh, sw), (ph, pw), (U, V) = geo.stride, geo.padding, _phase_size(geo)
    N, C, H, W = input_shape
    grid = stacked.reshape(N, sh, sw, C, U, V).transpose(0, 3, 4, 1, 5, 2).reshape(N, C, U * sh, V * sw)
    out = np.zeros(input_shape, dtype=stacked.dtype)
    h, w = max(min(H, U * sh - ph), 0), max(min(W, V * sw - pw), 0)
    out[:, :, :h, :w] = grid[:, :, ph: ph + h, pw: pw + w]
    return out


def phase_shape(geo, input_shape):
    """The shape of ``space_to_depth``'s result for an input of ``input_shape``."""
    N, C = input_shape[:2]
    return (N, geo.stride[0] * geo.stride[1] * C) + _phase_size(geo)


def conv2d(x, w, geo, conv1, to_phases=space_to_depth):
    """The stride-s convolution: conv1 (stride 1, no padding) of the phases with the stacked sub-kernels."""
    return conv1(to_phases(x, geo), stack_kernel(w, geo))


def conv2d_input_grad(g, w, input_shape, geo, input_grad1, from_phases=depth_to_space):
    """Its input gradient (the transposed convolution): each phase's, interleaved."""
    phases = input_grad1(g, stack_kernel(w, geo), phase_shape(geo, input_shape))
    return from_phases(phases, geo, input_shape)


def conv2d_weight_grad(g, x, w_shape, geo, weight_grad1, to_phases=space_to_depth):
    """Its weight gradient: the stacked sub-kernels' gradient, unstacked."""
    (sh, sw), (Ah, Aw) = geo.stride, _steps(geo)
    stacked_shape = (w_shape[0], sh * sw * w_shape[1], Ah, Aw)
    return unstack_kernel(weight_grad1(g, to_phases(x, geo), stacked_shape), geo, w_shape)
