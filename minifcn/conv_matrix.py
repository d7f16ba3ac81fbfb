"""A convolution written as the matrix it is.

conv2d is linear in its input, so for fixed weights there is a matrix C with
``conv2d(x, w).ravel() == C @ x.ravel()``. Row ``(o, oh, ow)`` of C holds the
kernel ``w[o]`` laid over the input pixels that output (oh, ow) reads, and
zeros elsewhere. Its transpose C^T maps outputs back to inputs: that is the
transposed convolution, and also the gradient of the convolution with
respect to its input (for L = <C x, g>, dL/dx = C^T g).
"""

import numpy as np

from .arrays import as_array
from .functional import conv2d, conv_transpose2d
from .conv_arithmetic import conv_output_hw, conv_transpose_output_size, pair


class ConvMatrix:
    """conv2d with weights ``w`` on a flattened (C, H, W) input, as a linear operator.

    ``C @ x`` runs conv2d (fast), ``C.toarray()`` builds the dense matrix
    entry by entry (the slow, obvious way), and ``C.T`` is the adjoint, whose
    ``@`` runs conv_transpose2d.
    """

    def __init__(self, w, input_shape, stride=1, padding=0, dilation=1, transposed=False):
        self.w = as_array(w)
        if self.w.ndim != 4 or len(input_shape) != 3 or input_shape[0] != self.w.shape[1]:
            raise ValueError(f"ConvMatrix needs weights (Cout, Cin, kh, kw) and input_shape (Cin, H, W), "
                             f"got weights {self.w.shape} and input_shape {tuple(input_shape)}")
        self.input_shape = tuple(int(n) for n in input_shape)
        self.stride, self.padding, self.dilation = pair(stride), pair(padding), pair(dilation)
        self.transposed = transposed
        OH, OW = conv_output_hw(self.input_shape[1:], self.w.shape[2:], stride, padding, dilation)
        if OH < 1 or OW < 1:
            raise ValueError(f"kernel {self.w.shape[2:]} does not fit input {self.input_shape} with "
                             f"padding {self.padding} and dilation {self.dilation}")
        self.output_shape = (self.w.shape[0], OH, OW)
        rows, cols = int(np.prod(self.output_shape)), int(np.prod(self.input_shape))
        self.shape = (cols, rows) if transposed else (rows, cols)

    @property
    def T(self):
        return ConvMatrix(self.w, self.input_shape, self.stride, self.padding, self.dilation,
                          transposed=not self.transposed)

    def __eq__(self, other):
        return (isinstance(other, ConvMatrix) and self.transposed == other.transposed
                and self.input_shape == other.input_shape and self.w.shape == other.w.shape
                and (self.stride, self.padding, self.dilation) == (other.stride, other.padding, other.dilation)
                and bool((self.w == other.w).all()))

    def __repr__(self):
        kind = "ConvMatrix.T" if self.transposed else "ConvMatrix"
        return f"<{kind} {self.shape[0]}x{self.shape[1]}, kernel {self.w.shape}, stride {self.stride}>"

    def toarray(self):
        """The dense matrix, filled in from the index arithmetic, not from conv2d.

        M[(o, oh, ow), (c, ih, iw)] += w[o, c, i, j] where ih = oh*s - p + i*d
        and iw = ow*s - p + j*d lie inside the image.
        """
        Cout, Cin, kh, kw = self.w.shape
        _, H, W = self.input_shape
        _, OH, OW = self.output_shape
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        M = np.zeros((Cout, OH, OW, Cin, H, W), dtype=self.w.dtype)
        w = np.asarray(self.w)
        for oh in range(OH):
            for ow in range(OW):
                for i in range(kh):
                    for j in range(kw):
                        ih, iw = oh * sh - ph + i * dh, ow * sw - pw + j * dw
                        if 0 <= ih < H and 0 <= iw < W:
                            M[:, oh, ow, :, ih, iw] += w[:, :, i, j]
        M = M.reshape(Cout * OH * OW, Cin * H * W)
        return M.T if self.transposed else M

    def __matmul__(self, v):
        """Apply the operator to a vector (n,) or to the columns of a matrix (n, B)."""
        v = as_array(v)
        if v.ndim not in (1, 2) or v.shape[0] != self.shape[1]:
            raise ValueError(f"{self!r} cannot multiply an operand of shape {v.shape}")
        batch = v.reshape(self.shape[1], -1).T  # (B, n)
        if self.transposed:
            y = batch.reshape(-1, *self.output_shape)
            _, H, W = self.input_shape
            # output_padding recovers the rows the forward conv's floor dropped
            extra = [n - conv_transpose_output_size(m, k, s, p, 0, d) for n, m, k, s, p, d in
                     zip((H, W), y.shape[2:], self.w.shape[2:], self.stride, self.padding, self.dilation)]
            out = conv_transpose2d(y, self.w, stride=self.stride, padding=self.padding,
                                   output_padding=tuple(extra), dilation=self.dilation).data
        else:
            out = conv2d(batch.reshape(-1, *self.input_shape), self.w, stride=self.stride,
                         padding=self.padding, dilation=self.dilation).data
        out = out.reshape(out.shape[0], -1).T
        return out[:, 0] if v.ndim == 1 else out
