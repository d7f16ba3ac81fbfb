"""Routes chosen by measurement, as cuDNN's benchmark mode chooses its algorithms.

A convolution pass can run several ways (numba_cpu's routes: register tiles, a product per tap, im2col),
and which is fastest depends on the CPU: its vector width, caches, core count. A rule written from one
machine's measurements picks wrong on another. So, the first time a pass meets a (pass, shapes, dtype,
threads) it has not met on this CPU, it runs every route that can do it, times each a few times (not
the first run in a process, which may compile), keeps the fastest and returns that route's own result.

The choices go to a small JSON table on disk, one per CPU (its name, LLVM's name for it and the
feature string the kernels compile with), thread count and version of the kernels' code:

    $MINIFCN_CACHE_DIR/autotune/<LLVM's CPU name>-<digest>-<threads>t.json     (default ~/.cache/minifcn)

Later processes read it and measure nothing, so a run and its resume compute with the same routes, bit
for bit. A table that belongs to another CPU, or does not parse, or names routes that do not exist,
is ignored entry by entry; it can neither run code nor steer a pass onto a route that cannot compute it.

Measuring is bounded: at most ``MAX_SECONDS`` per process; past that the by-shape
rule decides, unrecorded, and a later process measures the rest. ``report()`` says what was spent.
``minifcn.set_autotune(False)`` or ``MINIFCN_AUTOTUNE=0`` turns it off: the by-shape rule decides always.
Deleting the folder makes the next run measure again (a choice measured while other work shared the
cores may be a poor one). Under an MPI launcher it is off unless ``MINIFCN_AUTOTUNE=1``: ranks that measured
at once could each keep a different choice in memory while the table on disk holds one of them, and a
resumed run would then compute other bits than the run that never stopped.
"""

import hashlib
import json
import os
import time

from ..atomic import read_json, write_atomically

MAX_SECONDS = 30.0
TIMINGS = 3  # runs of a route that stays in contention; its fastest counts (a shared machine is noisy)
MAX_TABLE_BYTES = 4 << 20  # a table is a few kB; anything larger is not ours
_state = {"enabled": None, "table": None, "path": None, "who": None, "threads": None, "routes": (), "seconds": 0.0,
          "measured": 0, "depth": 0, "warm": set(), "costs": {}}


def enabled():
    """On unless switched off; under an MPI launcher, off unless MINIFCN_AUTOTUNE=1 asks for it."""
    if _state["enabled"] is None:
        from .. import launcher
        default = "1" if launcher.launched_size() == 1 else "0"
        _state["enabled"] = os.environ.get("MINIFCN_AUTOTUNE", default).strip() not in ("0", "false", "no", "off")
    return _state["enabled"]


def set_autotune(on=True):
    """Choose convolution routes by measurement (True, the default) or by the by-shape rule (False)."""
    _state["enabled"] = bool(on)


def cache_root():
    """minifcn's own cache folder (the route tables here, precompile's records): $MINIFCN_CACHE_DIR, else
    ~/.cache/minifcn (or under $XDG_CACHE_HOME)."""
    return os.environ.get("MINIFCN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "minifcn")


def cache_dir():
    return os.path.join(cache_root(), "autotune")


def identity(threads):
    """What a table belongs to: this CPU, the features the kernels compile with, the thread count, and the
    kernels' own code (a new version of minifcn measures again)."""
    from .. import cpu
    name, _ = cpu.host()
    return {"cpu": cpu.model_name(), "llvm": name, "features": cpu.compiled_features(), "threads": threads,
            "code": _code_digest()}


def _code_digest():
    if "code" not in _state:
        here, digest = os.path.dirname(os.path.abspath(__file__)), hashlib.sha256()
        for name in sorted(os.listdir(here)):
            if name.endswith(".py"):
                with open(os.path.join(here, name), "rb") as f:
                    digest.update(f.read())
        _state["code"] = digest.hexdigest()[:16]
    return _state["code"]


def table_path(who):
    digest = hashlib.sha256(json.dumps(who, sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(cache_dir(), f"{who['llvm'] or 'cpu'}-{digest}-{who['threads']}t.json")


def _read(path, who, routes):
    """The entries of the table at ``path`` that are for ``who`` and name known routes; {} if none."""
    try:
        saved = read_json(path, MAX_TABLE_BYTES)
    except (OSError, ValueError):
        return {}
    if not isinstance(saved, dict) or saved.get("for") != who or not isinstance(saved.get("choices"), dict):
        return {}
    return {k: v for k, v in saved["choices"].items() if isinstance(k, str) and v in routes}


def _table(threads, routes):
    if _state["table"] is None or _state["threads"] != threads:
        who = identity(threads)
        _state.update(who=who, threads=threads, path=table_path(who), routes=routes)
        _state["table"] = _read(_state["path"], who, routes)
    return _state["table"]


def _save(key, route):
    """Add one choice to the table on disk, merged with what other processes wrote before (two writing at
    the same moment may lose one entry: it is measured again next time)."""
    path, who = _state["path"], _state["who"]
    choices = {**_read(path, who, _state["routes"]), key: route}
    text = json.dumps({"for": who, "choices": choices}, indent=0, sort_keys=True)

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_atomically(path, write)
    except OSError:  # a read-only home: the choice holds for this process only
        pass


def choose(key, threads, candidates, run, rule, routes, family=""):
    """``run(route)`` by the route on record for ``key``; else, within budget, by the fastest candidate.

    ``candidates``: the routes that can compute this pass here; ``rule``: the by-shape choice, used when
    autotuning is off, already spent, or there is nothing to choose; ``routes``: every route name there is
    (what a table may contain); ``family``: what a route's compiled code depends on besides its name (the
    dtype). The first time a (route, family) runs in a process it may compile or load its kernels, so that
    run is not timed, and neither is a run that measured passes of its own (the flipped input gradient's
    forward pass, the sub-pixel route's phases: their first run on a new shape times their candidates).
    Then each candidate is timed up to ``TIMINGS`` times and keeps its fastest, stopping as soon as it is
    half as slow again as the best so far. The rule's route runs first.
    Returns (route, result).
    """
    if not enabled() or len(candidates) < 2:
        return rule, run(rule)
    table = _table(threads, routes)
    if table.get(key) in candidates:
        return table[key], run(table[key])
    if _state["seconds"] >= MAX_SECONDS:
        return rule, run(rule)
    started, best = time.perf_counter(), None  # best: (seconds, route, result) of the fastest run so far
    candidates = sorted(candidates, key=lambda route: route != rule)  # the rule's likely winner sets the pace
    _state["depth"] += 1  # a route may run passes that are measured in turn (the flipped input gradient)
    try:
        for route in candidates:
            if (route, family) not in _state["warm"]:
                run(route)
                _state["warm"].add((route, family))
            fastest, timings = float("inf"), 0
            for _ in range(TIMINGS + 2):
                inner = _state["measured"]
                t = time.perf_counter()
                result = run(route)
                seconds = time.perf_counter() - t
                if _state["measured"] != inner:  # it measured passes of its own (flipped, sub-pixel): no timing
                    del result
                    continue
                timings, fastest = timings + 1, min(fastest, seconds)
                if best is None or seconds < best[0]:
                    best = (seconds, route, result)
                del result
                if timings == TIMINGS or fastest > 1.5 * best[0]:
                    break
        if best is None:  # every run measured passes of its own (it cannot go on: each is measured once)
            best = (0.0, rule, run(rule))
    finally:
        _state["depth"] -= 1
    if not _state["depth"]:
        spent = time.perf_counter() - started
        _state["seconds"] += spent
        _state["costs"][key] = (spent, len(candidates))
    _state["measured"] += 1
    table[key] = best[1]
    _save(key, best[1])
    return best[1], best[2]


def report(slowest=5):
    """{'measured': passes timed in this process, 'seconds': spent timing them, 'table': its file,
    'slowest': the ``slowest`` costliest passes as [key, seconds, routes tried] (where a first run's time goes)}."""
    costly = sorted(_state["costs"].items(), key=lambda item: -item[1][0])[:slowest]
    return {"measured": _state["measured"], "seconds": round(_state["seconds"], 2), "table": _state["path"],
            "slowest": [[key, round(seconds, 3), tried] for key, (seconds, tried) in costly]}


def forget():
    """Drop what this process holds in memory (the next pass reads the table from disk again)."""
    _state.update(table=None, path=None, who=None, threads=None, seconds=0.0, measured=0, costs={})
