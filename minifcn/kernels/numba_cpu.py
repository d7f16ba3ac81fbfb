"""The ops as Numba CPU kernels: explicit loops, compiled, parallel over (image, channel) planes.

Each ``prange`` iteration owns one (n, c) plane of its output, so no two
threads ever write the same element and no atomics are needed. Bounds checks
replace padding: a pixel outside the image reads as 0 (convolution) or is
skipped (max-pool), so no padded copy of the input is made.
Compiled on first use per dtype and cached on disk (``cache=True``).

An index known to be non-negative is cast to unsigned (``np.uint64``) in the
inner loops: Numba then drops its test for Python's negative indices, which
otherwise keeps LLVM from vectorising the loop (im2col of 64 channels at 23x23
went from 1.19 to 0.45 ms, col2im from 1.17 to 0.33, from_phases from 17.8 to 6).
"""

import math
import sys

import numba
import numpy as np
from llvmlite import ir as llvm_ir
from numba import carray, njit, prange, types
from numba.extending import intrinsic

from .. import backend
from ..conv_arithmetic import conv_geometry
from . import autotune, gemm, numba_tiled, precompile, reference, shifted_gemm, side_by_side, subpixel, winograd
from .numba_tiled import stack_array

FLOAT_DTYPES = (np.float32, np.float64)  # Numba compiles no float16 arithmetic
UNCOMPILED = ("matmul",)  # BLAS, not Numba: any dtype, nothing to compile first
matmul = gemm.matmul


def prepare(op, dtype):
    """The backend calls this before each op: the first of a dtype compiles every kernel (kernels/precompile.py)."""
    precompile.ensure(sys.modules[__name__], op, dtype)


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
                        row[np.uint64(ow)] = x[n, c, ih, np.uint64(ow * sw - pw + j * dw)]


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
                            out[n, c, ih, np.uint64(ow * sw - pw + j * dw)] += cols[n, c, i, j, oh, np.uint64(ow)]


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


# The convolution, by route (each tested against the reference; benchmarks/speed.py prints the table):
#   "tiled"    -- stride 1: the register-tiled loops (numba_tiled.py), for thin layers on long rows
#   "tiled2"   -- the forward tiles two output rows tall (only where measured faster: not in the rule);
#                 "tiled16" 16 output channels wide, "tiled6" / "tiled4" over 2-3 vectors (FORWARD_TILES)
#   "shifted"  -- stride 1: one BLAS product per kernel tap, no im2col copy (shifted_gemm.py), when the
#                 input has more channels than the output
#   "winograd" -- 3x3, stride 1, undilated, 128 channels in and out (64 on large maps): F(2x2, 3x3),
#                 16 BLAS products of 16/36 the multiply-adds (winograd.py), forward and weight gradient
#                 (the rule: forward only)
#   "im2col"   -- the textbook, with this module's im2col and col2im: 1x1 kernels (a reshape), small maps
#   "subpixel" -- stride s: one stride-1 convolution over the s x s phases (subpixel.py), routed again
# The input gradient is col2im(W^T g) ("col2im"), or at stride 1 the forward convolution of g with the
# flipped kernel ("flipped"), itself routed as a forward pass; strided, over the phases ("subpixel").
# Which route runs is measured once per shape on this CPU (autotune.py); the by-shape rule below decides
# where that is off, and ROUTE forces one route wherever it can run (tests, benchmarks).
ROUTES = ("tiled", "tiled2", "tiled16", "tiled6", "tiled4", "side", "side2", "side16", "side6", "side4", "shifted",
          "winograd", "im2col", "subpixel", "col2im", "flipped")  # "sideN": tiledN over images side by side
ROUTE = None  # None: measured, or by shape; "tiled", "shifted", "winograd", "im2col": that route where it can run


def route(geo, in_channels, out_channels, weight_grad=False):
    """The by-shape rule for a convolution pass (forward, or weight gradient): its geometry and channels."""
    if ROUTE == "im2col" or geo.kernel == (1, 1) and geo.stride == (1, 1):
        return "im2col"
    if geo.stride != (1, 1):
        return "subpixel" if subpixel.applies(geo) else "im2col"
    tiles_fit = geo.kernel == (3, 3) if weight_grad else True
    if ROUTE == "winograd" and winograd.applies(geo):
        return "winograd"
    if ROUTE is not None:
        return "tiled" if ROUTE == "tiled" and tiles_fit else "shifted"
    if not weight_grad and use_winograd(geo, in_channels, out_channels):
        return "winograd"
    if tiles_fit and use_tiled(geo.out[1], in_channels * out_channels, weight_grad):
        return "tiled"
    big_map = geo.out[0] * geo.out[1] >= 64  # a BLAS call per tap pays only on maps this large
    return "shifted" if big_map and (weight_grad or in_channels > out_channels) else "im2col"


def use_winograd(geo, in_channels, out_channels):
    """Where Winograd beats every other route forward, as measured on a 2-core AMD Zen 4 (float32): 128-512
    channels on maps from 28^2 (1.4-1.6x faster than the tiles); on 14^2 im2col is ahead."""
    wide = min(in_channels, out_channels) >= winograd.WIDE
    return winograd.applies(geo) and wide and geo.out[0] * geo.out[1] >= 28 * 28


def use_tiled(out_width, channel_product, weight_grad=False):
    """Where the tiles beat BLAS, as measured on a 2-core AMD Zen 4 (float32): the rule used without autotune.

    The tiles lose when rows are short (a 21-pixel row fills 21 of the 32 lanes of two tiles) and when
    layers are wide (from 256 channels BLAS is at 75-95 % of peak, and a tile's weights leave L1). The
    weight gradient keeps its 27 partial sums per lane busy only on thin layers or large maps.
    """
    lanes_used = out_width / (-(-out_width // numba_tiled.WIDTH) * numba_tiled.WIDTH)
    if lanes_used < 0.8 or channel_product > 128 * 128:
        return False
    return not weight_grad or channel_product <= 32 * 32 or out_width >= 64


def candidates(op, input_shape, geo, w_shape, itemsize):
    """The routes that can compute ``op`` at this geometry within the workspace limit (im2col columns
    that would not fit are never tried: minifcn.workspace cut the work assuming they are not made)."""
    cout, cin, kh, kw = w_shape
    fits = input_shape[0] * cin * kh * kw * geo.out[0] * geo.out[1] * itemsize <= backend.workspace_limit()
    unfold = "col2im" if op == "conv2d_input_grad" else "im2col"
    if geo.stride != (1, 1):
        ways = ["subpixel"] if subpixel.applies(geo) else []
        return ways + [unfold] if fits or not ways else ways
    if geo.kernel == (1, 1) and op != "conv2d_input_grad":
        return ["im2col"]  # a reshape and one product
    if op == "conv2d_input_grad":
        ways = ["flipped"]
    else:
        ways = numba_tiled.forward_tiles() if op == "conv2d" else ["tiled"] if geo.kernel == (3, 3) else []
        lanes = numba_tiled.WIDTH if op == "conv2d" else numba_tiled.GRAD_WIDTH
        if ways and side_by_side.worth(input_shape, geo, lanes):
            ways += [way.replace("tiled", "side") for way in ways]
        ways.append("shifted")
        pixels = geo.out[0] * geo.out[1]
        if op != "conv2d_input_grad" and winograd.applies(geo) and winograd.worth(cin, cout, pixels):
            ways.append("winograd")
    return ways + [unfold] if fits else ways


def _rule(op, geo, w_shape):
    cout, cin = w_shape[:2]
    if op != "conv2d_input_grad":
        return route(geo, cin, cout, weight_grad=op == "conv2d_weight_grad")
    if geo.stride != (1, 1) and subpixel.applies(geo) and ROUTE != "im2col":
        return "subpixel"
    return "col2im" if _flipped(geo, w_shape) is None else "flipped"


def _key(op, input_shape, geo, w_shape, dtype):
    """What a measurement holds for: the pass, dtype, input and kernel shapes, stride, padding, dilation."""
    return " ".join([op, np.dtype(dtype).name, "x".join(map(str, input_shape)), "x".join(map(str, w_shape)),
                     *(f"{a},{b}" for a, b in (geo.stride, geo.padding, geo.dilation))])


def _routed(op, input_shape, geo, w_shape, dtype, run):
    """run(route) by the route measured fastest for this pass on this CPU, or by the rule (see autotune)."""
    rule = _rule(op, geo, w_shape)
    if ROUTE is not None:
        return run(rule)
    ways = candidates(op, input_shape, geo, w_shape, np.dtype(dtype).itemsize)
    key = _key(op, input_shape, geo, w_shape, dtype)
    return autotune.choose(key, numba.get_num_threads(), ways, run, rule, ROUTES, np.dtype(dtype).name)[1]


def conv2d(x, w, stride=1, padding=0, dilation=1):
    geo = conv_geometry(x.shape, w.shape[2:], stride, padding, dilation)

    def run(way):
        if way in numba_tiled.FORWARD_TILES:
            channels, rows, vectors = numba_tiled.FORWARD_TILES[way]
            return numba_tiled.conv2d(x, w, geo.padding, geo.dilation, rows, channels=channels, vectors=vectors)
        if way.startswith("side"):
            channels, rows, vectors = numba_tiled.FORWARD_TILES[way.replace("side", "tiled")]
            return side_by_side.conv2d(x, w, geo.padding, geo.dilation, rows, channels, vectors)
        if way == "shifted":
            return shifted_gemm.conv2d(x, w, geo.padding, geo.dilation)
        if way == "winograd":
            prepare("winograd", np.result_type(x.dtype, w.dtype))
            return winograd.conv2d(x, w, geo.padding)
        if way == "subpixel":
            return subpixel.conv2d(x, w, geo, conv2d, to_phases)
        return reference.conv2d(x, w, stride, padding, dilation, unfold=im2col, product=gemm.matmul)
    return _routed("conv2d", x.shape, geo, w.shape, np.result_type(x.dtype, w.dtype), run)


def conv2d_input_grad(g, w, input_shape, stride=1, padding=0, dilation=1):
    """Strided: over the phases. Stride 1: a forward convolution of g where that is cheaper (``_flipped``)."""
    geo = conv_geometry(input_shape, w.shape[2:], stride, padding, dilation)

    def run(way):
        if way == "subpixel":
            return subpixel.conv2d_input_grad(g, w, input_shape, geo, conv2d_input_grad, from_phases)
        if way == "flipped":
            (c0, c1), pads, _ = _flipped(geo, w.shape, always=True)
            cropped = g[:, :, c0: g.shape[2] - c0, c1: g.shape[3] - c1]
            flipped = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
            return conv2d(cropped, flipped, 1, pads, geo.dilation)
        return reference.conv2d_input_grad(g, w, input_shape, stride, padding, dilation, fold=col2im,
                                           product=gemm.matmul)
    return _routed("conv2d_input_grad", input_shape, geo, w.shape, np.result_type(g.dtype, w.dtype), run)


def _flipped(geo, w_shape, always=False):
    """At stride 1, dx is the convolution of g -- padded by d(k-1) - p, or cropped where that is negative --
    with the kernel flipped and its channels swapped: dx[c] = sum_o flip(w[o, c]) * g[o]. That costs
    im2col columns of g's Cout channels, where col2im(W^T g) costs columns of dx's Cin: the rule takes the
    smaller, or the flipped one wherever the tiles run it. Returns (crop of g, padding, geometry of that
    forward convolution), or None where the rule (unless ``always``) takes col2im(W^T g)."""
    if geo.stride != (1, 1) or ROUTE == "im2col" and not always:
        return None
    pads = [d * (k - 1) - p for k, p, d in zip(geo.kernel, geo.padding, geo.dilation)]
    crop, pad = tuple(max(-q, 0) for q in pads), tuple(max(q, 0) for q in pads)
    g_hw = [n - 2 * c for n, c in zip(geo.out, crop)]
    forward = conv_geometry((1, w_shape[0], *g_hw), geo.kernel, 1, pad, geo.dilation)
    cout, cin = w_shape[:2]
    if always or ROUTE is not None or cout <= cin or route(forward, cout, cin) == "tiled":
        return crop, pad, forward
    return None


def unfolds(op, input_shape, w_shape, stride=1, padding=0, dilation=1):
    """Whether ``op`` builds im2col columns here by the by-shape rule, the memory that minifcn.workspace
    bounds by cutting the work into pieces. The tiled and shifted-GEMM routes read the input where it
    lies, and Winograd's transforms it a few hundred blocks at a time; strided convolutions are routed
    again per phase, so they count as unfolding. (A pass run whole is measured only over the routes whose
    columns fit, see ``candidates``.)"""
    geo = conv_geometry(input_shape, w_shape[2:], stride, padding, dilation)
    cout, cin = w_shape[:2]
    if op == "conv2d_input_grad":
        flipped = _flipped(geo, w_shape)
        if flipped is None:
            return True
        geo, cin, cout = flipped[2], cout, cin
    return route(geo, cin, cout, weight_grad=op == "conv2d_weight_grad") not in ("tiled", "shifted", "winograd")


def conv2d_weight_grad(g, x, w_shape, stride=1, padding=0, dilation=1):
    geo = conv_geometry(x.shape, w_shape[2:], stride, padding, dilation)

    def run(way):
        if way == "tiled":
            return numba_tiled.conv2d_weight_grad(g, x, w_shape, geo.padding, geo.dilation)
        if way == "side":
            return side_by_side.conv2d_weight_grad(g, x, w_shape, geo.padding, geo.dilation)
        if way == "shifted":
            return shifted_gemm.conv2d_weight_grad(g, x, w_shape, geo.padding, geo.dilation)
        if way == "winograd":
            prepare("winograd", np.result_type(g.dtype, x.dtype))
            return winograd.conv2d_weight_grad(g, x, w_shape, geo.padding)
        if way == "subpixel":
            return subpixel.conv2d_weight_grad(g, x, w_shape, geo, conv2d_weight_grad, to_phases)
        return reference.conv2d_weight_grad(g, x, w_shape, stride, padding, dilation, unfold=im2col,
                                            sum_of_products=gemm.sum_of_products)
    return _routed("conv2d_weight_grad", x.shape, geo, w_shape, np.result_type(g.dtype, x.dtype), run)


@njit(parallel=True, cache=True)
def _to_phases(x, sh, sw, ph, pw, out):
    """out[n, (r*sw + q)*C + c, u, v] = x[n, c, u*sh + r - ph, v*sw + q - pw], 0 outside x."""
    N, C, H, W = x.shape
    U, V = out.shape[2], out.shape[3]
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        for r in range(sh):
            for q in range(sw):
                plane = out[n, (r * sw + q) * C + c]
                lo, hi = _valid_range(pw, q, sw, W, V)  # the v whose column v*sw + q - pw lies in x
                for u in range(U):
                    h, row = u * sh + r - ph, plane[u]
                    if h < 0 or h >= H:
                        row[:] = 0
                        continue
                    row[:lo] = 0
                    row[hi:] = 0
                    for v in range(lo, hi):
                        row[np.uint64(v)] = x[n, c, h, np.uint64(v * sw + q - pw)]


@njit(parallel=True, cache=True)
def _from_phases(phases, sh, sw, ph, pw, out):
    """The inverse: out[n, c, u*sh + r - ph, v*sw + q - pw] = phases[n, (r*sw + q)*C + c, u, v]."""
    N, C, H, W = out.shape
    U, V = phases.shape[2], phases.shape[3]
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        for h in range(H):
            u, r = (h + ph) // sh, (h + ph) % sh
            row = out[n, c, h]
            if u >= U:
                row[:] = 0
                continue
            row[max(0, V * sw - pw):] = 0  # the columns past the last phase column
            for q in range(sw):  # phase q fills every sw-th column, read as one contiguous row
                src = phases[n, (r * sw + q) * C + c, u]
                lo, hi = _valid_range(pw, q, sw, W, V)
                for v in range(lo, hi):
                    row[np.uint64(v * sw + q - pw)] = src[np.uint64(v)]


def to_phases(x, geo):
    """subpixel.space_to_depth in one pass."""
    out = np.empty(subpixel.phase_shape(geo, x.shape), dtype=x.dtype)
    _to_phases(np.ascontiguousarray(x), *geo.stride, *geo.padding, out)
    return out


def from_phases(phases, geo, input_shape):
    """subpixel.depth_to_space in one pass."""
    out = np.empty(input_shape, dtype=phases.dtype)
    _from_phases(np.ascontiguousarray(phases), *geo.stride, *geo.padding, out)
    return out


@njit(cache=True)
def _better(v, best):
    """Whether a later tap's value v replaces the best so far: larger, or a NaN over a number."""
    return (v > best) | ((v != v) & (best == best))


@njit(cache=True)
def _keep_best(best, where, v, tap):
    """(best so far, its tap) after a later tap of value v."""
    return (v, tap) if _better(v, best) else (best, where)


@njit(parallel=True, cache=True)
def _max_pool(x, kh, kw, sh, sw, ph, pw, y, argmax):
    """Taps in order: the first maximum wins, a NaN beats numbers, padding never wins (as in PyTorch).

    The taps are the outer loops and a row of outputs the inner one, with no bounds tests and selects
    instead of branches, so LLVM vectorises it (5 ms instead of 17 for pool1 of the small net). argmax 255
    means "no real input seen yet": a window has at most 256 places, and place 255 is its last."""
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        for oh in range(OH):
            best, where = y[n, c, oh], argmax[n, c, oh]
            best[:] = -np.inf
            where[:] = 255
            for i in range(kh):
                ih = oh * sh - ph + i
                if ih < 0 or ih >= H:
                    continue
                row = x[n, c, ih]
                for j in range(kw):
                    lo, hi = _valid_range(pw, j, sw, W, OW)
                    k = i * kw + j
                    for ow in range(lo, hi):  # selects, not branches: LLVM vectorises them
                        at = np.uint64(ow)
                        v, b, w = row[np.uint64(ow * sw - pw + j)], best[at], where[at]
                        take = (w == 255) | _better(v, b)
                        best[at] = v if take else b
                        where[at] = k if take else w


@njit(parallel=True, cache=True)
def _max_pool_2x2(x, y, argmax):
    """VGG's pools (2x2 windows, stride 2, no padding) with each window's four taps read at once, where
    ``_max_pool`` passes over a row of outputs once per tap; same rules, same tap order (0 1 / 2 3). In
    ceil mode an odd H or W leaves a last row or column of windows with only their top or left taps."""
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    full = W // 2
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        for oh in range(OH):
            top, best, where = x[n, c, 2 * oh], y[n, c, oh], argmax[n, c, oh]
            if 2 * oh + 1 < H:
                bottom = x[n, c, 2 * oh + 1]
                for ow in range(full):
                    at = np.uint64(2 * ow)
                    m, k = _keep_best(top[at], 0, top[at + 1], 1)
                    m, k = _keep_best(m, k, bottom[at], 2)
                    best[ow], where[ow] = _keep_best(m, k, bottom[at + 1], 3)
                if OW > full:
                    best[full], where[full] = _keep_best(top[W - 1], 0, bottom[W - 1], 2)
            else:
                for ow in range(full):
                    at = np.uint64(2 * ow)
                    best[ow], where[ow] = _keep_best(top[at], 0, top[at + 1], 1)
                if OW > full:
                    best[full], where[full] = top[W - 1], 0


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
    if tuple(kernel) == tuple(stride) == (2, 2) and tuple(padding) == (0, 0):
        _max_pool_2x2(np.ascontiguousarray(x), y, argmax)
    else:
        prepare("any_pool", x.dtype)
        _max_pool(np.ascontiguousarray(x), *kernel, *stride, *padding, y, argmax)
    return y, argmax


def max_pool_backward(g, argmax, x_shape, kernel, stride, padding):
    dx = np.zeros(x_shape, dtype=g.dtype)
    _max_pool_backward(np.ascontiguousarray(g), argmax, kernel[1], *stride, *padding, dx)
    return dx


LANES = 8  # partial sums per channel: independent chains that vectorise (one float64 sum waits ~4 cycles per add)


@njit(cache=True)
def _lane_sums(x, c, mu, squares):
    """sum over n, p of x[n, c, p] - mu (squared where ``squares``) for a (N, C, H*W) array, in float64, as
    LANES partial sums (lane k takes the pixels p = k mod LANES) added at the end: a fixed order, so the same
    bits every run. The planes are flat so that a 4 x 4 map still fills the lanes."""
    N, _, P = x.shape
    whole = P - P % LANES
    parts = carray(stack_array(LANES, np.float64), (LANES,))  # registers, once LLVM is done
    for k in range(LANES):
        parts[k] = 0.0
    for n in range(N):
        plane = x[n, c]
        for p0 in range(0, whole, LANES):
            for k in range(LANES):
                d = plane[p0 + k] - mu
                parts[k] += d * d if squares else d
        for p in range(whole, P):
            d = plane[p] - mu
            parts[p - whole] += d * d if squares else d
    total = 0.0
    for k in range(LANES):
        total += parts[k]
    return total


@njit(parallel=True, cache=True)
def _bn_stats(x, mean, var):
    """Two passes per channel of a (N, C, H*W) array, summed in float64: the mean, then the squared
    deviations from it."""
    N, C, P = x.shape
    m = N * P
    for c in prange(C):
        mu = _lane_sums(x, c, 0.0, False) / m
        mean[c], var[c] = mu, _lane_sums(x, c, mu, True) / m


@njit(parallel=True, cache=True)
def _bn_forward(x, mean, invstd, gamma, beta, y, xhat):
    N, C, P = x.shape
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        mu, s, a, b = mean[c], invstd[c], gamma[c], beta[c]
        for p in range(P):
            v = (x[n, c, p] - mu) * s
            xhat[n, c, p] = v
            y[n, c, p] = v * a + b


@njit(parallel=True, cache=True)
def _bn_sums(g, xhat, dgamma, dbeta):
    """dbeta[c] = sum g[n, c, p], dgamma[c] = sum g[n, c, p] * xhat[n, c, p] over (N, C, H*W) arrays, in one
    pass, each as LANES partial sums in the order _lane_sums adds."""
    N, C, P = g.shape
    whole = P - P % LANES
    for c in prange(C):
        sg_parts = carray(stack_array(LANES, np.float64), (LANES,))
        sgx_parts = carray(stack_array(LANES, np.float64), (LANES,))
        for k in range(LANES):
            sg_parts[k], sgx_parts[k] = 0.0, 0.0
        for n in range(N):
            grow, xrow = g[n, c], xhat[n, c]
            for p0 in range(0, whole, LANES):
                for k in range(LANES):
                    v = grow[p0 + k]
                    sg_parts[k] += v
                    sgx_parts[k] += v * xrow[p0 + k]
            for p in range(whole, P):
                sg_parts[p - whole] += grow[p]
                sgx_parts[p - whole] += grow[p] * xrow[p]
        sg, sgx = 0.0, 0.0
        for k in range(LANES):
            sg += sg_parts[k]
            sgx += sgx_parts[k]
        dgamma[c], dbeta[c] = sgx, sg


@njit(parallel=True, cache=True)
def _bn_backward(g, xhat, scale, mean_g, mean_gx, dx):
    N, C, P = g.shape
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        s, a, b = scale[c], mean_g[c], mean_gx[c]
        for p in range(P):
            dx[n, c, p] = s * (g[n, c, p] - a - xhat[n, c, p] * b)


def _planes(a, dtype=None):
    """A contiguous (N, C, H*W) view: the batch-norm kernels run along whole planes."""
    a = np.ascontiguousarray(a, dtype=dtype)
    return a.reshape(a.shape[0], a.shape[1], -1)


def batch_norm_stats(x):
    x3 = _planes(x)
    mean, var = np.empty(x3.shape[1]), np.empty(x3.shape[1])
    _bn_stats(x3, mean, var)
    return mean.astype(x3.dtype), var.astype(x3.dtype)


def batch_norm_forward(x, mean, invstd, gamma, beta):
    x3 = _planes(x)
    y, xhat = np.empty_like(x3), np.empty_like(x3)
    as_x = [np.ascontiguousarray(v, dtype=x3.dtype) for v in (mean, invstd, gamma, beta)]
    _bn_forward(x3, *as_x, y, xhat)
    return y.reshape(x.shape), xhat.reshape(x.shape)


def batch_norm_backward(g, xhat, gamma, invstd, training):
    shape, g = g.shape, _planes(g)
    xhat = _planes(xhat, g.dtype)
    C, m = g.shape[1], g.size // g.shape[1]
    dgamma, dbeta = np.empty(C), np.empty(C)
    _bn_sums(g, xhat, dgamma, dbeta)
    scale = np.asarray(gamma * invstd, dtype=g.dtype)
    zero = np.zeros(C, g.dtype)
    mean_g, mean_gx = ((dbeta / m).astype(g.dtype), (dgamma / m).astype(g.dtype)) if training else (zero, zero)
    dx = np.empty_like(g)
    _bn_backward(g, xhat, scale, mean_g, mean_gx, dx)
    return dx.reshape(shape), dgamma.astype(g.dtype), dbeta.astype(g.dtype)


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


PIXEL_BLOCK = 512  # the loss works on blocks of pixels: every pass over the classes reads rows of z in order


@intrinsic
def _bits(typingctx, value):
    """The IEEE-754 bits of a float64 as an int64, or the float64 with these bits: a bitcast, no conversion."""
    if value == types.float64:
        result, target = types.int64, llvm_ir.IntType(64)
    elif value == types.int64:
        result, target = types.float64, llvm_ir.DoubleType()
    else:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], target)
    return result(value), codegen


EXP_SHIFT = 1.5 * 2.0 ** 52  # adding it rounds a double to an integer, kept in its low mantissa bits
LN2_HI, LN2_LO = 6.93147180369123816490e-01, 1.90821492927058770002e-10  # ln 2 = HI + LO, HI exact in 32 bits


@njit(inline="always")
def _exp(x):
    """e^x for x <= 0 (the softmax's z - max), in plain arithmetic that LLVM vectorises (math.exp calls libm
    once per value: the loss spent most of its time there).

    e^x = 2^k e^r with k = round(x / ln 2) and |r| <= ln(2)/2, where a Taylor polynomial of degree 12 is
    exact to about 1e-16; 2^k is built from its bits, exponent field k + 1023. Below -708 it returns
    e^-708 (about 3e-308) instead of underflowing further.
    """
    x = max(x, -708.0)
    t = x * 1.4426950408889634 + EXP_SHIFT
    k = t - EXP_SHIFT
    r = (x - k * LN2_HI) - k * LN2_LO
    p = 1.0 / 479001600.0
    for d in (39916800.0, 3628800.0, 362880.0, 40320.0, 5040.0, 720.0, 120.0, 24.0, 6.0, 2.0, 1.0, 1.0):
        p = p * r + 1.0 / d
    return p * _bits((_bits(t) + 1023) << 52)


@njit(parallel=True, cache=True)
def _softmax_xent(z, t, weight, ignore_index, scale, loss, wsum, dz, m, total, coef):
    """Forward, when dz is empty: loss[n, p] = w[t] (log sum_k exp z[n, k, p] - z[n, t, p]), wsum[n, p] = w[t].
    Backward, when dz has z's shape: dz[n, k, p] = scale w[t] (softmax(z[n, :, p])_k - [k == t]).
    Both 0 where t is ignored. Pixels run in blocks, classes outside and pixels inside, so the passes over z
    read its rows and vectorise; m, total and coef hold one row per block. One kernel for both passes:
    it compiles once."""
    N, K, P = z.shape
    backward = dz.shape[0] > 0
    blocks = (P + PIXEL_BLOCK - 1) // PIXEL_BLOCK
    for task in prange(N * blocks):
        n, p0 = task // blocks, (task % blocks) * PIXEL_BLOCK
        L = min(PIXEL_BLOCK, P - p0)
        mx, tot, cf = m[task], total[task], coef[task]
        for p in range(L):
            mx[p], tot[p] = z[n, 0, np.uint64(p0 + p)], 0.0
        for k in range(1, K):
            for p in range(L):
                mx[p] = max(mx[p], z[n, k, np.uint64(p0 + p)])
        if backward:  # total = sum_k exp(z - max); the backward keeps each exponential in dz
            for k in range(K):
                for p in range(L):
                    v = _exp(z[n, k, np.uint64(p0 + p)] - mx[p])
                    tot[p] += v
                    dz[n, k, np.uint64(p0 + p)] = v
        else:  # a loop of its own: with the backward's store under an `if`, the forward took 5-7 times as long
            for k in range(K):
                for p in range(L):
                    tot[p] += _exp(z[n, k, np.uint64(p0 + p)] - mx[p])
        for p in range(L):
            label = t[n, p0 + p]
            cf[p] = 0.0 if label == ignore_index else weight[label]
            if not backward:
                loss[n, p0 + p] = 0.0 if label == ignore_index else \
                    cf[p] * (mx[p] + math.log(tot[p]) - z[n, label, p0 + p])
                wsum[n, p0 + p] = cf[p]
        if backward:
            for k in range(K):
                for p in range(L):
                    at = np.uint64(p0 + p)
                    hit = 1.0 if t[n, at] == k else 0.0
                    v = scale * cf[p] * (dz[n, k, at] / tot[p] - hit)
                    dz[n, k, at] = 0.0 if t[n, at] == ignore_index else v


@njit(parallel=True, cache=True)
def _argmax_classes(z, out, best, index):
    """out[n, p] = argmax_k z[n, k, p] by NumPy's rule (``_better``: the first of equals, the first NaN above
    all). In blocks of pixels, as the loss: NumPy's argmax over the middle axis walks z across the grain."""
    N, K, P = z.shape
    blocks = (P + PIXEL_BLOCK - 1) // PIXEL_BLOCK
    for task in prange(N * blocks):
        n, p0 = task // blocks, (task % blocks) * PIXEL_BLOCK
        L = min(PIXEL_BLOCK, P - p0)
        b, i = best[task], index[task]
        for p in range(L):
            b[p], i[p] = z[n, 0, np.uint64(p0 + p)], 0
        for k in range(1, K):
            for p in range(L):  # selects, not branches, so that the loop vectorises
                v = z[n, k, np.uint64(p0 + p)]
                take = _better(v, b[p])
                b[p] = v if take else b[p]
                i[p] = k if take else i[p]
        for p in range(L):
            out[n, p0 + p] = i[p]


def _block_scratch(z, *dtypes):
    """One row of PIXEL_BLOCK values per (image, block of pixels) of z (N, K, P), an array per dtype: the
    per-task scratch of the pixel-block kernels (the loss, argmax_classes)."""
    N, _, P = z.shape
    return tuple(np.empty((N * -(-P // PIXEL_BLOCK), PIXEL_BLOCK), dtype) for dtype in dtypes)


def argmax_classes(z):
    N, K, P = z.shape
    out = np.empty((N, P), np.int64)
    _argmax_classes(np.ascontiguousarray(z), out, *_block_scratch(z, z.dtype, np.int64))
    return out


def _loss_scratch(z):
    return _block_scratch(z, z.dtype, np.float64, np.float64)


def softmax_xent(z, t, weight, ignore_index):
    N, K, P = z.shape
    loss, wsum = np.empty((N, P), np.float64), np.empty((N, P), np.float64)
    _softmax_xent(np.ascontiguousarray(z), np.ascontiguousarray(t), weight.astype(np.float64), ignore_index, 1.0,
                  loss, wsum, np.empty((0, K, P), z.dtype), *_loss_scratch(z))
    return z.dtype.type(loss.sum()), z.dtype.type(wsum.sum())


def softmax_xent_backward(z, t, weight, ignore_index, scale):
    P = z.shape[2]
    dz = np.empty(z.shape, dtype=z.dtype)
    _softmax_xent(np.ascontiguousarray(z), np.ascontiguousarray(t), weight.astype(np.float64), ignore_index,
                  float(scale), np.empty((0, P)), np.empty((0, P)), dz, *_loss_scratch(z))
    return dz
