"""Compile the Numba kernels on every core at once, the first time a dtype meets them on this machine.

A cold start is mostly compilation: about a dozen parallel kernels of about a second each (2-core Zen 4),
compiled one after another as the first training step meets them, on one core while the others wait.
Numba compiles one function at a time in a process, but its disk cache is shared by processes. So the
first op of a dtype with nothing on record here splits the kernels into shares (``TASKS``: each runs one
or more kernels on a tiny input, through the same wrappers a model calls, so they compile for the same
argument types), compiles one share itself and hands the others to helper processes, one for each further
thread minifcn may use (``python -m minifcn.kernels.precompile MODULE DTYPE TASK...``). When all are done, a
kernel the main process has not compiled loads from the cache in milliseconds. Nothing is timed while the
helpers run, so autotune measures on quiet cores.

What has been done is recorded per CPU, kernel code, Numba cache folder and dtype in
``$MINIFCN_CACHE_DIR/precompiled/`` (default ~/.cache/minifcn), so later processes skip it. Batch norm,
which only pretraining uses, is a group of its own, compiled when a batch-norm op first runs, and so is
Winograd's route, which only wide layers take (128 channels, or 64 on large maps). Off with
``MINIFCN_PRECOMPILE=0``, and under an MPI launcher (its ranks already compile side by side). If a helper
fails, its kernels compile on first use, as they would without any of this.
"""

import hashlib
import json
import os
import subprocess
import sys
import time
import warnings

import numpy as np

from .. import atomic
from ..conv_arithmetic import conv_geometry

HELPER_TIMEOUT = 600.0  # seconds; a helper past this is stopped and its kernels compile on first use
HELPER_START = 0.7  # what starting a helper costs, in the units of TASKS' costs (about a second each)


def _zeros(dtype, *shape):
    return np.zeros(shape, dtype)


def _tiles(kernels, dtype):
    """The forward tile every stride-1 layer can take (this CPU's width, 8 channels, one row; the padded copy
    with it) and the 3x3 weight-gradient tile."""
    numba_tiled = kernels.numba_tiled
    x, w = _zeros(dtype, 1, 1, 4, 4), _zeros(dtype, 1, 1, 3, 3)
    numba_tiled.conv2d(x, w, (1, 1), (1, 1), 1)
    numba_tiled.conv2d_weight_grad(x, x, w.shape, (1, 1), (1, 1))


def _more_tiles(kernels, dtype):
    """The other forward tiles worth trying on this CPU (two rows, 16 channels; AVX2's wider rows)."""
    numba_tiled = kernels.numba_tiled
    x, w = _zeros(dtype, 1, 1, 4, 4), _zeros(dtype, 1, 1, 3, 3)
    for name in [n for n in numba_tiled.forward_tiles() if n != "tiled"]:
        channels, rows, vectors = numba_tiled.FORWARD_TILES[name]
        numba_tiled.conv2d(x, w, (1, 1), (1, 1), rows, channels=channels, vectors=vectors)


def _side(kernels, dtype):
    """The copies that lay small maps side by side for the tiles, and back."""
    kernels.side_by_side.conv2d(_zeros(dtype, 2, 1, 4, 4), _zeros(dtype, 1, 1, 3, 3), (1, 1), (1, 1))


def _winograd(numba_cpu, dtype):
    x = _zeros(dtype, 1, 1, 4, 4)
    numba_cpu.winograd.conv2d(x, _zeros(dtype, 1, 1, 3, 3), (1, 1))
    numba_cpu.winograd.conv2d_weight_grad(x, x, (1, 1, 3, 3), (1, 1))


def _im2col(numba_cpu, dtype):
    numba_cpu.im2col(_zeros(dtype, 1, 1, 4, 4), 3, 1, 1, 1)


def _col2im(numba_cpu, dtype):
    numba_cpu.col2im(_zeros(dtype, 1, 9, 16), (1, 1, 4, 4), 3, 1, 1, 1)


def _phases(numba_cpu, dtype):
    geo = conv_geometry((1, 1, 4, 4), (2, 2), 2, 0, 1)
    numba_cpu.from_phases(numba_cpu.to_phases(_zeros(dtype, 1, 1, 4, 4), geo), geo, (1, 1, 4, 4))


def _pool(numba_cpu, dtype):
    numba_cpu.max_pool(_zeros(dtype, 1, 1, 4, 4), (3, 3), (2, 2), (1, 1), (2, 2))  # any window
    y, argmax = numba_cpu.max_pool(_zeros(dtype, 1, 1, 4, 4), (2, 2), (2, 2), (0, 0), (2, 2))  # VGG's
    numba_cpu.max_pool_backward(y, argmax, (1, 1, 4, 4), (2, 2), (2, 2), (0, 0))


def _relu(numba_cpu, dtype):
    numba_cpu.relu_backward(numba_cpu.relu(_zeros(dtype, 1, 1, 2, 2)), _zeros(dtype, 1, 1, 2, 2))


def _loss(numba_cpu, dtype):
    z, t, weight = _zeros(dtype, 1, 2, 3), np.zeros((1, 3), np.int64), np.ones(2)
    numba_cpu.softmax_xent(z, t, weight, 255)
    numba_cpu.softmax_xent_backward(z, t, weight, 255, 1.0)


def _argmax(numba_cpu, dtype):
    numba_cpu.argmax_classes(_zeros(dtype, 1, 2, 3))


def _batch_norm(numba_cpu, dtype):
    x, v = _zeros(dtype, 2, 1, 2, 2), np.ones(1, dtype)
    mean, var = numba_cpu.batch_norm_stats(x)
    y, xhat = numba_cpu.batch_norm_forward(x, mean, v, v, v)
    numba_cpu.batch_norm_backward(y, xhat, v, v, True)


# name: (what it runs, its cost: seconds to compile it alone, on one thread of a 2-core Zen 4 (session 21; loss
# and argmax session 22; batch norm and Winograd, session 14's estimate in kernels of about a second))
TASKS = {"tiles": (_tiles, 3.6), "more_tiles": (_more_tiles, 2.7), "side": (_side, 1.8), "loss": (_loss, 2.6),
         "argmax": (_argmax, 1.4), "phases": (_phases, 2.0), "pool": (_pool, 3.2), "im2col": (_im2col, 1.4),
         "col2im": (_col2im, 1.0), "relu": (_relu, 0.7), "batch_norm": (_batch_norm, 4.0), "winograd": (_winograd, 6.0)}
GROUPS = {"fcn": ("tiles", "more_tiles", "side", "loss", "argmax", "phases", "pool", "im2col", "col2im", "relu"),
          "batch_norm": ("batch_norm",), "winograd": ("winograd",)}
_state = {"seen": set(), "done": set(), "reports": []}


def group_of(op):
    """The group whose kernels ``op`` needs first: batch norm's own, Winograd's (a route only wide layers
    take, "winograd"), or the rest (what an FCN runs)."""
    return "batch_norm" if op.startswith("batch_norm") else "winograd" if op == "winograd" else "fcn"


def enabled():
    """On, unless MINIFCN_PRECOMPILE=0, under an MPI launcher, or in a frozen app (no Python to start)."""
    from .. import launcher
    off = os.environ.get("MINIFCN_PRECOMPILE", "1").strip().lower() in ("0", "false", "no", "off")
    return not off and launcher.launched_size() == 1 and not getattr(sys, "frozen", False)


def workers():
    """As many processes as threads minifcn may use (``set_num_threads``), and no more than the cores this
    process may run on (its affinity, where the OS tells it)."""
    import numba
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, numba.get_num_threads()))


def marker_path(group, dtype):
    """Where a finished precompile of ``group`` in ``dtype`` is recorded: per CPU, kernel code, Numba's
    cache folder and version (the kernels it holds are what the record stands for)."""
    import numba
    from . import autotune
    who = {**autotune.identity(0), "numba": numba.__version__, "numba_cache": numba.config.CACHE_DIR,
           "python": sys.version_info[:2]}
    digest = hashlib.sha256(json.dumps(who, sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(autotune.cache_root(), "precompiled", f"{group}-{np.dtype(dtype).name}-{digest}")


def shares(names, workers):
    """``names`` split into ``workers`` lists of about equal cost, the largest first (the first list is the
    calling process's, which starts at once; the helpers' start later by ``HELPER_START``)."""
    loads, out = [0.0] + [HELPER_START] * (workers - 1), [[] for _ in range(workers)]
    for name in sorted(names, key=lambda n: -TASKS[n][1]):
        i = loads.index(min(loads))
        loads[i] += TASKS[name][1]
        out[i].append(name)
    return [s for s in out if s]


def ensure(kernels, op, dtype):
    """Before the first ``op`` in ``dtype`` in this process: precompile its group of ``kernels`` (the module
    numba_cpu, handed in: it calls this, so importing it here would make a cycle) unless it is on record."""
    if (op, dtype) in _state["seen"]:  # the common case, once per op call: one set lookup
        return
    _state["seen"].add((op, dtype))
    group = group_of(op)
    key = (group, np.dtype(dtype).name)
    if key in _state["done"]:
        return
    _state["done"].add(key)
    if not enabled():
        return
    path = marker_path(*key)
    if os.path.exists(path):
        return
    run(kernels, GROUPS[group], dtype)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic.write_bytes(path, b"")
    except OSError:  # a read-only cache folder: the next process does it again
        pass


def _helper_command(kernels, dtype, names):
    return [sys.executable, "-m", "minifcn.kernels.precompile", kernels.__name__, np.dtype(dtype).name, *names]


def run(kernels, names, dtype, processes=None):
    """Compile the kernels of ``names`` (keys of TASKS) in ``dtype``: the first share here, the others in
    helper processes at the same time (``processes`` in all, default ``workers()``). Returns a report."""
    started = time.perf_counter()
    parts = shares(names, min(processes or workers(), len(names)))
    if sys.stderr.isatty():
        print(f"minifcn: compiling its kernels for this CPU in {len(parts)} processes (once)", file=sys.stderr)
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "MINIFCN_PRECOMPILE": "0", "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH")) if p)}
    helpers = []
    for part in parts[1:]:
        try:
            helpers.append((part, subprocess.Popen(_helper_command(kernels, dtype, part), env=env, stdin=subprocess.DEVNULL,
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
        except OSError as err:
            warnings.warn(f"minifcn could not start a process to compile kernels {part} ({err}); "
                          "they compile on first use")
    try:
        for name in parts[0]:
            TASKS[name][0](kernels, dtype)
    finally:  # the helpers are waited for even if this share failed: none is left running
        failed = _wait(helpers)
    report = {"dtype": np.dtype(dtype).name, "shares": parts, "failed": failed,
              "seconds": round(time.perf_counter() - started, 2)}
    _state["reports"].append(report)
    return report


def _wait(helpers):
    """Wait for each helper (stopping one past HELPER_TIMEOUT); warn about, and return, the shares that failed."""
    failed = []
    for part, proc in helpers:
        try:
            _, err = proc.communicate(timeout=HELPER_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if proc.returncode != 0:
            failed.append(part)
            last = (err or b"").decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
            warnings.warn(f"minifcn's process compiling kernels {part} failed (exit {proc.returncode}: "
                          f"{last[0]}); they compile on first use")
    return failed


def reports():
    """What this process precompiled: one report per group and dtype (shares, failed helpers, seconds)."""
    return list(_state["reports"])


def _main(argv):
    """python -m minifcn.kernels.precompile MODULE DTYPE TASK...: a helper's share."""
    import importlib
    module, dtype, names = argv[0], argv[1], argv[2:]
    if not module.startswith("minifcn.kernels."):
        sys.exit(f"not a minifcn kernel module: {module}")
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        sys.exit(f"unknown kernel tasks {unknown}; known: {sorted(TASKS)}")
    kernels = importlib.import_module(module)
    for name in names:
        TASKS[name][0](kernels, np.dtype(dtype))


if __name__ == "__main__":
    _main(sys.argv[1:])
