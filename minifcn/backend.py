"""One switch for where the hot loops run: "numpy" (the reference), "numba" (CPU) or "cupy" (GPU).

    minifcn.set_backend("numba")      # or MINIFCN_BACKEND=numba in the environment
    minifcn.get_backend()             # -> "numba"

The default is the fastest CPU backend installed (numba, else numpy). The
backend decides two things: which kernels ``minifcn.functional`` calls (see
``minifcn.kernels``) and which array module new Tensors live in (NumPy, or
CuPy on the GPU). Results never depend on it beyond float rounding.

Memory: a convolution never unfolds more than ``workspace_limit()`` bytes of
im2col columns at once; bigger inputs are done in chunks of batch items and
output rows. Threads: Numba kernels and BLAS GEMMs run one after the other,
never nested, so both may use every core (idle threads of either sleep, see
minifcn/__init__.py); ``set_num_threads`` sets both.
"""

import importlib
import os
import warnings

import numpy as np

from . import arrays
from .kernels import OPS, reference

BACKENDS = ("numpy", "numba", "cupy")
DEFAULT_WORKSPACE_MB = 128
_state = {"name": None, "ops": None, "workspace": DEFAULT_WORKSPACE_MB << 20}
_environment_errors = []  # one line per environment variable that could not be used (see environment_errors)


def available(name):
    """Whether backend ``name`` can run here (its package imports; for cupy, a CUDA device exists)."""
    try:
        if name == "numba":
            importlib.import_module("numba")
        elif name == "cupy":
            cupy = importlib.import_module("cupy")
            return cupy.cuda.runtime.getDeviceCount() > 0
        return name in BACKENDS
    except Exception:  # ImportError, or CUDA present but unusable
        return False


def _namespace(module, name):
    """Every op: the backend's own kernel where it has one, else the reference.

    A backend whose kernels compute only in some float types (``FLOAT_DTYPES``: Numba has no float16)
    refuses other floats by op and dtype, instead of failing somewhere inside the compiler. A backend
    with a ``prepare(op, dtype)`` gets it called before an op's float arrays are handed to its kernels
    (Numba: compile every kernel at once on the first op of a dtype, see kernels/precompile.py). Ops the
    backend names ``UNCOMPILED`` (Numba's BLAS product) take any dtype and need no preparing.
    """
    supported = getattr(module, "FLOAT_DTYPES", None)
    uncompiled = getattr(module, "UNCOMPILED", ())
    prepare = getattr(module, "prepare", None)

    def checked(op, fn):
        def run(*args, **kwargs):
            for a in args:
                if getattr(a, "dtype", None) is not None and a.dtype.kind == "f":
                    if a.dtype not in supported:
                        raise TypeError(f"{op}: the {name} backend computes in "
                                        f"{' or '.join(np.dtype(d).name for d in supported)}, not {a.dtype}; "
                                        f"cast the data (x.astype(np.float32)) or use minifcn.set_backend('numpy')")
                    if prepare is not None:
                        prepare(op, a.dtype)
            return fn(*args, **kwargs)
        return run

    ops = {op: getattr(module, op, getattr(reference, op)) for op in OPS}
    return type("Ops", (), {op: staticmethod(checked(op, fn) if supported and op not in uncompiled else fn)
                               for op, fn in ops.items()})


def set_backend(name):
    """Select "numpy", "numba" or "cupy"; raises with the reason if it cannot run here."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")
    if not available(name):
        need = {"numba": "pip install numba", "cupy": "a CUDA GPU and pip install 'minifcn[gpu]'"}[name]
        raise RuntimeError(f"backend {name!r} is not available here (needs {need})")
    if name == "numpy":
        ops, xp = reference, np
    elif name == "numba":
        ops, xp = importlib.import_module(".kernels.numba_cpu", __package__), np
    else:
        ops, xp = importlib.import_module(".kernels.cuda", __package__), importlib.import_module("cupy")
    _state.update(name=name, ops=_namespace(ops, name))
    arrays.set_default_module(xp)
    return name


def get_backend():
    return _state["name"]


def ops():
    """The current backend's kernels (``ops().im2col(...)``)."""
    return _state["ops"]


def xp():
    """The array module new Tensors use: numpy, or cupy for the GPU backend."""
    return arrays.default_module()


def workspace_limit():
    """Most bytes of im2col columns a convolution holds at once (default 128 MiB, MINIFCN_WORKSPACE_MB)."""
    return _state["workspace"]


def set_workspace_limit(nbytes):
    if nbytes < 1:
        raise ValueError(f"workspace limit must be a positive number of bytes, got {nbytes}")
    _state["workspace"] = int(nbytes)


def set_num_threads(n):
    """Use ``n`` threads in Numba kernels and in BLAS (through threadpoolctl when it is installed)."""
    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    try:
        import numba
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(n)
    except ImportError:
        pass


def set_autotune(on=True):
    """Choose each convolution's route by measuring the candidates on this CPU (True, the default; the
    choices are kept on disk, see minifcn/kernels/autotune.py) or by a fixed rule of shapes (False).
    ``MINIFCN_AUTOTUNE=0`` sets False for a whole run. Only the Numba backend has routes to choose."""
    from .kernels import autotune
    autotune.set_autotune(on)


def environment_errors():
    """One line per MINIFCN_* variable whose value could not be used (its default was used instead).

    Importing minifcn never fails for the environment (a warning says what was ignored); the command
    line refuses to run with these lines, exit 2, yet ``--help`` always works."""
    return list(_environment_errors)


def _from_environment():
    """Read MINIFCN_WORKSPACE_MB (a whole number of MiB >= 1) and MINIFCN_BACKEND (one of BACKENDS, available
    here) strictly; a bad value is recorded, warned about, and replaced by the default."""
    mb = os.environ.get("MINIFCN_WORKSPACE_MB", "").strip()
    if mb:
        if mb.isdigit() and int(mb) >= 1:
            _state["workspace"] = int(mb) << 20
        else:
            _environment_errors.append(f"MINIFCN_WORKSPACE_MB={mb!r} must be a whole number of MiB >= 1 "
                                       f"(default {DEFAULT_WORKSPACE_MB})")
    name, chosen = os.environ.get("MINIFCN_BACKEND", "").strip(), None
    if name:
        try:
            chosen = set_backend(name)
        except (ValueError, RuntimeError) as err:
            _environment_errors.append(f"MINIFCN_BACKEND={name!r}: {err}")
    for line in _environment_errors:
        warnings.warn(f"{line}; using the default", RuntimeWarning, stacklevel=2)
    if chosen is None:
        set_backend("numba" if available("numba") else "numpy")


_from_environment()
