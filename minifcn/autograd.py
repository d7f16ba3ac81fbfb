"""A small reverse-mode autograd engine on plain ndarrays.

A ``Tensor`` wraps an array. Every operation is a ``Function`` with a
``forward`` on arrays and a ``backward`` that maps the gradient of the output
to the gradients of the inputs (the chain rule, one op at a time). Calling
``forward`` through ``Function.apply`` records the op in the output tensor, so
``loss.backward()`` can walk the recorded graph in reverse topological order.

The engine knows nothing about convolutions: those live in
``minifcn.functional`` as ordinary Functions.
"""

import contextlib

import numpy as np

from .arrays import array_module, as_array, to_default_module  # noqa: F401  (array_module: re-exported)

_grad_enabled = True


@contextlib.contextmanager
def no_grad():
    """Run a block without recording the graph (evaluation, weight surgery)."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


def is_grad_enabled():
    return _grad_enabled


class Tensor:
    """An array with an optional gradient and a link to the op that made it."""

    __array_priority__ = 1000  # so that ndarray + Tensor calls Tensor.__radd__

    def __init__(self, data, requires_grad=False):
        data = as_array(data)
        if data.dtype.kind not in "fiub":  # complex, object, text, dates: no kernel computes in these
            raise TypeError(f"a Tensor holds real numbers (float, int or bool), not {data.dtype}")
        self.data = to_default_module(data)
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._ctx = None  # the Function that produced this tensor, if any

    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor(shape={self.shape}, dtype={self.dtype}{grad})"

    def numpy(self):
        """A host (NumPy) copy of the data, also when it lives on a GPU."""
        data = self.data
        return data.get() if hasattr(data, "get") else np.array(data)

    def item(self):
        return self.numpy().item()

    def detach(self):
        return Tensor(self.data)

    def backward(self, grad=None):
        """Accumulate d(self)/d(leaf) into ``leaf.grad`` for every leaf.

        ``grad`` is the gradient flowing into ``self`` (ones for a scalar).
        Nodes are visited in reverse topological order, so each node's
        gradient is complete (summed over all its uses) before it is pushed
        further back.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad")
        if grad is None:
            if self.data.size != 1:
                raise ValueError(f"backward() needs a grad for non-scalar output of shape {self.shape}")
            grad = np.ones_like(self.data)
        grad = as_array(grad)
        if grad.shape != self.shape:
            raise ValueError(f"grad shape {grad.shape} does not match tensor shape {self.shape}")

        order, seen = [], set()

        def visit(node):  # iterative DFS: deep nets must not hit the recursion limit
            stack = [(node, False)]
            while stack:
                current, expanded = stack.pop()
                if expanded:
                    order.append(current)
                elif id(current) not in seen:
                    seen.add(id(current))
                    stack.append((current, True))
                    if current._ctx is not None:
                        stack.extend((p, False) for p in current._ctx.parents if p.requires_grad)

        start = self._node if self._ctx is not None else self
        visit(start)
        grads = {id(start): grad}
        for node in reversed(order):
            g = grads.pop(id(node))
            if node._ctx is None:  # a leaf: keep its gradient
                node.grad = g.copy() if node.grad is None else node.grad + g
                continue
            parent_grads = node._ctx.backward(g)
            if not isinstance(parent_grads, tuple):
                parent_grads = (parent_grads,)
            for parent, pg in zip(node._ctx.parents, parent_grads):
                if parent.requires_grad and pg is not None:
                    key = id(parent)
                    grads[key] = grads[key] + pg if key in grads else pg

    # Operators: each builds a Function node.
    def __add__(self, other): return Add.apply(self, other)
    def __radd__(self, other): return Add.apply(other, self)
    def __sub__(self, other):
        return Add.apply(self, Neg.apply(other) if isinstance(other, Tensor) else -as_array(other))
    def __rsub__(self, other): return Add.apply(other, Neg.apply(self))
    def __neg__(self): return Neg.apply(self)
    def __mul__(self, other): return Mul.apply(self, other)
    def __rmul__(self, other): return Mul.apply(other, self)
    def __truediv__(self, other):
        if isinstance(other, Tensor) and other.requires_grad:
            raise TypeError("division by a Tensor that requires grad is not supported; divide by a constant")
        return Mul.apply(self, 1.0 / as_array(other))
    def __matmul__(self, other): return MatMul.apply(self, other)
    def __rmatmul__(self, other): return MatMul.apply(other, self)
    def __getitem__(self, index): return GetItem.apply(self, index=index)

    def sum(self, axis=None, keepdims=False): return Sum.apply(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        count = self.data.size if axis is None else int(np.prod([self.shape[a] for a in np.atleast_1d(axis)]))
        return self.sum(axis, keepdims) * (1.0 / count)

    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return Reshape.apply(self, shape=tuple(shape))

    def transpose(self, *axes):
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        return Transpose.apply(self, axes=tuple(axes) if axes else None)

    @property
    def T(self):
        return self.transpose()


class _Node:
    """The graph's record of a computed tensor: the op that made it, without its data.

    Ops hold their inputs through these, so an intermediate array is freed as
    soon as neither the user nor an op's saved state needs it (a conv output
    that only fed a ReLU is not kept alive by the graph).
    """

    __slots__ = ("_ctx", "requires_grad")

    def __init__(self, ctx):
        self._ctx, self.requires_grad = ctx, True


def as_tensor(value):
    return value if isinstance(value, Tensor) else Tensor(value)


class Function:
    """One differentiable op: ``forward`` on arrays, ``backward`` on gradients.

    ``forward`` may store on ``self`` what ``backward`` needs. ``backward``
    returns one gradient per tensor input (``None`` where none is needed;
    ``self.needs_grad[i]`` says whether input ``i`` wants one, so work for a
    frozen input is never done).
    """

    def forward(self, *arrays, **params):
        raise NotImplementedError

    def backward(self, grad):
        raise NotImplementedError

    @classmethod
    def apply(cls, *inputs, **params):
        tensors = _scalars_follow([as_tensor(x) for x in inputs], inputs)
        fn = cls()
        fn.needs_grad = [t.requires_grad for t in tensors]
        out = Tensor(fn.forward(*(t.data for t in tensors), **params))
        if _grad_enabled and any(fn.needs_grad):
            out.requires_grad = True
            out._ctx, out._node = fn, _Node(fn)
            fn.parents = [t if t._ctx is None else t._node for t in tensors]
        return out


def _scalars_follow(tensors, inputs):
    """A floating constant scalar (0-d) takes the floating dtype of the op's tensors, as in PyTorch: ``x * 0.5``
    and ``x * np.float64(0.5)`` stay float32 for a float32 ``x`` (NumPy 2 would promote the second, and a
    float64 result would double the cost of every op after it)."""
    floating = [t.data.dtype for t, x in zip(tensors, inputs) if x is t and t.data.dtype.kind == "f"]
    if not floating:
        return tensors
    return [Tensor(t.data.astype(floating[0])) if x is not t and t.data.ndim == 0 and t.data.dtype.kind == "f"
            and t.data.dtype != floating[0] else t for t, x in zip(tensors, inputs)]


def unbroadcast(grad, shape):
    """Sum ``grad`` down to ``shape``: the adjoint of NumPy broadcasting."""
    while grad.ndim > len(shape):
        grad = grad.sum(axis=0)
    for axis, size in enumerate(shape):
        if size == 1 and grad.shape[axis] != 1:
            grad = grad.sum(axis=axis, keepdims=True)
    return grad


class Add(Function):
    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return a + b

    def backward(self, grad):
        return unbroadcast(grad, self.shapes[0]), unbroadcast(grad, self.shapes[1])


class Neg(Function):
    def forward(self, a):
        return -a

    def backward(self, grad):
        return -grad


class Mul(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, grad):
        da = unbroadcast(grad * self.b, self.a.shape) if self.needs_grad[0] else None
        db = unbroadcast(grad * self.a, self.b.shape) if self.needs_grad[1] else None
        return da, db


class MatMul(Function):
    """C = A @ B for 2-D A, B: dA = dC @ B^T, dB = A^T @ dC. (The backend's product: Numba's keeps BLAS's
    own threads from spinning beside its kernels. In a script that imports numpy before minifcn, NumPy's
    products made the Tiny ImageNet classifier's training step 0.17-0.21 s instead of 0.12-0.15 s on a
    2-core Zen 4.)"""

    def forward(self, a, b):
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
            raise ValueError(f"matmul needs 2-D operands with matching inner sizes, got {a.shape} @ {b.shape}")
        self.a, self.b = a, b
        return _product(a, b)

    def backward(self, grad):
        da = _product(grad, self.b.T) if self.needs_grad[0] else None
        db = _product(self.a.T, grad) if self.needs_grad[1] else None
        return da, db


def _product(a, b):
    from . import backend  # late: the backend's kernels import this module's neighbours
    return backend.ops().matmul(a, b)


class Sum(Function):
    def forward(self, a, axis=None, keepdims=False):
        self.shape, self.axis, self.keepdims = a.shape, axis, keepdims
        return a.sum(axis=axis, keepdims=keepdims)

    def backward(self, grad):
        if self.axis is not None and not self.keepdims:
            grad = grad.reshape([1 if i in np.atleast_1d(self.axis) % len(self.shape) else n
                                 for i, n in enumerate(self.shape)])
        return array_module(grad).broadcast_to(grad, self.shape).copy()


class Reshape(Function):
    def forward(self, a, shape):
        self.shape = a.shape
        return a.reshape(shape)

    def backward(self, grad):
        return grad.reshape(self.shape)


class Transpose(Function):
    def forward(self, a, axes=None):
        self.axes = axes
        return a.transpose(axes)

    def backward(self, grad):
        return grad.transpose(None if self.axes is None else np.argsort(self.axes))


class GetItem(Function):
    """Basic slicing (crop): the gradient is the slice written into zeros."""

    def forward(self, a, index):
        self.shape, self.index = a.shape, index
        return a[index]

    def backward(self, grad):
        full = array_module(grad).zeros(self.shape, dtype=grad.dtype)
        full[self.index] = grad
        return full
