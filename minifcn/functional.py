"""The ops of a fully convolutional network, each a Function with its backward.

Every function here takes Tensors (an ndarray argument is a constant) and
returns a Tensor; ``im2col``/``col2im`` work on plain arrays.
"""

import math

import numpy as np

from . import backend, workspace
from .arrays import array_module, as_array, to_host
from .autograd import Function, Tensor
from .conv_arithmetic import conv_geometry, conv_output_size, conv_transpose_output_size, pair
from .im2col import col2im, im2col

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


class Conv2d(Function):
    """y[n, o] = sum_{c,i,j} w[o, c, i, j] * x[n, c, oh*s - p + i*d, ow*s - p + j*d] + b[o].

    The arithmetic is the backend's (``kernels/reference.py`` has the textbook
    im2col + GEMM); ``workspace`` runs it in pieces that fit the memory limit.
    The input is kept for the weight gradient, not its im2col columns.
    """

    def forward(self, x, w, b=None, stride=1, padding=0, dilation=1):
        _check_conv_operands(x, w, b, 1, "conv2d")
        geo = conv_geometry(x.shape, w.shape[2:], stride, padding, dilation)  # checks, and names bad input
        self.params = geo.stride, geo.padding, geo.dilation
        y = workspace.conv2d(x, w, *self.params)
        if b is not None:
            y += b.reshape(1, -1, 1, 1)
        self.x_shape, self.w = x.shape, w
        self.x = x if self.needs_grad[1] else None  # kept only if dW is wanted
        return y

    def backward(self, g):
        dx = workspace.conv2d_input_grad(g, self.w, self.x_shape, *self.params) if self.needs_grad[0] else None
        dw = workspace.conv2d_weight_grad(g, self.x, self.w.shape, *self.params) if self.needs_grad[1] else None
        db = g.sum(axis=(0, 2, 3)) if len(self.needs_grad) > 2 and self.needs_grad[2] else None
        return dx, dw, db


class ConvTranspose2d(Function):
    """The adjoint of Conv2d: forward is conv2d's input gradient, backward is conv2d.

    Weights are (Cin, Cout, kh, kw): seen as a conv2d weight they map Cout
    channels to Cin, and this op applies that convolution's transpose. With
    output_padding, that convolution may produce more rows than x has (for
    stride 1 and dilation > 1 it always does): x is taken to be zero there.
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
        geo = conv_geometry(out_shape, w.shape[2:], (sh, sw), (ph, pw), (dh, dw))
        self.params, self.x_hw = (geo.stride, geo.padding, geo.dilation), (H, W)
        if geo.out != (H, W):
            x = array_module(x).pad(x, ((0, 0), (0, 0), (0, geo.out[0] - H), (0, geo.out[1] - W)))
        y = workspace.conv2d_input_grad(x, w, out_shape, *self.params)
        if b is not None:
            y += b.reshape(1, -1, 1, 1)
        self.x, self.w = (x if self.needs_grad[1] else None), w
        return y

    def backward(self, g):
        H, W = self.x_hw
        dx = workspace.conv2d(g, self.w, *self.params)[:, :, :H, :W] if self.needs_grad[0] else None
        dw = workspace.conv2d_weight_grad(self.x, g, self.w.shape, *self.params) if self.needs_grad[1] else None
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


def conv_transpose2d_per_channel(x, kernel, stride=1, padding=0, output_padding=0):
    """conv_transpose2d(x, w) for w[c, c] = kernel and w[c, d] = 0 (c != d): each channel upsampled by itself
    with one (kh, kw) kernel, as FCN's fixed bilinear upsampling does class by class.

    The C channels become C images of one channel, so the work is 1/C of the full transposed
    convolution's, which spends the rest multiplying by zeros (33 classes: 33 times the multiply-adds).
    The kernel is a constant: no gradient reaches it.
    """
    N, C, H, W = x.shape
    w = as_array(kernel)
    y = conv_transpose2d(x.reshape(N * C, 1, H, W), w.reshape((1, 1) + w.shape), None, stride, padding, output_padding)
    return y.reshape(N, C, *y.shape[2:])


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
        if kh * kw > 256:  # every backend keeps the arg-max's place in its window in one byte
            raise ValueError(f"max_pool2d: kernel_size {(kh, kw)} has {kh * kw} places; at most 256 are supported")
        N, C, H, W = x.shape
        OH, OW = pool_output_size(H, kh, sh, ph, ceil_mode), pool_output_size(W, kw, sw, pw, ceil_mode)
        if OH < 1 or OW < 1:  # ceil mode lets one window overhang; floor mode needs a whole one
            raise ValueError(f"max_pool2d: kernel {(kh, kw)} is larger than the padded input "
                             f"{(H + 2 * ph, W + 2 * pw)} of shape {x.shape}")
        self.geometry = (kh, kw), (sh, sw), (ph, pw), x.shape
        y, self.argmax = backend.ops().max_pool(x, (kh, kw), (sh, sw), (ph, pw), (OH, OW))
        return y

    def backward(self, g):
        kernel, stride, padding, x_shape = self.geometry
        return backend.ops().max_pool_backward(g, self.argmax, x_shape, kernel, stride, padding)


def max_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False):
    return MaxPool2d.apply(x, kernel_size=kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode)


class ReLU(Function):
    """max(x, 0). It keeps its output for backward: the next conv keeps that same array anyway."""

    def forward(self, x):
        self.y = backend.ops().relu(x)
        return self.y

    def backward(self, g):
        return backend.ops().relu_backward(g, self.y)


def relu(x):
    return ReLU.apply(x)


def dropout(x, p, training, rng, shard=None):
    """Inverted dropout: zero each unit with probability p, scale the rest by 1/(1-p).

    The scaling keeps E[output] = input, so evaluation needs no rescaling. ``shard = (start, total)``:
    ``x`` is rows start ... of a batch of ``total``; the mask is drawn for all of it, these rows kept.
    """
    if not 0 <= p < 1:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if not training or p == 0:
        return x
    x = x if isinstance(x, Tensor) else Tensor(x)
    if shard is None:
        keep = rng.random(x.shape) >= p
    else:
        start, total = shard
        keep = rng.random((total,) + x.shape[1:])[start:start + x.shape[0]] >= p
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


class BatchNorm(Function):
    """y = gamma (x - mean) / sqrt(var + eps) + beta, per channel, over the batch and the pixels.

    In training the mean and (biased) variance are the batch's own, so every output depends on every
    input of its channel (the gradient is in ``kernels.reference.batch_norm_backward``). In evaluation
    the running statistics are constants, and the layer is a per-channel affine map.
    """

    def forward(self, x, gamma, beta, running_mean=None, running_var=None, training=True, momentum=0.1, eps=1e-5):
        xp, ops = array_module(x), backend.ops()
        if training:
            mean, var = ops.batch_norm_stats(x)
            m = x.size // x.shape[1]
            running_mean *= 1 - momentum
            running_mean += momentum * mean
            running_var *= 1 - momentum
            running_var += momentum * var * (m / max(m - 1, 1))  # the running variance is the unbiased one
        else:
            mean, var = running_mean, running_var
        self.invstd = (1 / xp.sqrt(var + eps)).astype(x.dtype)
        y, self.xhat = ops.batch_norm_forward(x, xp.asarray(mean, x.dtype), self.invstd, gamma, beta)
        self.gamma, self.training = gamma, training
        return y

    def backward(self, g):
        return backend.ops().batch_norm_backward(g, self.xhat, self.gamma, self.invstd, self.training)


def batch_norm(x, weight, bias, running_mean, running_var, training=True, momentum=0.1, eps=1e-5):
    """Batch normalisation (Ioffe & Szegedy 2015) of (N, C, H, W) ``x``; in training the running statistics
    (plain arrays, updated in place) move ``momentum`` of the way to the batch's."""
    x = x if isinstance(x, Tensor) else Tensor(x)
    if x.ndim != 4 or weight.shape != (x.shape[1],):
        raise ValueError(f"batch_norm: expected (N, {weight.shape[0]}, H, W) input, got shape {x.shape}")
    if training and x.data.size // x.shape[1] < 2:
        raise ValueError(f"batch_norm: a batch of shape {x.shape} has one value per channel, no variance to "
                         f"normalise by; train with more than one pixel or image")
    return BatchNorm.apply(x, weight, bias, running_mean=running_mean, running_var=running_var, training=training,
                           momentum=momentum, eps=eps)


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

    def forward(self, logits, target, ignore_index=255, reduction="mean", weight=None, denominator=None):
        xp = array_module(logits)
        N, K = logits.shape[:2]
        z, t = logits.reshape(N, K, -1), xp.asarray(target).reshape(N, -1)
        weight = xp.ones(K, logits.dtype) if weight is None else xp.asarray(weight, dtype=logits.dtype)
        total, denom = backend.ops().softmax_xent(z, t, weight, ignore_index)
        if reduction == "sum":
            denom = logits.dtype.type(1)
        elif denominator is not None:
            denom = denominator
        self.saved, self.shape = (z, t, weight, ignore_index, float(denom)), logits.shape
        return xp.asarray(total / denom if denom > 0 else total * 0, dtype=logits.dtype)

    def backward(self, g):
        z, t, weight, ignore_index, denom = self.saved
        scale = float(g) / denom if denom > 0 else 0.0
        return backend.ops().softmax_xent_backward(z, t, weight, ignore_index, scale).reshape(self.shape), None


def argmax_classes(scores):
    """Each pixel's class from (N, K, H, W) scores: argmax over K (the first of equal scores), as a host array
    (N, H, W). A kernel of the backend's: NumPy's argmax over the middle axis reads memory across the grain
    (70 ms a training step at 256 x 256, batch 8, 33 classes; the kernel 7 ms)."""
    z = scores.data if isinstance(scores, Tensor) else scores
    N, K = z.shape[:2]
    return to_host(backend.ops().argmax_classes(z.reshape(N, K, -1))).reshape((N,) + z.shape[2:])


def pixel_weight(target, weight=None, ignore_index=255):
    """The labelled pixels of ``target``, each counted with its class weight: what reduction="mean" divides by."""
    t = to_host(target)
    valid = t[t != ignore_index].astype(np.int64)
    if weight is None:
        return float(valid.size)
    w = to_host(weight).astype(np.float64)
    return float(w[valid].sum())


def softmax_cross_entropy(logits, target, ignore_index=255, reduction="mean", weight=None, denominator=None):
    """Mean (over non-ignored pixels, weighted) or summed cross-entropy.

    logits (N, K, ...) scores, target (N, ...) integer labels in [0, K) or
    ``ignore_index``. With reduction="mean" the sum is divided by the total
    weight of the valid pixels (PyTorch's convention); a batch with no valid
    pixel has loss 0 and gradient 0. ``denominator``: divide by this instead
    -- the valid pixels' weight of a larger batch these rows are part of
    (data parallelism: the ranks' losses then add up to the batch's mean).
    """
    z, t = as_array(logits), as_array(target)
    if z.ndim < 2:
        raise ValueError(f"logits must be (N, K, ...), got shape {z.shape}")
    if z.dtype.kind != "f":  # an integer loss would round, and its gradient would be zero
        raise ValueError(f"logits must be floating point, got dtype {z.dtype}")
    if t.shape != z.shape[:1] + z.shape[2:]:
        raise ValueError(f"target shape {t.shape} does not match logits shape {z.shape} "
                         f"(expected {z.shape[:1] + z.shape[2:]})")
    if t.dtype.kind not in "iu":
        raise ValueError(f"target must hold integer labels, got dtype {t.dtype}")
    if z.shape[0] == 0 or math.prod(z.shape[2:]) == 0:
        raise ValueError(f"an empty batch (logits of shape {z.shape}) has no loss: skip it rather than train on it")
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
        host = to_host(weight).astype(np.float64)
        if not np.isfinite(host).all() or (host < 0).any() or not host.any():
            raise ValueError(f"class weights must be finite, >= 0 and not all 0 (a negative weight turns the loss "
                             f"into a reward; all 0 learns nothing), got {host.tolist()[:8]}")
    if denominator is not None and not (math.isfinite(denominator) and denominator >= 0):
        raise ValueError(f"denominator must be a finite number >= 0, got {denominator!r}")
    return SoftmaxCrossEntropy.apply(logits, Tensor(t.astype(np.int64)), ignore_index=ignore_index,
                                     reduction=reduction, weight=weight, denominator=denominator)
