"""Compile the Numba kernels on every core at once, the first time a dtype meets them on this machine.

A cold start is mostly compilation: about a dozen parallel kernels of about a second each (2-core Zen 4),
compiled one after another as the first training step meets them, on one core while the others wait.
Numba compiles one function at a time in a process, but its disk cache is shared by processes. So the
first op of a dtype with nothing on record here starts a helper process for each further thread minifcn
may use (``python -m minifcn.kernels.precompile MODULE DTYPE --claims DIR TASK...``), and every process,
this one included, takes the next task of ``TASKS`` that no other has claimed, the costliest first (each
runs one or more kernels on a tiny input, through the same wrappers a model calls, so they compile for
the same argument types). A claim is a file made with O_EXCL, so no task runs twice, and a process that
finishes early takes more: the work balances itself on any CPU, whatever each kernel costs to compile
there (a fixed split by costs measured on one machine left one process about 5 s behind on another). When all
are done, a kernel the main process has not compiled loads from the cache in milliseconds. Nothing is
timed while the helpers run, so autotune measures on quiet cores.

What has been done is recorded per CPU, kernel code, Numba cache folder and dtype in
``$MINIFCN_CACHE_DIR/precompiled/`` (default ~/.cache/minifcn), so later processes skip it. Batch norm,
which only pretraining uses, is a group of its own, compiled when a batch-norm op first runs, and so is
Winograd's route, which only wide layers take (128 channels, or 64 on large maps), and so are pools other
than VGG's 2x2 (no model of minifcn's has one: 1.2 s of compiling that a cold start need not wait for). Off with
``MINIFCN_PRECOMPILE=0``, and under an MPI launcher (its ranks already compile side by side). If a helper
fails, its kernels compile on first use, as they would without any of this.
"""

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

from .. import atomic
from ..conv_arithmetic import conv_geometry

HELPER_TIMEOUT = 600.0  # seconds; a helper past this is stopped and its kernels compile on first use


def _zeros(dtype, *shape):
    return np.zeros(shape, dtype)


def _tiles(kernels, dtype):
    """The forward tile every stride-1 layer can take (this CPU's width, 8 channels, one row; the padded copy
    with it) and the 3x3 weight-gradient tile."""
    numba_tiled = kernels.numba_tiled
    x, w = _zeros(dtype, 1, 1, 4, 4), _zeros(dtype, 1, 1, 3, 3)
    numba_tiled.conv2d(x, w, (1, 1), (1, 1), 1)
    numba_tiled.conv2d_weight_grad(x, x, w.shape, (1, 1), (1, 1))


def _strided(kernels, dtype):
    """The tiles' padded copy of a strided view: the cropped gradient the sub-pixel route's flipped pass hands
    on. Another specialization of the copy, it compiled for 1.4-1.6 s in the middle of the first step's
    route measuring until it had a task."""
    kernels.numba_tiled._placed(_zeros(dtype, 1, 1, 5, 5)[:, :, 1:, 1:], (1, 1, 6, 6), 1, 1)  # not the tile itself


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
    """VGG's pools (2x2 windows, stride 2), forward and backward: the only pools the models have."""
    y, argmax = numba_cpu.max_pool(_zeros(dtype, 1, 1, 4, 4), (2, 2), (2, 2), (0, 0), (2, 2))
    numba_cpu.max_pool_backward(y, argmax, (1, 1, 4, 4), (2, 2), (2, 2), (0, 0))


def _any_pool(numba_cpu, dtype):
    """A pool of any other window, stride or padding: a group of its own, compiled when one first runs."""
    numba_cpu.max_pool(_zeros(dtype, 1, 1, 4, 4), (3, 3), (2, 2), (1, 1), (2, 2))


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


# name: (what it runs, its cost: seconds to compile it alone in a fresh process, one thread of a 2-core Zen 4,
# session 23, pool and any_pool session 24; batch norm and Winograd, session 14's estimate in kernels of about
# a second). The costs only order the tasks, costliest first, so that no large one is left for last; the
# claims balance the rest.
TASKS = {"tiles": (_tiles, 4.7), "strided": (_strided, 1.7), "more_tiles": (_more_tiles, 5.4), "side": (_side, 1.9),
         "loss": (_loss, 2.6), "argmax": (_argmax, 1.3), "phases": (_phases, 2.1), "pool": (_pool, 2.0),
         "im2col": (_im2col, 1.3), "col2im": (_col2im, 1.1), "relu": (_relu, 0.8), "batch_norm": (_batch_norm, 4.0),
         "winograd": (_winograd, 6.0), "any_pool": (_any_pool, 1.4)}
GROUPS = {"fcn": ("tiles", "strided", "more_tiles", "side", "loss", "argmax", "phases", "pool", "im2col", "col2im",
                  "relu"),
          "batch_norm": ("batch_norm",), "winograd": ("winograd",), "any_pool": ("any_pool",)}
_state = {"seen": set(), "done": set(), "reports": []}


def group_of(op):
    """The group whose kernels ``op`` needs first: batch norm's own, Winograd's (a route only wide layers
    take, "winograd"), that of pools other than VGG's ("any_pool"), or the rest (what an FCN runs)."""
    return "batch_norm" if op.startswith("batch_norm") else op if op in GROUPS else "fcn"


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


def _take(kernels, dtype, names, claims):
    """Run each task of ``names`` (in order) that no other process has claimed in the folder ``claims``;
    return those this process ran. Claiming is creating the task's file there, which only one can do."""
    taken = []
    for name in names:
        try:
            os.close(os.open(os.path.join(claims, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue
        taken.append(name)
        TASKS[name][0](kernels, dtype)
    return taken


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


def _helper_command(kernels, dtype, names, claims):
    return [sys.executable, "-m", "minifcn.kernels.precompile", kernels.__name__, np.dtype(dtype).name,
            "--claims", claims, *names]


def run(kernels, names, dtype, processes=None):
    """Compile the kernels of ``names`` (keys of TASKS) in ``dtype``, here and in helper processes at the
    same time (``processes`` in all, default ``workers()``), each taking the next unclaimed task. Returns a
    report: ``shares``, the tasks each process ran (this one's first), ``failed``, the tasks claimed by
    helpers that failed (they compile on first use), and ``seconds``."""
    started = time.perf_counter()
    count = min(processes or workers(), len(names))
    names = sorted(names, key=lambda n: -TASKS[n][1])
    if sys.stderr.isatty():
        print(f"minifcn: compiling its kernels for this CPU in {count} processes (once)", file=sys.stderr)
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "MINIFCN_PRECOMPILE": "0", "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH")) if p)}
    with tempfile.TemporaryDirectory(prefix="minifcn-precompile-") as claims:
        helpers = []
        for _ in range(count - 1):
            try:
                helpers.append(subprocess.Popen(_helper_command(kernels, dtype, names, claims), env=env,
                                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE))
            except OSError as err:
                warnings.warn(f"minifcn could not start a process to compile kernels ({err}); this one compiles "
                              "what it would have")
        try:
            mine = _take(kernels, dtype, names, claims)
        finally:  # the helpers are waited for even if this process failed: none is left running
            theirs = _wait(helpers)
        done, claimed = set(mine).union(*theirs), set(os.listdir(claims))
        failed = [n for n in names if n in claimed and n not in done]  # claimed by a helper that failed
    report = {"dtype": np.dtype(dtype).name, "shares": [mine, *theirs], "failed": failed,
              "seconds": round(time.perf_counter() - started, 2)}
    _state["reports"].append(report)
    return report


def _wait(helpers):
    """Wait for each helper (stopping one past HELPER_TIMEOUT). Returns the tasks each one ran, as its last
    line of output names them: none for a helper that failed, with a warning (what it had claimed compiles
    on first use)."""
    theirs = []
    for proc in helpers:
        try:
            out, err = proc.communicate(timeout=HELPER_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        ran = []
        if proc.returncode == 0:
            lines = (out or b"").decode(errors="replace").strip().splitlines()
            try:
                ran = [n for n in json.loads(lines[-1]) if n in TASKS]
            except (IndexError, ValueError, TypeError):
                pass
        else:
            last = (err or b"").decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
            warnings.warn(f"minifcn's process compiling kernels failed (exit {proc.returncode}: {last[0]}); "
                          "what it had claimed compiles on first use")
        theirs.append(ran)
    return theirs


def reports():
    """What this process precompiled: one report per group and dtype (shares, failed tasks, seconds)."""
    return list(_state["reports"])


def _main(argv):
    """python -m minifcn.kernels.precompile MODULE DTYPE [--claims DIR] TASK...: a helper. With --claims it
    runs the tasks no other process has claimed in DIR, and prints the list of those it ran; without, all."""
    import importlib
    module, dtype, names = argv[0], argv[1], argv[2:]
    claims = None
    if names[:1] == ["--claims"]:
        if len(names) < 2 or not os.path.isdir(names[1]):
            sys.exit(f"--claims needs an existing folder, got {names[1:2]}")
        claims, names = names[1], names[2:]
    if not module.startswith("minifcn.kernels."):
        sys.exit(f"not a minifcn kernel module: {module}")
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        sys.exit(f"unknown kernel tasks {unknown}; known: {sorted(TASKS)}")
    kernels = importlib.import_module(module)
    if claims is None:
        for name in names:
            TASKS[name][0](kernels, np.dtype(dtype))
    else:
        print(json.dumps(_take(kernels, np.dtype(dtype), names, claims)))


if __name__ == "__main__":
    _main(sys.argv[1:])
