"""Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray, 2016): a 3x3 convolution with 2.25x fewer
multiplications, for the wide layers where the products dominate.

A 2x2 block of outputs of a 3x3 convolution reads a 4x4 block d of the input. In the transformed
domain the 36 multiplications of the direct sum become 16 elementwise ones:

    Y = A^T [ (G g G^T) * (B^T d B) ] A          (* elementwise; all 4x4 but Y 2x2 and g 3x3)

        B^T = | 1  0 -1  0 |     G = |  1    0    0  |     A^T = | 1  1  1  0 |
              | 0  1  1  0 |         | 1/2  1/2  1/2 |           | 0  1 -1 -1 |
              | 0 -1  1  0 |         | 1/2 -1/2  1/2 |
              | 0  1  0 -1 |         |  0    0    1  |

Summed over input channels, each of the 16 positions (a, b) of the transformed block is one matrix
product over all tiles at once:

    M_ab = U_ab @ V_ab,   U_ab[o, c] = (G w[o, c] G^T)_ab  (Cout x Cin),   V_ab[c, t] = (B^T d_ct B)_ab  (Cin x tiles)

So the convolution is a transform of the input (4x its size: 16 values per 4 output pixels), 16 BLAS
products of Cin-deep sums, and a transform back. The products cost 16/36 of the direct convolution's
multiply-adds; the transforms are passes over memory, so the route pays on layers wide enough for the
products to dominate (here: the full-width net), and autotune measures where. The transforms only add
and subtract (G's halves are exact in binary), so the result differs from the direct sum by rounding
alone, a few units in the last place of the largest term. Stride 1, dilation 1, 3x3 kernels, any padding.

The weight gradient is the same map transposed. Per block, Y is linear in g: Y = A^T [(G g G^T) * V] A,
so dL/dg = G^T [V * (A dY A^T)] G, and summed over blocks

    dW[o, c] = G^T S[o, c] G,    S_ab = Z_ab @ V_ab^T,    Z_ab[o, t] = (A dY_ot A^T)_ab  (Cout x tiles)

16 products whose inner dimension is the tiles (hundreds per piece, summed over the pieces), between
the input's transform and the output gradient's, A dY A^T with A = (A^T)^T, 4 x 2.
"""

import numpy as np
from numba import njit, prange

from .gemm import matmul
from .numba_tiled import _placed

G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])


def applies(geo):
    """Whether this route can compute the convolution: 3x3, stride 1, dilation 1."""
    return geo.kernel == (3, 3) and geo.stride == (1, 1) and geo.dilation == (1, 1)


GG = np.kron(G, G)  # (G (x) G)[4a + b, 3i + j] = G_ai G_bj


def transform_weights(w):
    """U[4a + b, o, c] = (G w[o, c] G^T)_ab = sum_ij G_ai G_bj w[o, c, i, j]: one product with G (x) G,
    (16 x 9) @ (9 x Cout Cin). Its entries are 0, +-1/4, +-1/2 and 1, exact in binary."""
    O, C = w.shape[:2]
    return matmul(GG.astype(w.dtype), w.reshape(O * C, 9).T).reshape(16, O, C)


@njit(inline="always")
def _columns(d0, d1, d2, d3):
    """B^T applied to one column (d0..d3) of a block; the same combinations of B^T's rows serve (.) B."""
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


@njit(parallel=True, cache=True)
def _transform_input(xp, TH, TW, r0, r1, v):
    """v[4a + b, c, (R - r0) TW + tx] = (B^T d B)_ab for the rows of blocks R = n TH + ty in r0 .. r1 - 1,
    d the 4x4 block of xp[n, c] at (2 ty, 2 tx).

    Two passes per row of blocks, each over contiguous memory: B^T combines four input rows into four
    rows t_a (whole rows at once), then B combines each t_a's columns 2tx .. 2tx + 3 into v's four planes."""
    C, Wp = xp.shape[1], xp.shape[3]
    for c in prange(C):
        t = np.empty((4, Wp), xp.dtype)
        for R in range(r0, r1):
            n, top = R // TH, 2 * (R % TH)
            x0, x1, x2, x3 = xp[n, c, top], xp[n, c, top + 1], xp[n, c, top + 2], xp[n, c, top + 3]
            for j in range(Wp):
                t[0, j], t[1, j], t[2, j], t[3, j] = _columns(x0[j], x1[j], x2[j], x3[j])
            base = (R - r0) * TW
            for a in range(4):
                ta = t[a]
                v0, v1 = v[4 * a, c, base: base + TW], v[4 * a + 1, c, base: base + TW]
                v2, v3 = v[4 * a + 2, c, base: base + TW], v[4 * a + 3, c, base: base + TW]
                for tx in range(TW):
                    q = np.uint64(2 * tx)  # unsigned: no negative-index test, so the loop vectorises
                    v0[tx], v1[tx], v2[tx], v3[tx] = _columns(ta[q], ta[q + 1], ta[q + 2], ta[q + 3])


@njit(cache=True)
def _output_row(c0, c1, c2, c3, out):
    """A row of outputs from the row combinations c_b of its tiles: (A^T M) A along the row.
    (A function of its own: inlined into the parallel loop, its odd-width column was not written.)"""
    OW = out.shape[0]
    for tx in range(OW // 2):
        q = np.uint64(2 * tx)
        out[q] = c0[tx] + c1[tx] + c2[tx]
        out[q + 1] = c1[tx] - c2[tx] - c3[tx]
    if OW % 2:  # an odd width: the last tile's left column only
        last = OW // 2
        out[OW - 1] = c0[last] + c1[last] + c2[last]


@njit(parallel=True, cache=True)
def _transform_output(m, TH, TW, r0, r1, y):
    """y[n, o, 2 ty : 2 ty + 2, 2 tx : 2 tx + 2] = A^T M A for the rows of blocks R = n TH + ty in r0 .. r1 - 1,
    M the 4x4 block m[:, o, (R - r0) TW + tx], cut at y's edges.

    Two passes per row of blocks: A^T combines M's rows for a whole row of tiles (contiguous in m), then
    A combines their columns into the two output rows."""
    O, OH = y.shape[1], y.shape[2]
    for o in prange(O):
        s = np.empty((8, TW), m.dtype)  # s[b]: rows 0 + 1 + 2 of column b; s[4 + b]: rows 1 - 2 - 3
        for R in range(r0, r1):
            n, top, base = R // TH, 2 * (R % TH), (R - r0) * TW
            for b in range(4):
                m0, m1 = m[b, o, base: base + TW], m[4 + b, o, base: base + TW]
                m2, m3 = m[8 + b, o, base: base + TW], m[12 + b, o, base: base + TW]
                sb, sb4 = s[b], s[4 + b]
                for tx in range(TW):
                    sb[tx] = m0[tx] + m1[tx] + m2[tx]
                    sb4[tx] = m1[tx] - m2[tx] - m3[tx]
            for a in range(min(2, OH - top)):
                _output_row(s[4 * a], s[4 * a + 1], s[4 * a + 2], s[4 * a + 3], y[n, o, top + a])


@njit(parallel=True, cache=True)
def _transform_grad(gp, TH, TW, r0, r1, z):
    """z[4a + b, o, (R - r0) TW + tx] = (A e A^T)_ab for the rows of blocks R = n TH + ty in r0 .. r1 - 1, e the
    2x2 block of gp[n, o] at (2 ty, 2 tx). A's rows are (1, 0), (1, 1), (1, -1), (0, -1): e's two rows become
    four (whole rows at once), then each one's two columns 2tx, 2tx + 1 become four."""
    O, Wp = gp.shape[1], gp.shape[3]
    for o in prange(O):
        t = np.empty((4, Wp), gp.dtype)
        for R in range(r0, r1):
            n, top, base = R // TH, 2 * (R % TH), (R - r0) * TW
            e0, e1 = gp[n, o, top], gp[n, o, top + 1]
            for j in range(Wp):
                t[0, j], t[1, j], t[2, j], t[3, j] = e0[j], e0[j] + e1[j], e0[j] - e1[j], -e1[j]
            for a in range(4):
                ta = t[a]
                z0, z1 = z[4 * a, o, base: base + TW], z[4 * a + 1, o, base: base + TW]
                z2, z3 = z[4 * a + 2, o, base: base + TW], z[4 * a + 3, o, base: base + TW]
                for tx in range(TW):
                    q = np.uint64(2 * tx)
                    left, right = ta[q], ta[q + 1]
                    z0[tx], z1[tx], z2[tx], z3[tx] = left, left + right, left - right, -right


PIECE_TILES = 256  # blocks per piece: its transformed input and products stay in cache until read back,
# and BLAS still gets 256 columns. Measured on one thread of a Zen 4 (pieces of 64-1024 blocks, layers of
# 32-512 channels): smaller pieces starve the 512-channel products, larger ones the cache.


def rows_per_piece(TW, tiles=PIECE_TILES):
    """Rows of blocks per piece: about ``tiles`` blocks, and at least one row."""
    return max(1, -(-tiles // TW))


def conv2d(x, w, padding, tiles=PIECE_TILES):
    """y = conv2d(x, w) at stride 1 for 3x3 kernels, by F(2x2, 3x3): transform, 16 products, transform back,
    a piece of about ``tiles`` blocks at a time."""
    dtype = np.result_type(x.dtype, w.dtype)
    N, C, H, W = x.shape
    (ph, pw), O = padding, w.shape[0]
    OH, OW = H + 2 * ph - 2, W + 2 * pw - 2
    TH, TW = -(-OH // 2), -(-OW // 2)
    xp = _placed(x.astype(dtype, copy=False), (N, C, 2 * TH + 2, 2 * TW + 2), ph, pw)  # whole blocks
    u = transform_weights(w.astype(dtype, copy=False))
    y = np.empty((N, O, OH, OW), dtype)
    step = rows_per_piece(TW, tiles)
    for r0 in range(0, N * TH, step):
        r1 = min(r0 + step, N * TH)
        v = np.empty((16, C, (r1 - r0) * TW), dtype)
        _transform_input(xp, TH, TW, r0, r1, v)
        _transform_output(matmul(u, v), TH, TW, r0, r1, y)
    return y


def conv2d_weight_grad(g, x, w_shape, padding, tiles=PIECE_TILES):
    """dw[o, c, i, j] = sum_{n,y,x} g[n, o, y, x] x[n, c, y - p + i, x - p + j] for 3x3 kernels, by F(2x2, 3x3)
    transposed: S = sum over pieces of Z V^T in the transformed domain, then dW = G^T S G."""
    dtype = np.result_type(x.dtype, g.dtype)
    N, C, H, W = x.shape
    O, OH, OW = g.shape[1:]
    TH, TW = -(-OH // 2), -(-OW // 2)
    xp = _placed(x.astype(dtype, copy=False), (N, C, 2 * TH + 2, 2 * TW + 2), *padding)
    gp = _placed(g.astype(dtype, copy=False), (N, O, 2 * TH, 2 * TW))  # odd edges: zeros add nothing
    s = np.zeros((16, O, C), dtype)
    step = rows_per_piece(TW, tiles)
    for r0 in range(0, N * TH, step):
        r1 = min(r0 + step, N * TH)
        v = np.empty((16, C, (r1 - r0) * TW), dtype)
        z = np.empty((16, O, (r1 - r0) * TW), dtype)
        _transform_input(xp, TH, TW, r0, r1, v)
        _transform_grad(gp, TH, TW, r0, r1, z)
        s += matmul(z, v.transpose(0, 2, 1))
    dw = matmul(GG.T.astype(dtype), s.reshape(16, O * C))  # G^T S G: (9 x 16) @ (16 x Cout Cin)
    return np.ascontiguousarray(dw.T).reshape(w_shape)
