"""Layers: small Modules that own Parameters and call minifcn.functional.

A Module registers every Parameter and sub-Module assigned to it, in
assignment order, so ``state_dict()`` names match the attribute paths
(``conv1_1.weight``) exactly as in PyTorch and the FCN ports.
"""

import numpy as np

from . import functional as F
from .arrays import to_host
from .autograd import Tensor, array_module


class Parameter(Tensor):
    """A Tensor that a Module owns and an optimizer updates (unless frozen)."""

    def __init__(self, data, requires_grad=True):
        super().__init__(data, requires_grad=requires_grad)


class Module:
    def __init__(self):
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if name in self._buffers:  # a buffer stays a buffer: assigning replaces its array
            self._buffers[name] = value
            object.__setattr__(self, name, value)
            return
        for registry in (self._parameters, self._modules):
            registry.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def forward(self, *args):
        raise NotImplementedError

    def __call__(self, *args):
        return self.forward(*args)

    def named_modules(self, prefix=""):
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}{name}.")

    def named_parameters(self):
        for prefix, module in self.named_modules():
            for name, p in module._parameters.items():
                yield prefix + name, p

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def register_buffer(self, name, array):
        """State that is not learned by gradients but saved and loaded with the weights (BatchNorm's running
        statistics)."""
        self._buffers[name] = array
        object.__setattr__(self, name, array)

    def named_buffers(self):
        for prefix, module in self.named_modules():
            for name, b in module._buffers.items():
                yield prefix + name, b

    def train(self, mode=True):
        for _, module in self.named_modules():
            object.__setattr__(module, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def state_dict(self):
        """name -> host ndarray copy, for every parameter (frozen ones included) and buffer."""
        state = {name: p.numpy().copy() for name, p in self.named_parameters()}
        state.update({name: np.array(to_host(b)) for name, b in self.named_buffers()})
        return state

    def load_state_dict(self, state, strict=True):
        """Copy arrays into the parameters and buffers, checking names and shapes; keeps each one's dtype."""
        own = dict(self.named_parameters())
        buffers = {name: (module, name.rsplit(".", 1)[-1]) for prefix, module in self.named_modules()
                   for name in (prefix + b for b in module._buffers)}
        missing = sorted((set(own) | set(buffers)) - set(state))
        unexpected = sorted(set(state) - set(own) - set(buffers))
        if strict and (missing or unexpected):
            raise ValueError(f"state dict mismatch: missing {missing[:8]}, unexpected {unexpected[:8]}")
        for name, value in state.items():
            value = np.asarray(value)
            if name in buffers:
                module, attribute = buffers[name]
                old = module._buffers[attribute]
                if old.shape != value.shape:
                    raise ValueError(f"{name}: checkpoint shape {value.shape} != model shape {old.shape}")
                setattr(module, attribute, array_module(old).asarray(value, dtype=old.dtype).copy())
            elif name in own:
                p = own[name]
                if p.shape != value.shape:
                    raise ValueError(f"{name}: checkpoint shape {value.shape} != model shape {p.shape}")
                p.data = array_module(p.data).asarray(value, dtype=p.dtype).copy()
        return self


def he_normal(rng, shape, fan_in, dtype=np.float32):
    """N(0, 2 / fan_in): keeps activation variance steady through ReLU layers (He et al. 2015)."""
    return (rng.standard_normal(shape, dtype=np.float32) * np.sqrt(2.0 / fan_in)).astype(dtype)


class Conv2d(Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True,
                 rng=None, zero_init=False):
        super().__init__()
        kh, kw = F.pair(kernel_size)
        shape = (out_channels, in_channels, kh, kw)
        rng = rng if rng is not None else np.random.default_rng()
        self.weight = Parameter(np.zeros(shape, np.float32) if zero_init else
                                he_normal(rng, shape, in_channels * kh * kw))
        self.bias = Parameter(np.zeros(out_channels, np.float32)) if bias else None
        self.stride, self.padding, self.dilation = F.pair(stride), F.pair(padding), F.pair(dilation)
        self.kernel_size = (kh, kw)

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)

    def __repr__(self):
        cout, cin = self.weight.shape[:2]
        return f"Conv2d({cin}, {cout}, kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding})"


class ConvTranspose2d(Module):
    """Learned (or frozen) upsampling; weights (Cin, Cout, kh, kw)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0,
                 bias=True, rng=None):
        super().__init__()
        kh, kw = F.pair(kernel_size)
        rng = rng if rng is not None else np.random.default_rng()
        self.weight = Parameter(he_normal(rng, (in_channels, out_channels, kh, kw), in_channels * kh * kw))
        self.bias = Parameter(np.zeros(out_channels, np.float32)) if bias else None
        self.stride, self.padding = F.pair(stride), F.pair(padding)
        self.output_padding, self.kernel_size, self.dilation = F.pair(output_padding), (kh, kw), (1, 1)

    def forward(self, x):
        return self.transpose(x, self.padding)

    def transpose(self, x, padding):
        """The layer's transposed convolution at ``padding`` (FCN.upsample_to crops instead of padding)."""
        kernel = self.shared_kernel()
        if kernel is None:
            return F.conv_transpose2d(x, self.weight, self.bias, self.stride, padding, self.output_padding)
        y = F.conv_transpose2d_per_channel(x, kernel, self.stride, padding, self.output_padding)
        return y if self.bias is None else y + self.bias.reshape(1, -1, 1, 1)

    def shared_kernel(self):
        """The (kh, kw) kernel when the weight is frozen and upsamples each channel by itself with that one
        kernel (w[c, c] = kernel, w[c, d] = 0: FCN's fixed bilinear upsampling), else None. Checked on every
        call, since a frozen weight's values can still be replaced (a checkpoint loaded into the model)."""
        w = self.weight.data
        if self.weight.requires_grad or w.shape[0] != w.shape[1] or w.shape[0] < 2:
            return None
        xp = array_module(w)
        channels = xp.arange(w.shape[0])
        kernel = w[0, 0]
        same = bool((w[channels, channels] == kernel).all())  # then the nonzeros off the diagonal are the excess
        if same and int(xp.count_nonzero(w)) == w.shape[0] * int(xp.count_nonzero(kernel)):
            return kernel
        return None

    def __repr__(self):
        cin, cout = self.weight.shape[:2]
        return f"ConvTranspose2d({cin}, {cout}, kernel_size={self.kernel_size}, stride={self.stride})"


class Linear(Module):
    """y = x W^T + b, the classifier's fully connected layer."""

    def __init__(self, in_features, out_features, rng=None, zero_init=False):
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng()
        shape = (out_features, in_features)
        self.weight = Parameter(np.zeros(shape, np.float32) if zero_init else he_normal(rng, shape, in_features))
        self.bias = Parameter(np.zeros(out_features, np.float32))

    def forward(self, x):
        return x @ self.weight.T + self.bias


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False):
        super().__init__()
        self.kernel_size = F.pair(kernel_size)
        self.stride = F.pair(kernel_size if stride is None else stride)
        self.padding, self.ceil_mode, self.dilation = F.pair(padding), ceil_mode, (1, 1)

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode)

    def __repr__(self):
        return f"MaxPool2d({self.kernel_size}, stride={self.stride}, ceil_mode={self.ceil_mode})"


class ReLU(Module):
    def forward(self, x):
        return F.relu(x)


class Dropout(Module):
    """Drops units in training mode only. ``generator`` is reseeded by the trainer for exact resumes.

    ``shard = (start, total)``: this input is rows start ... of a batch of ``total`` split across
    processes; the mask is drawn for the whole batch and these rows kept, so every split draws the
    mask one process would (``minifcn.distributed``)."""

    def __init__(self, p=0.5, seed=0):
        super().__init__()
        self.p, self.generator, self.shard = p, np.random.default_rng(seed), None

    def forward(self, x):
        return F.dropout(x, self.p, self.training, self.generator, self.shard)


class BatchNorm2d(Module):
    """Per-channel batch normalisation with a learned scale and shift (``F.batch_norm``).

    Training normalises with the batch's statistics and moves the running ones towards them; eval mode
    uses the running ones, which makes the layer a fixed per-channel affine map: ``fold_batchnorm``
    folds it into the convolution before it, so a trained net keeps the paper's layers.
    """

    def __init__(self, channels, momentum=0.1, eps=1e-5):
        super().__init__()
        self.weight = Parameter(np.ones(channels, np.float32))
        self.bias = Parameter(np.zeros(channels, np.float32))
        self.register_buffer("running_mean", np.zeros(channels, np.float32))
        self.register_buffer("running_var", np.ones(channels, np.float32))
        self.momentum, self.eps = momentum, eps

    def forward(self, x):
        return F.batch_norm(x, self.weight, self.bias, self.running_mean, self.running_var, self.training,
                            self.momentum, self.eps)


def fold_batchnorm(conv, bn):
    """The convolution equal to ``conv`` followed by ``bn`` in eval mode: a new Conv2d.

    With s = gamma / sqrt(running_var + eps) per output channel,
    bn(conv(x)) = s (W * x + b - mean) + beta = (s W) * x + (s (b - mean) + beta).
    """
    xp = array_module(conv.weight.data)
    scale = bn.weight.data / xp.sqrt(xp.asarray(bn.running_var) + bn.eps)
    bias = conv.bias.data if conv.bias is not None else xp.zeros_like(scale)
    folded = Conv2d(conv.weight.shape[1], conv.weight.shape[0], conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation)
    folded.weight = Parameter((conv.weight.data * scale.reshape(-1, 1, 1, 1)).astype(conv.weight.dtype))
    folded.bias = Parameter((scale * (bias - xp.asarray(bn.running_mean)) + bn.bias.data).astype(conv.weight.dtype))
    return folded


class Sequential(Module):
    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            setattr(self, str(i), m)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x
