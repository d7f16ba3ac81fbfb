"""The ops of a fully convolutional network, each a Function with its backward.

Every function here takes Tensors (an ndarray argument is a constant) and
returns a Tensor; ``im2col``/``col2im`` work on plain arrays.
"""

import numpy as np

from .autograd import Function, Tensor, array_module, as_array
from .im2col import col2im, conv_output_hw, conv_output_size, conv_transpose_output_size, im2col, pair

__all__ = ["im2col", "col2im", "conv2d", "conv_transpose2d", "max_pool2d", "relu", "dropout",
           "pad2d", "crop", "softmax_cross_entropy", "conv_output_size", "conv_transpose_output_size",
           "pool_output_size"]


def _check_conv_operands(x, w, b, channel_axis, op):
    if x.ndim != 4:
        raise ValueError(f"{op}: input must be (N, C, H, W), got shape {x.shape}")
    if w.ndim != 4:
        raise ValueError(f"{op}: weight must be 4-D, got shape {w.shape}")
    if x.shape[1] != w.shape[channel_axis]:
        raise ValueError(f"{op}: input has {x.shape[1]} channels but weight of shape {w.shape} "
                         f"expects {w.shape[channel_axis]}")
    out_channels = w.shape[1 - channel_axis]
    if b is not None and b.shape != (out_channels,):
        raise ValueError(f"{op}: bias of shape {b.shape} does not match {out_channels} output channels")


def _conv_input_grad(g, w, input_shape, stride, padding, dilation):
    """dL/dx of y = conv2d(x, w) from dL/dy: col2im(W^T g). This IS conv_transpose2d.

    With W = w.reshape(Cout, Cin*kh*kw) and y = W @ im2col(x), the chain rule
    gives dL/dcols = W^T @ g, and col2im (the adjoint of im2col) folds that
    back onto the image.
    """
    N, Cout = g.shape[:2]
    cols = w.reshape(Cout, -1).T @ g.reshape(N, Cout, -1)
    return col2im(cols, input_shape, w.shape[2:], stride, padding, dilation)


def _conv_weight_grad(g, cols, w_shape):
    """dL/dW = sum over batch and positions of g (Cout x L) times cols^T (L x K)."""
    N, Cout = g.shape[:2]
    return np.tensordot(g.reshape(N, Cout, -1), cols, axes=([0, 2], [0, 2])).reshape(w_shape)


class Conv2d(Function):
    """y[n, o] = sum_{c,i,j} w[o, c, i, j] * x[n, c, oh*s - p + i*d, ow*s - p + j*d] + b[o]."""

    def forward(self, x, w, b=None, stride=1, padding=0, dilation=1):
        _check_conv_operands(x, w, b, 1, "conv2d")
        self.params = stride, padding, dilation
        cols = im2col(x, w.shape[2:], stride, padding, dilation)
        OH, OW = conv_output_hw(x.shape[2:], w.shape[2:], stride, padding, dilation)
        y = (w.reshape(w.shape[0], -1) @ cols).reshape(x.shape[0], w.shape[0], OH, OW)
        if b is not None:
            y += b.reshape(1, -1, 1, 1)
        self.x_shape, self.w = x.shape, w
        self.cols = cols if self.needs_grad[1] else None  # kept only if dW is wanted
        return y

    def backward(self, g):
        dx = _conv_input_grad(g, self.w, self.x_shape, *self.params) if self.needs_grad[0] else None
        dw = _conv_weight_grad(g, self.cols, self.w.shape) if self.needs_grad[1] else None
        db = g.sum(axis=(0, 2, 3)) if len(self.needs_grad) > 2 and self.needs_grad[2] else None
        return dx, dw, db


class ConvTranspose2d(Function):
    """The adjoint of Conv2d: forward is conv2d's input gradient, backward is conv2d.

    Weights are (Cin, Cout, kh, kw): seen as a conv2d weight they map Cout
    channels to Cin, and this op applies that convolution's transpose.
    """

    def forward(self, x, w, b=None, stride=1, padding=0, output_padding=0, dilation=1):
        _check_conv_operands(x, w, b, 0, "conv_transpose2d")
        (sh, sw), (ph, pw), (oph, opw), (dh, dw) = (pair(stride, "stride"), pair(padding, "padding"),
                                                    pair(output_padding, "output_padding"),
                                                    pair(dilation, "dilation"))
        if not (0 <= oph < max(sh, dh) and 0 <= opw < max(sw, dw)):
            raise ValueError(f"conv_transpose2d: output_padding {(oph, opw)} must be smaller than "
                             f"stride {(sh, sw)} or dilation {(dh, dw)}")
        N, _, H, W = x.shape
        out_shape = (N, w.shape[1],
                     conv_transpose_output_size(H, w.shape[2], sh, ph, oph, dh),
                     conv_transpose_output_size(W, w.shape[3], sw, pw, opw, dw))
        if min(out_shape[2:]) < 1:
            raise ValueError(f"conv_transpose2d: input {x.shape} with weight {w.shape}, stride {(sh, sw)}, "
                             f"padding {(ph, pw)} gives an empty output {out_shape}")
        self.params = (sh, sw), (ph, pw), (dh, dw)
        y = _conv_input_grad(x, w, out_shape, *self.params)
        if b is not None:
            y += b.reshape(1, -1, 1, 1)
        self.x, self.w = (x if self.needs_grad[1] else None), w
        return y

    def backward(self, g):
        cols = im2col(g, self.w.shape[2:], *self.params) if self.needs_grad[0] or self.needs_grad[1] else None
        dx = None
        if self.needs_grad[0]:
            Cin = self.w.shape[0]
            hw = conv_output_hw(g.shape[2:], self.w.shape[2:], *self.params)
            dx = (self.w.reshape(Cin, -1) @ cols).reshape(g.shape[0], Cin, *hw)
        dw = _conv_weight_grad(self.x, cols, self.w.shape) if self.needs_grad[1] else None
        db = g.sum(axis=(0, 2, 3)) if len(self.needs_grad) > 2 and self.needs_grad[2] else None
        return dx, dw, db


def conv2d(x, w, b=None, stride=1, padding=0, dilation=1):
    """2-D cross-correlation, NCHW, weights (Cout, Cin, kh, kw)."""
    args = (x, w) if b is None else (x, w, b)
    return Conv2d.apply(*args, stride=stride, padding=padding, dilation=dilation)


def conv_transpose2d(x, w, b=None, stride=1, padding=0, output_padding=0, dilation=1):
    """Transposed convolution (PyTorch semantics), weights (Cin, Cout, kh, kw).

    Output size (H - 1)s - 2p + d(k - 1) + output_padding + 1. Its forward is
    exactly the input gradient of ``conv2d`` with the same weights.
    """
    args = (x, w) if b is None else (x, w, b)
    return ConvTranspose2d.apply(*args, stride=stride, padding=padding,
                                 output_padding=output_padding, dilation=dilation)


def pool_output_size(size, kernel, stride, padding=0, ceil_mode=False):
    """Pooling output size; ceil mode as in Caffe and PyTorch.

    ceil((size + 2p - k) / s) + 1, minus one if that last window would start
    in the right padding (it must start inside the image or the left pad).
    """
    span = size + 2 * padding - kernel
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


class MaxPool2d(Function):
    """y = max over each k x k window; the gradient goes to the arg-max only."""

    def forward(self, x, kernel_size, stride=None, padding=0, ceil_mode=False):
        if x.ndim != 4:
            raise ValueError(f"max_pool2d: input must be (N, C, H, W), got shape {x.shape}")
        (kh, kw) = pair(kernel_size, "kernel_size")
        (sh, sw) = pair(kernel_size if stride is None else stride, "stride")
        (ph, pw) = pair(padding, "padding")
        if min(kh, kw, sh, sw) < 1 or not (0 <= ph <= kh // 2 and 0 <= pw <= kw // 2):
            raise ValueError(f"max_pool2d: kernel_size {(kh, kw)} and stride {(sh, sw)} must be >= 1 and "
                             f"padding {(ph, pw)} at most half the kernel")
        N, C, H, W = x.shape
        OH, OW = pool_output_size(H, kh, sh, ph, ceil_mode), pool_output_size(W, kw, sw, pw, ceil_mode)
        if OH < 1 or OW < 1:  # ceil mode lets one window overhang; floor mode needs a whole one
            raise ValueError(f"max_pool2d: kernel {(kh, kw)} is larger than the padded input "
                             f"{(H + 2 * ph, W + 2 * pw)} of shape {x.shape}")
        # -inf padding up to the extent the last (ceil-mode) window reaches.
        bottom, right = (OH - 1) * sh + kh - H - ph, (OW - 1) * sw + kw - W - pw
        xp = array_module(x).pad(x, ((0, 0), (0, 0), (ph, max(bottom, 0)), (pw, max(right, 0))),
                                 constant_values=-np.inf)
        windows = array_module(x).stack([xp[:, :, i: i + sh * OH: sh, j: j + sw * OW: sw]
                                         for i in range(kh) for j in range(kw)])
        self.argmax = windows.argmax(axis=0)  # which kernel offset won, per output
        self.geometry = (kh, kw), (sh, sw), (ph, pw), xp.shape, x.shape
        return windows.max(axis=0)

    def backward(self, g):
        (kh, kw), (sh, sw), (ph, pw), padded_shape, (N, C, H, W) = self.geometry
        OH, OW = g.shape[2:]
        dxp = array_module(g).zeros(padded_shape, dtype=g.dtype)
        for i in range(kh):
            for j in range(kw):
                dxp[:, :, i: i + sh * OH: sh, j: j + sw * OW: sw] += g * (self.argmax == i * kw + j)
        return dxp[:, :, ph: ph + H, pw: pw + W]


def max_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False):
    return MaxPool2d.apply(x, kernel_size=kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode)


class ReLU(Function):
    def forward(self, x):
        self.positive = x > 0
        return x * self.positive

    def backward(self, g):
        return g * self.positive


def relu(x):
    return ReLU.apply(x)


def dropout(x, p, training, rng):
    """Inverted dropout: zero each unit with probability p, scale the rest by 1/(1-p).

    The scaling keeps E[output] = input, so evaluation needs no rescaling.
    """
    if not 0 <= p < 1:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if not training or p == 0:
        return x
    x = x if isinstance(x, Tensor) else Tensor(x)
    keep = rng.random(x.shape) >= p
    return x * array_module(x.data).asarray(keep * (1.0 / (1.0 - p)), dtype=x.dtype)


class Pad2d(Function):
    """Zero padding (top, bottom, left, right); the gradient is the inner slice."""

    def forward(self, x, pads):
        self.pads, self.hw = pads, x.shape[2:]
        top, bottom, left, right = pads
        return array_module(x).pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))

    def backward(self, g):
        top, _, left, _ = self.pads
        return g[:, :, top: top + self.hw[0], left: left + self.hw[1]]


def pad2d(x, top, bottom, left, right):
    return Pad2d.apply(x, pads=(top, bottom, left, right))


def crop(x, top, left, height, width):
    """x[:, :, top:top+height, left:left+width], checked to lie inside x."""
    H, W = x.shape[2:]
    if top < 0 or left < 0 or top + height > H or left + width > W:
        raise ValueError(f"crop ({top}, {left}, {height}, {width}) does not fit inside a map of size {(H, W)}")
    return x[:, :, top: top + height, left: left + width]


class SoftmaxCrossEntropy(Function):
    """Per-pixel -w[t] log softmax(z)[t], ignoring pixels labelled ignore_index.

    log softmax(z)_k = z_k - m - log sum_j exp(z_j - m), with m = max_j z_j so
    that no exponent overflows. d/dz of the loss is w[t] (softmax(z) - onehot(t)).
    """

    def forward(self, logits, target, ignore_index=255, reduction="mean", weight=None):
        xp = array_module(logits)
        K = logits.shape[1]
        z = xp.moveaxis(logits, 1, -1)  # (..., K)
        shifted = z - z.max(axis=-1, keepdims=True)
        log_norm = xp.log(xp.exp(shifted).sum(axis=-1, keepdims=True))
        log_p = shifted - log_norm
        valid = target != ignore_index
        safe_target = xp.where(valid, target, 0)
        w = valid.astype(logits.dtype) if weight is None else weight.astype(logits.dtype)[safe_target] * valid
        picked = xp.take_along_axis(log_p, safe_target[..., None], axis=-1)[..., 0]
        total = -(w * picked).sum()
        denom = w.sum() if reduction == "mean" else logits.dtype.type(1)
        self.saved = log_p, safe_target, w, denom
        return xp.asarray(total / denom if denom > 0 else total * 0, dtype=logits.dtype)

    def backward(self, g):
        xp = array_module(g)
        log_p, safe_target, w, denom = self.saved
        grad = xp.exp(log_p)
        xp.put_along_axis(grad, safe_target[..., None],
                          xp.take_along_axis(grad, safe_target[..., None], axis=-1) - 1, axis=-1)
        scale = w / denom if denom > 0 else w * 0
        return xp.moveaxis(grad * (g * scale)[..., None], -1, 1), None


def softmax_cross_entropy(logits, target, ignore_index=255, reduction="mean", weight=None):
    """Mean (over non-ignored pixels, weighted) or summed cross-entropy.

    logits (N, K, ...) scores, target (N, ...) integer labels in [0, K) or
    ``ignore_index``. With reduction="mean" the sum is divided by the total
    weight of the valid pixels (PyTorch's convention); a batch with no valid
    pixel has loss 0 and gradient 0.
    """
    z, t = as_array(logits), as_array(target)
    if z.ndim < 2:
        raise ValueError(f"logits must be (N, K, ...), got shape {z.shape}")
    if t.shape != z.shape[:1] + z.shape[2:]:
        raise ValueError(f"target shape {t.shape} does not match logits shape {z.shape} "
                         f"(expected {z.shape[:1] + z.shape[2:]})")
    if t.dtype.kind not in "iu":
        raise ValueError(f"target must hold integer labels, got dtype {t.dtype}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    K = z.shape[1]
    bad = ((t < 0) | (t >= K)) & (t != ignore_index)
    if bad.any():
        values = sorted({int(v) for v in t[bad][:1000].tolist()})[:10]
        raise ValueError(f"target values {values} are outside [0, {K}) and are not ignore_index={ignore_index}")
    if weight is not None:
        weight = as_array(weight)
        if weight.shape != (K,):
            raise ValueError(f"class weight of shape {weight.shape} does not match {K} classes")
    return SoftmaxCrossEntropy.apply(logits, Tensor(t.astype(np.int64)), ignore_index=ignore_index,
                                     reduction=reduction, weight=weight)
