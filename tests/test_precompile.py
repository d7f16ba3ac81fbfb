"""The cold start's compilation, spread over processes: every kernel covered, done once, off when asked."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from minifcn.kernels import numba_cpu, precompile, reference  # noqa: E402


def test_racing_processes_run_each_task_once_and_all_of_them(monkeypatch, tmp_path):
    """Claims are files made with O_EXCL: however many take from one list at once, each task runs once."""
    import threading
    ran, lock = [], threading.Lock()

    def task(name):
        def run(kernels, dtype):
            with lock:
                ran.append(name)
        return run
    names = [f"t{i}" for i in range(40)]
    monkeypatch.setattr(precompile, "TASKS", {n: (task(n), 1.0) for n in names})
    taken = [None] * 4

    def worker(i):
        taken[i] = precompile._take(None, np.float32, names, str(tmp_path))
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(ran) == sorted(names) == sorted(n for share in taken for n in share)
    assert precompile._take(None, np.float32, names, str(tmp_path)) == []  # all claimed: nothing left


def test_processes_share_the_tasks_and_report_who_ran_what():
    report = precompile.run(numba_cpu, ["relu", "im2col", "col2im"], np.float32, processes=2)
    assert len(report["shares"]) == 2 and report["failed"] == []
    assert sorted(n for share in report["shares"] for n in share) == ["col2im", "im2col", "relu"]


def test_as_many_processes_as_threads_minifcn_may_use():
    import minifcn
    before = numba.get_num_threads()
    try:
        minifcn.set_num_threads(1)
        assert precompile.workers() == 1
        minifcn.set_num_threads(2)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        assert precompile.workers() == min(2, numba.config.NUMBA_NUM_THREADS, cores)
    finally:
        numba.set_num_threads(before)


def test_every_op_belongs_to_a_group_and_every_task_to_a_group():
    from minifcn.kernels import OPS
    # and Winograd's route, and pools other than VGG's, which numba_cpu.max_pool prepares as "any_pool"
    assert {precompile.group_of(op) for op in (*OPS, "winograd", "any_pool")} == set(precompile.GROUPS)
    assert sorted(n for names in precompile.GROUPS.values() for n in names) == sorted(precompile.TASKS)


def test_on_record_once_per_group_dtype_and_numba_cache(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setenv("MINIFCN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("MINIFCN_PRECOMPILE", raising=False)
    monkeypatch.setattr(precompile, "run",
                        lambda kernels, names, dtype: calls.append((tuple(names), np.dtype(dtype).name)))
    monkeypatch.setitem(precompile._state, "seen", set())
    monkeypatch.setitem(precompile._state, "done", set())

    def fresh_process():
        precompile._state["seen"].clear()
        precompile._state["done"].clear()

    precompile.ensure(numba_cpu, "relu", np.dtype(np.float32))
    precompile.ensure(numba_cpu, "conv2d", np.dtype(np.float32))  # same group: nothing more
    assert calls == [(precompile.GROUPS["fcn"], "float32")]
    assert os.path.exists(precompile.marker_path("fcn", np.float32))
    fresh_process()
    precompile.ensure(numba_cpu, "max_pool", np.dtype(np.float32))  # on record: a later process does nothing
    assert len(calls) == 1
    precompile.ensure(numba_cpu, "batch_norm_forward", np.dtype(np.float32))
    precompile.ensure(numba_cpu, "relu", np.dtype(np.float64))
    assert calls[1:] == [(("batch_norm",), "float32"), (precompile.GROUPS["fcn"], "float64")]
    fresh_process()
    monkeypatch.setattr(numba.config, "CACHE_DIR", str(tmp_path / "another-numba-cache"))
    precompile.ensure(numba_cpu, "relu", np.dtype(np.float32))  # the kernels on record are not in this cache
    assert calls[-1] == (precompile.GROUPS["fcn"], "float32") and len(calls) == 4


@pytest.mark.parametrize("env", [{"MINIFCN_PRECOMPILE": "0"}, {"OMPI_COMM_WORLD_SIZE": "2"}, {"frozen": True}])
def test_off_when_asked_under_an_mpi_launcher_and_in_a_frozen_app(tmp_path, monkeypatch, env):
    monkeypatch.setenv("MINIFCN_CACHE_DIR", str(tmp_path))
    for k, v in env.items():
        if k == "frozen":
            monkeypatch.setattr(sys, "frozen", v, raising=False)
        else:
            monkeypatch.setenv(k, v)
    monkeypatch.setattr(precompile, "run", lambda *a: pytest.fail("precompiled although switched off"))
    monkeypatch.setitem(precompile._state, "seen", set())
    monkeypatch.setitem(precompile._state, "done", set())
    assert not precompile.enabled()
    precompile.ensure(numba_cpu, "relu", np.dtype(np.float32))


CLAIM_AND_FAIL = "import os, sys; os.close(os.open(os.path.join(sys.argv[1], 'im2col'), os.O_CREAT)); sys.exit('{}')"


@pytest.mark.parametrize("claims_first, lost", [(False, []), (True, ["im2col"])])
def test_a_failing_helper_is_reported_and_what_it_claimed_compiles_on_first_use(monkeypatch, claims_first, lost):
    """A helper that dies at once leaves its work to the others; one that dies after claiming a task leaves
    that task to first use, and the report names it."""
    monkeypatch.setattr(precompile, "_helper_command", lambda kernels, dtype, names, claims: (
        [sys.executable, "-c", CLAIM_AND_FAIL.format("no compiler here"), claims] if claims_first
        else [sys.executable, "-c", "import sys; sys.exit('no compiler here')"]))
    take = precompile._take

    def after_the_helper(kernels, dtype, names, claims):  # this process starts once the helper has claimed
        for _ in range(600):
            if not claims_first or os.path.exists(os.path.join(claims, "im2col")):
                break
            time.sleep(0.05)
        return take(kernels, dtype, names, claims)
    monkeypatch.setattr(precompile, "_take", after_the_helper)
    with pytest.warns(UserWarning, match="no compiler here"):
        report = precompile.run(numba_cpu, ["relu", "im2col", "col2im"], np.float32, processes=2)
    assert report["failed"] == lost and report["shares"][1] == []
    assert sorted(report["shares"][0] + lost) == ["col2im", "im2col", "relu"]
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 5)).astype(np.float32)
    np.testing.assert_array_equal(numba_cpu.relu(x), reference.relu(x))
    from minifcn.im2col import im2col
    np.testing.assert_array_equal(numba_cpu.im2col(x, 3, 1, 1, 1), im2col(x, 3, 1, 1, 1))


def test_the_backend_prepares_each_op_and_dtype_before_its_kernels_run(monkeypatch):
    import minifcn
    monkeypatch.setenv("MINIFCN_PRECOMPILE", "0")  # record, compile nothing new
    monkeypatch.setitem(precompile._state, "seen", set())
    before = minifcn.get_backend()
    minifcn.set_backend("numba")
    try:
        from minifcn import backend
        backend.ops().relu(np.ones((1, 1, 2, 2), np.float64))
    finally:
        minifcn.set_backend(before)
    assert ("relu", np.dtype(np.float64)) in precompile._state["seen"]


COMPILE_LISTENER = r"""
import time
from numba.core import event
compiled = []  # (when, kernel) for minifcn's own kernels compiled in this process
class Listener(event.Listener):
    def on_start(self, ev): pass
    def on_end(self, ev):
        fn = ev.data["dispatcher"].py_func
        if fn.__module__.startswith("minifcn"):
            compiled.append((time.perf_counter(), fn.__qualname__))
event.register("numba:compile", Listener())
"""  # the start of a child script that records what of minifcn's compiles from there on

COLD_START = COMPILE_LISTENER + r"""
import json, os, sys
import numba
import numpy as np
import minifcn
from minifcn import Tensor, models, functional as F
from minifcn.kernels import numba_cpu, numba_tiled, precompile

ended = []
run = precompile.run
precompile.run = lambda *a, **k: (run(*a, **k), ended.append(time.perf_counter()))[0]

minifcn.set_backend("numba")
for mode in ("pad100", "pad32"):
    model = models.build("fcn8s", width=0.0625, fc_width=32, num_classes=3, input_mode=mode)
    x = np.random.default_rng(0).standard_normal((2, 3, 40, 40)).astype(np.float32)
    F.softmax_cross_entropy(model(Tensor(x)), np.zeros((2, 40, 40), np.int64)).backward()
after = sorted({name for when, name in compiled if ended and when > ended[0]})
dispatchers = [d for m in (numba_cpu, numba_tiled, numba_cpu.winograd) for d in vars(m).values() if isinstance(d, numba.core.dispatcher.Dispatcher)]
dispatchers += [d for k in numba_tiled.KERNELS.values() for d in vars(k).values() if isinstance(d, numba.core.dispatcher.Dispatcher)]
hits = sum(sum(d.stats.cache_hits.values()) for d in dispatchers)
print(json.dumps({"reports": precompile.reports(), "after": after, "hits": hits, "compiled": len(compiled),
                  "workers": precompile.workers()}))
"""


@pytest.mark.slow
def test_a_cold_start_compiles_each_kernel_once_spread_over_processes(tmp_path):
    """From empty caches, the first op compiles every kernel a training step needs (here and in helpers);
    nothing of minifcn's compiles after that, and a second process finds it all on record and in the cache."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba"), "MINIFCN_CACHE_DIR": str(tmp_path / "minifcn")}
    env.pop("MINIFCN_PRECOMPILE", None)

    def child():
        out = subprocess.run([sys.executable, "-c", COLD_START], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    first = child()
    assert len(first["reports"]) == 1 and not first["reports"][0]["failed"]
    shares = first["reports"][0]["shares"]
    assert len(shares) == min(first["workers"], len(precompile.GROUPS["fcn"]))
    assert first["after"] == []  # every kernel the step used was compiled up front
    if len(shares) > 1:
        assert first["hits"] > 0  # the helpers' kernels came from the cache
    second = child()
    assert second["reports"] == [] and second["compiled"] == 0 and second["hits"] > 0


PRECOMPILE_ALL = r"""
import json, numba, numpy as np
from minifcn.kernels import numba_cpu, numba_tiled, precompile
for name, (task, _) in precompile.TASKS.items():
    task(numba_cpu, np.float64)
def dispatchers(namespace):
    return {k: d for k, d in vars(namespace).items() if isinstance(d, numba.core.dispatcher.Dispatcher)}
found = {**dispatchers(numba_cpu), **dispatchers(numba_tiled), **dispatchers(numba_cpu.winograd),
         **dispatchers(numba_cpu.side_by_side),
         **{f"tiles{w}.{k}": d for w, n in numba_tiled.KERNELS.items() for k, d in dispatchers(n).items()}}
print(json.dumps(sorted(k for k, d in found.items() if not d.overloads)))
"""


@pytest.mark.slow
def test_the_tasks_compile_every_kernel_there_is(tmp_path):
    """A kernel added to numba_cpu, numba_tiled, winograd or side_by_side but to no task would compile alone,
    at first use."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "MINIFCN_PRECOMPILE": "0"}
    out = subprocess.run([sys.executable, "-c", PRECOMPILE_ALL], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    missing = json.loads(out.stdout.strip().splitlines()[-1])
    # the weight-gradient tile is GRAD_WIDTH wide only, the forward tiles this CPU's width only
    from minifcn.kernels import numba_tiled
    unused = {f"tiles{w}.weight_grad_3x3" for w in numba_tiled.KERNELS if w != numba_tiled.GRAD_WIDTH}
    unused |= {f"tiles{w}.{k}" for w in numba_tiled.KERNELS if w != numba_tiled.WIDTH for k in ("forward", "forward_rows")}
    from minifcn.kernels import numba_cpu, winograd
    inlined = {name for m in (numba_cpu, numba_tiled, winograd) for name, d in vars(m).items()
               if getattr(d, "targetoptions", {}).get("inline") == "always"}  # compiled into their callers
    assert {"_exp", "_columns", "_store"} <= inlined
    assert set(missing) <= unused | inlined, set(missing) - unused - inlined


def test_a_share_that_fails_here_still_waits_for_the_helpers(tmp_path, monkeypatch):
    done = tmp_path / "helper-finished"
    monkeypatch.setattr(precompile, "_helper_command", lambda kernels, dtype, names, claims: [
        sys.executable, "-c", f"import time; time.sleep(0.5); open({str(done)!r}, 'w').close()"])

    def broken(kernels, dtype):
        raise RuntimeError("this share cannot compile")
    monkeypatch.setitem(precompile.TASKS, "tiles", (broken, 5.0))
    with pytest.raises(RuntimeError, match="cannot compile"):
        precompile.run(numba_cpu, ["tiles", "relu"], np.float32, processes=2)  # tiles here, the costliest
    assert done.exists()  # waited for, not left running


STRIDED_AFTER_TILES = r"""
import json, numpy as np
from minifcn.kernels import numba_cpu, numba_tiled, precompile
for name in ("tiles", "strided"):
    precompile.TASKS[name][0](numba_cpu, np.dtype(np.float32))
""" + COMPILE_LISTENER + r"""
g = np.random.default_rng(0).standard_normal((2, 3, 9, 9)).astype(np.float32)
w = np.random.default_rng(1).standard_normal((4, 3, 3, 3)).astype(np.float32)
cropped = g[:, :, 1:-1, 1:-1]  # a view, as the sub-pixel route's flipped pass hands it on
y = numba_tiled.conv2d(cropped, w, (1, 1), (1, 1), 1)
same = np.allclose(y, numba_tiled.conv2d(cropped.copy(), w, (1, 1), (1, 1), 1), atol=1e-5)
print(json.dumps({"compiled": [name for _, name in compiled], "same": bool(same)}))
"""


@pytest.mark.slow
def test_the_tasks_cover_the_tiles_on_strided_inputs_too(tmp_path):
    """A strided view reaches the tiles through the sub-pixel route: its padded copy is another Numba
    specialization, which compiled for 1.4-1.6 s in the middle of a cold start's route measuring."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "MINIFCN_PRECOMPILE": "0"}
    out = subprocess.run([sys.executable, "-c", STRIDED_AFTER_TILES], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"compiled": [], "same": True}
