"""minifcn against PyTorch CPU, as ratios measured in the same run: layers, models, memory, cold start.

    python benchmarks/speed.py [--backend numba] [--repeat 5]   (needs the 'crosscheck' extra)

Sections:
1. layers: the per-layer table of ``layers.py`` (forward and forward+backward, each library in a process
   of its own), for the small net and the full one;
2. the small FCN-8s (width 0.125, fc 512) SGD training step on a batch of 8 at 128x128, in pad 100 mode
   (the paper's) and in pad32 mode (no 100-pixel pad: conv1 sees 128x128 instead of 326x326), and the
   Tiny ImageNet classifier's Adam step (VGG16 at width 0.125 with batch norm, the "average" head, fc 512,
   202 classes) on a batch of 64 photos of 64x64, as ``minifcn pretrain`` trains the shipped one;
3. the full FCN-8s forward on one 500x375 image, each library in its own fresh process, with
   that process's peak resident memory (gradients enabled, as in training);
4. import order: the small step and the classifier's step in a script that imports numpy before minifcn,
   against one that imports minifcn first (fresh processes, alternating);
5. cold start: a fresh process with an empty Numba cache and an empty autotune table, from ``python``
   to the end of the first training step (import, kernel compilation and route measuring included),
   with the split: the kernels compiled up front, in how many processes, and the routes measured;
6. (numba) the route table: every 3x3 layer of the small net (batch 8) and one of each width of the
   full net (one 224x224 image), forward+backward, through each route forced (register tiles, a BLAS
   product per tap, Winograd F(2x2, 3x3), im2col), and the routes autotune chose for its three passes
   on this CPU;
7. (numba) where the pad32 step's time goes: a profile, by function.
The first lines name the CPU, the vector width the kernels compile to and the thread count.
A ratio is minifcn / PyTorch: below 1 means minifcn is faster or smaller.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

# minifcn sets OMP_WAIT_POLICY and OPENBLAS_THREAD_TIMEOUT when imported (see minifcn/__init__.py);
# PyTorch's processes get the environment as it was before that, so each library runs with its own defaults.
USER_ENV = dict(os.environ)
import minifcn  # noqa: E402  this process runs the route table and the profile (sections 6 and 7)
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

# Each child prints one JSON line: {"seconds": [...], "rss_mb": peak resident memory}.
CHILD = r"""
import json, resource, sys, time
lib, what, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
if lib == "numpy-first":  # as a script that imports numpy (and so OpenBLAS) before minifcn
    import numpy
    lib = "minifcn"
if lib == "minifcn":
    import minifcn
import numpy as np
rng = np.random.default_rng(0)
if lib == "torch":
    import torch
    torch.set_num_threads(threads)
    sys.path.insert(0, sys.argv[4])
    from torch_reference import TorchFCN8s, TorchVGGClassifier
    full = what == "full"
    if what == "classifier":
        model = TorchVGGClassifier(202, (8, 16, 32, 64, 64), 512)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    else:
        model = TorchFCN8s(21, (64, 128, 256, 512, 512) if full else (8, 16, 32, 64, 64), 4096 if full else 512,
                           "pad32" if what == "small32" else "pad100")
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    def run():
        if full:
            model(torch.tensor(x))
        else:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(torch.tensor(x)), torch.tensor(y), ignore_index=255).backward()
            opt.step()
else:
    minifcn.set_num_threads(threads)
    from minifcn import Tensor, models, functional as F
    from minifcn.optim import SGD, Adam
    full = what == "full"
    if what == "classifier":
        model = models.VGGClassifier(202, 0.125, 512, 64, batchnorm=True, head="average", dropout=0.0)
        opt = Adam(model.parameters(), 1e-3)
    else:
        model = models.build("fcn8s", width=1.0 if full else 0.125, fc_width=4096 if full else 512,
                             input_mode="pad32" if what == "small32" else "pad100")
        opt = SGD(model.parameters(), 1e-3, 0.9)
    def run():
        if full:
            model(Tensor(x))
        else:
            opt.zero_grad()
            F.softmax_cross_entropy(model(Tensor(x)), y).backward()
            opt.step()
shape = {"full": (1, 3, 375, 500), "classifier": (64, 3, 64, 64)}.get(what, (8, 3, 128, 128))
x = rng.standard_normal(shape).astype(np.float32)
y = rng.integers(0, 202, 64) if what == "classifier" else rng.integers(0, 21, (8, 128, 128))
times = []
for _ in range(int(sys.argv[5])):
    t = time.perf_counter(); run(); times.append(time.perf_counter() - t)
def peak_mb():  # VmHWM is this process's own peak; ru_maxrss on Linux keeps the forked parent's peak across exec
    try:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
report = {"seconds": times, "rss_mb": peak_mb()}
if lib == "minifcn" and minifcn.get_backend() == "numba":  # the cold start's parts
    from minifcn.kernels import autotune, precompile
    report.update(precompile=precompile.reports(), autotune=autotune.report())
print(json.dumps(report))
"""


def child(lib, what, threads, runs, env=None):
    started = time.perf_counter()
    base = USER_ENV if lib == "torch" else os.environ
    out = subprocess.run([sys.executable, "-c", CHILD, lib, what, str(threads), HERE, str(runs)],
                         capture_output=True, text=True, env={**base, **(env or {})})
    if out.returncode:
        raise RuntimeError(f"{lib} {what} failed:\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall"] = time.perf_counter() - started
    return result


def model_rows(args):
    """Sections 2 and 3: alternate the two libraries, each in fresh processes."""
    rows = []
    for what, runs, label in (("small", args.repeat + 1, "small FCN-8s SGD step, batch 8 of 128², pad 100"),
                              ("small32", args.repeat + 1, "small FCN-8s SGD step, batch 8 of 128², pad32"),
                              ("classifier", args.repeat + 1, "Tiny ImageNet classifier's Adam step, batch 64 of 64²"),
                              ("full", 3, "full FCN-8s forward, one 500×375 image")):
        mine, theirs = [], []
        for _ in range(args.processes):
            mine.append(child("minifcn", what, args.threads, runs, {"MINIFCN_BACKEND": args.backend}))
            theirs.append(child("torch", what, args.threads, runs))
        a = np.median([t for r in mine for t in r["seconds"][1:]])  # the first run warms up
        b = np.median([t for r in theirs for t in r["seconds"][1:]])
        ma, mb = max(r["rss_mb"] for r in mine), max(r["rss_mb"] for r in theirs)
        rows.append(f"| {label} | {a:.3f} | {b:.3f} | {a / b:.2f} | {ma:.0f} | {mb:.0f} | {ma / mb:.2f} |")
    return rows


def import_order(args):
    """Section 4: the small step and the classifier's with numpy imported first / minifcn first, fresh
    processes, alternating."""
    env, rows = {"MINIFCN_BACKEND": args.backend}, []
    for what, label in (("small", "small FCN-8s SGD step, pad 100"), ("classifier", "classifier's Adam step")):
        firsts, lasts = [], []
        for _ in range(args.processes):
            lasts.append(child("numpy-first", what, args.threads, args.repeat + 1, env))
            firsts.append(child("minifcn", what, args.threads, args.repeat + 1, env))
        a = np.median([t for r in lasts for t in r["seconds"][1:]])
        b = np.median([t for r in firsts for t in r["seconds"][1:]])
        rows.append(f"| {label} | {a:.3f} | {b:.3f} | {a / b:.2f} |")
    return rows


def cold_start(args):
    """Section 5: a new process, empty Numba cache and autotune table, to the end of the first small step."""
    with tempfile.TemporaryDirectory() as cache:
        r = child("minifcn", "small", args.threads, 1, {"MINIFCN_BACKEND": args.backend, "NUMBA_CACHE_DIR": cache,
                                                        "MINIFCN_CACHE_DIR": cache})
    return r["wall"], r["seconds"][0], r.get("precompile"), r.get("autotune")


SMALL_NET_LAYERS = [  # (name, in, out, size at batch 8 of 128^2): pad100 sizes, then pad32 sizes
    ("conv1_2", 8, 8, 326), ("conv2_1", 8, 16, 163), ("conv2_2", 16, 16, 163), ("conv3_1", 16, 32, 82),
    ("conv3_2", 32, 32, 82), ("conv4_1", 32, 64, 41), ("conv4_2", 64, 64, 41), ("conv5_2", 64, 64, 21),
    ("conv1_2", 8, 8, 128), ("conv2_2", 16, 16, 64), ("conv3_2", 32, 32, 32), ("conv4_2", 64, 64, 16),
    ("conv5_2", 64, 64, 8)]
FULL_NET_LAYERS = [  # (name, in, out, size at one 224^2 image): one layer of each width of VGG16
    ("conv1_2", 64, 64, 224), ("conv2_2", 128, 128, 112), ("conv3_2", 256, 256, 56), ("conv4_2", 512, 512, 28),
    ("conv5_2", 512, 512, 14)]


ROUTES = ("tiled", "shifted", "winograd", "im2col")  # forced in turn in the route table


def route_rows(repeat):
    """Section 6: every 3x3 layer of the small FCN-8s and some of the full one, fwd+bwd, through each route
    forced (alternating, in this process), and the routes autotune chose for the forward pass, the input and
    the weight gradient."""
    from minifcn import Tensor, functional as F
    from minifcn.kernels import autotune, numba_cpu
    rng, rows, forced = np.random.default_rng(0), [], ROUTES
    layers = [(8, *layer) for layer in SMALL_NET_LAYERS] + [(1, *layer) for layer in FULL_NET_LAYERS]
    for batch, name, cin, cout, size in layers:
        x = Tensor(rng.standard_normal((batch, cin, size, size)).astype(np.float32), requires_grad=True)
        w = Tensor(rng.standard_normal((cout, cin, 3, 3)).astype(np.float32) * 0.1, requires_grad=True)

        def step():
            y = F.conv2d(x, w, padding=1)
            y.backward(y.data)
        times = {route: [] for route in forced}
        for _ in range(repeat + 1):
            for route in forced:
                numba_cpu.ROUTE = route
                t = time.perf_counter()
                step()
                times[route].append(time.perf_counter() - t)
        numba_cpu.ROUTE = None
        chosen, real = [], autotune.choose

        def spy(key, *args):
            route, result = real(key, *args)
            chosen.append(route)
            return route, result
        autotune.choose = spy
        try:
            step()
        finally:
            autotune.choose = real
        flops = 3 * 2 * batch * cin * cout * 9 * size * size  # forward, input and weight gradient
        cells = [f"{np.median(times[r][1:]) * 1e3:.0f} ms ({flops / np.median(times[r][1:]) / 1e9:.0f} GF/s)"
                 for r in forced]
        dx = chosen[1] + (f" ({chosen[2]})" if chosen[1] == "flipped" else "")  # the flipped pass is a forward
        net = "small net, batch 8" if batch == 8 else "full net, 1 image"
        rows.append(f"| {name} {cin}→{cout} at {size}², {net} | " + " | ".join(cells) +
                    f" | {chosen[0]} · {dx} · {chosen[-1]} |")
    assert minifcn.get_backend() == "numba"
    return rows


def profile_rows(args, what="small32", steps=10):
    """Section 7: where one training step's time goes (cProfile, own time per function, this process)."""
    import cProfile
    import pstats
    from minifcn import Tensor, functional as F, models
    from minifcn.optim import SGD
    minifcn.set_num_threads(args.threads)
    model = models.build("fcn8s", width=0.125, fc_width=512, input_mode="pad32" if what == "small32" else "pad100")
    opt = SGD(model.parameters(), 1e-3, 0.9)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 3, 128, 128)).astype(np.float32), rng.integers(0, 21, (8, 128, 128))

    def step():
        opt.zero_grad()
        F.softmax_cross_entropy(model(Tensor(x)), y).backward()
        opt.step()
    step()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        step()
    prof.disable()
    stats = pstats.Stats(prof).stats
    total = sum(v[2] for v in stats.values()) / steps
    top = sorted(stats.items(), key=lambda kv: -kv[1][2])[:15]
    rows = [f"one step {total * 1e3:.1f} ms (profiled: cProfile adds its own overhead to Python calls)\n",
            "| function | calls / step | own ms / step | share |", "|---|---|---|---|"]
    for (file, line, fn), (_, calls, own, _, _) in top:
        where = f"{os.path.basename(file)}:{line} {fn}" if line else fn
        rows.append(f"| {where} | {calls / steps:.0f} | {own / steps * 1e3:.1f} | {100 * own / steps / total:.0f} % |")
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="numba", choices=["numpy", "numba", "cupy"])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--processes", type=int, default=2, help="fresh process pairs per model row")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--skip-layers", action="store_true")
    args = p.parse_args()
    os.environ["MINIFCN_BACKEND"] = args.backend
    from minifcn import cpu, memory
    from minifcn.kernels import autotune
    print(f"CPU: {cpu.describe()}; {args.threads} threads; routes "
          f"{'measured (autotune)' if autotune.enabled() else 'by shape (autotune off)'}; freed memory "
          f"{'kept (minifcn/memory.py)' if memory.STATE is None else 'returned: ' + memory.STATE}")
    import layers  # noqa: E402  (reads MINIFCN_BACKEND through minifcn)
    if not args.skip_layers:
        layers.main(["--repeat", str(args.repeat), "--threads", str(args.threads), "--backend", args.backend])
    print(f"\nbackend {args.backend}; each row: medians over {args.processes} fresh processes per library\n")
    print("| model | minifcn s | PyTorch s | ratio | minifcn peak MB | PyTorch peak MB | memory ratio |")
    print("|---|---|---|---|---|---|---|")
    for row in model_rows(args):
        print(row, flush=True)
    print("\n| import order | numpy first s | minifcn first s | ratio |\n|---|---|---|---|")
    for row in import_order(args):
        print(row, flush=True)
    wall, step, compiled, tuned = cold_start(args)
    print(f"\ncold start (empty Numba cache and autotune table): {wall:.1f} s from a new process to the end of "
          f"the first training step; the step itself {step:.1f} s")
    for r in compiled or []:
        print(f"  kernels compiled up front ({r['dtype']}) in {len(r['shares'])} processes, {r['seconds']} s: "
              f"{r['shares']}" + (f"; failed: {r['failed']}" if r["failed"] else ""))
    if tuned:
        print(f"  routes measured: {tuned['measured']} passes, {tuned['seconds']} s (compiling included); costliest:")
        for key, seconds, tried in tuned.get("slowest", []):
            print(f"    {seconds:.2f} s, {tried} routes: {key}")
    if args.backend == "numba":
        print("\n| 3x3 layer, fwd+bwd (numba; GF/s count the direct sum's multiply-adds) | register tiles "
              "| shifted GEMM | Winograd | im2col | routes chosen: forward · input grad · weight grad |"
              "\n|---|---|---|---|---|---|")
        for row in route_rows(args.repeat):
            print(row, flush=True)
        print(f"\nautotune in this process: {autotune.report()}")
        print("\nwhere the small pad32 step's time goes:\n")
        print("\n".join(profile_rows(args)))


if __name__ == "__main__":
    main()
