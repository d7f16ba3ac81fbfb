"""Routes chosen by measurement: every candidate computes the reference's result, the fastest is kept, the table
on disk is reused by later processes, ignored for another CPU or thread count and when it is not ours, and
the off switch restores the by-shape rule."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings

from minifcn.kernels import autotune, reference
from strategies import conv_geometry, random_arrays

numba_cpu = pytest.importorskip("minifcn.kernels.numba_cpu", reason="numba is not installed")

OPS = ("conv2d", "conv2d_input_grad", "conv2d_weight_grad")


@pytest.fixture
def tuning(tmp_path, monkeypatch):
    """Autotune on, with a table folder of this test's own."""
    monkeypatch.setenv("MINIFCN_CACHE_DIR", str(tmp_path))
    autotune.forget()
    autotune.set_autotune(True)
    yield tmp_path
    autotune.set_autotune(False)
    autotune.forget()


def _call(op, x, w, g, geo):
    args = dict(stride=geo["stride"], padding=geo["padding"], dilation=geo["dilation"])
    if op == "conv2d":
        return getattr(numba_cpu, op)(x, w, **args), reference.conv2d(x, w, **args)
    if op == "conv2d_input_grad":
        return numba_cpu.conv2d_input_grad(g, w, x.shape, **args), reference.conv2d_input_grad(g, w, x.shape, **args)
    return numba_cpu.conv2d_weight_grad(g, x, w.shape, **args), reference.conv2d_weight_grad(g, x, w.shape, **args)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(g=conv_geometry(max_size=20))
@settings(max_examples=25, deadline=None)
def test_every_candidate_route_computes_the_reference(op, dtype, g):
    """Each route autotune may pick, forced one at a time, against the NumPy reference."""
    results, real, depth = [], autotune.choose, [0]

    def every_route(key, threads, candidates, run, rule, routes, family=""):
        assert rule in routes and set(candidates) <= set(routes) and candidates
        depth[0] += 1  # a route may run inner passes (over the phases, or flipped): only the outer one is checked
        try:
            mine = [(route, run(route)) for route in candidates]
        finally:
            depth[0] -= 1
        if not depth[0]:
            results.extend(mine)
        return mine[0]

    rng, x, w, _ = random_arrays(g, dtype)
    y = reference.conv2d(x, w, g["stride"], g["padding"], g["dilation"])
    gy = rng.standard_normal(y.shape).astype(dtype)
    autotune.choose = every_route
    try:
        _, want = _call(op, x, w, gy, g)
    finally:
        autotune.choose = real
    assert results
    tol = 2e-4 if dtype == np.float32 else 1e-10
    for route, got in results:
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=f"{op} by route {route}")


def test_the_fastest_route_is_kept_and_its_own_result_returned(tuning):
    def run(route):
        time.sleep({"slow": 0.03, "fast": 0.0, "middle": 0.01}[route])
        return route

    routes = ("slow", "fast", "middle")
    assert autotune.choose("k", 2, list(routes), run, "slow", routes) == ("fast", "fast")
    assert autotune.report()["measured"] == 1
    (key, seconds, tried), = autotune.report()["slowest"]  # what the measuring cost, pass by pass
    assert key == "k" and tried == 3 and 0.03 < seconds < 5
    assert autotune.choose("k", 2, list(routes), run, "slow", routes) == ("fast", "fast")  # on record now
    assert autotune.report()["measured"] == 1
    saved = json.load(open(autotune.report()["table"]))
    assert saved["choices"] == {"k": "fast"} and saved["for"]["threads"] == 2


def test_a_run_that_measures_passes_of_its_own_is_not_a_timing(tuning, monkeypatch):
    """The flipped input gradient runs a forward pass that autotune measures the first time it meets its
    shape: that run is slow for a reason of its own, and the route must not lose by it."""
    clock = [0.0]
    monkeypatch.setattr(autotune.time, "perf_counter", lambda: clock[0])

    def outer(key):
        def run(route):
            if route == "nested":  # 6 ms in all once its inner pass is on record; about 20 ms while measuring it
                inner = lambda way: clock.__setitem__(0, clock[0] + {"x": 0.002, "y": 0.003}[way])  # noqa: E731
                autotune.choose(f"inner {key}", 2, ["x", "y"], inner, "x", ("x", "y"), family="t")
                clock[0] += 0.004
            else:
                clock[0] += 0.010
            return route
        return autotune.choose(key, 2, ["plain", "nested"], run, "plain", ("plain", "nested"), family="t")
    assert outer("first")[0] == "nested"  # its first run in the process is untimed anyway
    assert outer("second")[0] == "nested"  # its first run on this shape measures the inner pass: untimed too


def _conv(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 16, 40, 40)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    return x, w


def test_a_later_process_reuses_the_table_and_computes_the_same_bits(tuning):
    x, w = _conv()
    first = numba_cpu.conv2d(x, w, 1, 1)
    assert autotune.report()["measured"] == 1
    table = autotune.report()["table"]
    assert os.path.dirname(os.path.dirname(table)) == str(tuning)
    autotune.forget()  # as a new process would start
    again = numba_cpu.conv2d(x, w, 1, 1)
    assert autotune.report()["measured"] == 0
    assert np.array_equal(first, again)


def test_another_cpu_or_thread_count_measures_anew(tuning, monkeypatch):
    x, w = _conv()
    numba_cpu.conv2d(x, w, 1, 1)
    mine = autotune.report()["table"]
    real = autotune.identity
    for other in ({"cpu": "Another CPU"}, {"features": "+sse2"}, {"threads": 7}, {"code": "another version"}):
        autotune.forget()
        monkeypatch.setattr(autotune, "identity", lambda threads, other=other: {**real(threads), **other})
        numba_cpu.conv2d(x, w, 1, 1)
        assert autotune.report()["measured"] == 1, other
        assert autotune.report()["table"] != mine
    # a table whose header names another CPU is ignored even under this CPU's file name
    monkeypatch.setattr(autotune, "identity", real)
    saved = json.load(open(mine))
    saved["for"]["cpu"] = "Another CPU"
    json.dump(saved, open(mine, "w"))
    autotune.forget()
    numba_cpu.conv2d(x, w, 1, 1)
    assert autotune.report()["measured"] == 1


@pytest.mark.parametrize("poison", [b"{not json", b"[1, 2]", b'{"for": 1, "choices": []}', b"x" * (5 << 20),
                                    b"[" * 5000 + b"]" * 5000,  # json's decoder recurses: RecursionError
                                    "bogus route", "route that cannot run here"])
def test_a_table_that_is_not_ours_steers_nothing(tuning, poison):
    x = np.random.default_rng(0).standard_normal((1, 4, 12, 12))
    w = np.random.default_rng(1).standard_normal((4, 4, 5, 5))
    g = np.random.default_rng(2).standard_normal((1, 4, 8, 8))
    numba_cpu.conv2d_weight_grad(g, x, w.shape, 1, 0)
    path = autotune.report()["table"]
    saved = json.load(open(path))
    (key,) = [k for k in saved["choices"] if k.startswith("conv2d_weight_grad")]
    if isinstance(poison, bytes):
        open(path, "wb").write(poison)
    else:  # a well-formed table whose entry names "os.system" or the tiles, which need a 3x3 kernel
        saved["choices"][key] = "os.system" if poison == "bogus route" else "tiled"
        json.dump(saved, open(path, "w"))
    autotune.forget()
    got = numba_cpu.conv2d_weight_grad(g, x, w.shape, 1, 0)
    assert autotune.report()["measured"] == 1  # measured again instead
    np.testing.assert_allclose(got, reference.conv2d_weight_grad(g, x, w.shape, 1, 0), rtol=1e-10, atol=1e-10)
    assert json.load(open(path))["choices"][key] in numba_cpu.candidates(
        "conv2d_weight_grad", x.shape, numba_cpu.conv_geometry(x.shape, 5, 1, 0), w.shape, 8)


def test_off_and_out_of_budget_follow_the_rule(tuning, monkeypatch):
    x, w = _conv()
    seen = []
    real = numba_cpu.numba_tiled.conv2d
    monkeypatch.setattr(numba_cpu.numba_tiled, "conv2d", lambda *a, **k: seen.append("tiled") or real(*a, **k))
    rule = numba_cpu.route(numba_cpu.conv_geometry(x.shape, 3, 1, 1), 16, 16)
    autotune.set_autotune(False)
    numba_cpu.conv2d(x, w, 1, 1)
    assert autotune.report()["measured"] == 0 and not os.listdir(tuning)
    assert seen == (["tiled"] if rule == "tiled" else [])
    autotune.set_autotune(True)
    monkeypatch.setattr(autotune, "MAX_SECONDS", 0.0)
    seen.clear()
    numba_cpu.conv2d(x, w, 1, 1)
    assert autotune.report()["measured"] == 0 and seen == (["tiled"] if rule == "tiled" else [])


def test_the_environment_switch(tmp_path):
    probe = "from minifcn.kernels import autotune; print(autotune.enabled())"
    for value, expected in (("0", "False"), ("off", "False"), ("1", "True")):
        env = {**os.environ, "MINIFCN_AUTOTUNE": value}
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == expected
    env = {k: v for k, v in os.environ.items() if k != "MINIFCN_AUTOTUNE"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"  # on by default
    for value, expected in ((None, "False"), ("1", "True")):  # under mpiexec: off unless asked for
        mpi = {**env, "PMI_SIZE": "2", **({"MINIFCN_AUTOTUNE": value} if value else {})}
        out = subprocess.run([sys.executable, "-c", probe], env=mpi, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == expected


def test_a_run_that_measured_and_its_resume_compute_the_same_bits(tuning, data, tmp_path):
    """The straight run measures its routes during its first steps (and keeps the winners' own results); the
    broken run, cut off by Ctrl-C and resumed in a fresh process, reads the table: the weights agree bit for bit."""
    import minifcn
    import minifcn.train as trainer
    from helpers import Interrupt
    from minifcn.checkpoint import read_checkpoint
    from minifcn.train import TrainConfig, train

    previous = minifcn.get_backend()
    minifcn.set_backend("numba")
    try:
        config = TrainConfig(data=str(data), out=str(tmp_path / "broken"), model="fcn8s", width=1 / 16, fc_width=16,
                             input_mode="pad32", batch_size=2, crop=32, epochs=2)
        straight = TrainConfig(**{**config.__dict__, "out": str(tmp_path / "straight")})
        train(straight, progress=False)
        assert autotune.report()["measured"] > 0
        autotune.forget()
        real = trainer.evaluate
        trainer.evaluate = Interrupt(1, real)  # (not monkeypatch: its undo would also drop the table folder)
        try:
            with pytest.raises(KeyboardInterrupt):
                train(config, progress=False)
        finally:
            trainer.evaluate = real
        autotune.forget()  # as a new process would start
        train(config, resume=True, progress=False)
        assert autotune.report()["measured"] == 0 and autotune.report()["table"].startswith(str(tuning))
    finally:
        minifcn.set_backend(previous)
    a, b = (read_checkpoint(os.path.join(c.out, "checkpoint.npz"))[1]["model"] for c in (config, straight))
    assert all(np.array_equal(a[k], b[k]) for k in a)
