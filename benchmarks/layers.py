"""Per-layer speed of minifcn against PyTorch CPU, each library in a process of its own.

    python benchmarks/layers.py            (needs the crosscheck extra; benchmarks/speed.py runs it too)

Every layer of the small FCN-8s (width 1/8, fc 512, batch 8 of 128x128 images, pad 100 sizes) and of
the full one (VGG16 widths, one 224x224 image), forward and forward+backward. Each library runs in a
fresh process of its own, as users run them (in one process their thread pools fight). The table gives
the medians, their ratio (minifcn / PyTorch: below 1 is faster), and each one's GFLOP/s as a share of
this machine's float32 GEMM peak, measured in minifcn's process (numpy 2048^3).
"""

import argparse
import json
import os
import platform
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
USER_ENV = dict(os.environ)  # before minifcn is imported anywhere: PyTorch keeps its own thread defaults

# (name, in, out, kernel, size, batch, stride, padding, transposed)
SMALL = [("conv1_1", 3, 8, 3, 128, 8, 1, 100, False), ("conv1_2", 8, 8, 3, 326, 8, 1, 1, False),
         ("conv2_1", 8, 16, 3, 163, 8, 1, 1, False), ("conv2_2", 16, 16, 3, 163, 8, 1, 1, False),
         ("conv3_1", 16, 32, 3, 82, 8, 1, 1, False), ("conv3_2", 32, 32, 3, 82, 8, 1, 1, False),
         ("conv4_1", 32, 64, 3, 41, 8, 1, 1, False), ("conv4_2", 64, 64, 3, 41, 8, 1, 1, False),
         ("conv5_2", 64, 64, 3, 21, 8, 1, 1, False), ("fc6 7x7", 64, 512, 7, 11, 8, 1, 0, False),
         ("upscore2 4x4/2", 21, 21, 4, 5, 8, 2, 0, True), ("upscore8 16x16/8", 21, 21, 16, 26, 8, 8, 0, True)]
FULL = [("conv1_2", 64, 64, 3, 224, 1, 1, 1, False), ("conv2_2", 128, 128, 3, 112, 1, 1, 1, False),
        ("conv3_2", 256, 256, 3, 56, 1, 1, 1, False), ("conv4_2", 512, 512, 3, 28, 1, 1, 1, False),
        ("conv5_2", 512, 512, 3, 14, 1, 1, 1, False), ("fc6 7x7", 512, 4096, 7, 7, 1, 1, 0, False),
        ("upscore8 16x16/8", 21, 21, 16, 32, 1, 8, 0, True)]

CHILD = r"""
import json, sys, time
lib, threads, repeat, cases = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
if lib == "minifcn":
    import minifcn
import numpy as np
if lib == "torch":
    import torch
    torch.set_num_threads(threads)
    conv, convT, tensor = torch.nn.functional.conv2d, torch.nn.functional.conv_transpose2d, torch.tensor
    def backward(y): y.backward(torch.ones_like(y))
else:
    from minifcn import functional as F
    minifcn.set_num_threads(threads)
    conv, convT, tensor = F.conv2d, F.conv_transpose2d, lambda a, requires_grad: minifcn.Tensor(a, requires_grad)
    def backward(y): y.backward(np.ones(y.shape, np.float32))
def median(fn):
    fn()  # warm up (and compile)
    times = []
    for _ in range(repeat):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return float(np.median(times))
out, rng = {}, np.random.default_rng(0)
if lib != "torch":
    a = rng.random((2048, 2048), dtype=np.float32)
    out["peak"] = 2 * 2048 ** 3 / median(lambda: a @ a) / 1e9
for name, cin, cout, k, size, batch, stride, pad, transposed in cases:
    x = rng.standard_normal((batch, cin, size, size), dtype=np.float32)
    w = 0.1 * rng.standard_normal((cin, cout, k, k) if transposed else (cout, cin, k, k), dtype=np.float32)
    op = convT if transposed else conv
    def run(grad):
        xt, wt = tensor(x, requires_grad=grad), tensor(w, requires_grad=grad)
        y = op(xt, wt, stride=stride, padding=pad)
        if grad:
            backward(y)
    out[name] = [median(lambda: run(False)), median(lambda: run(True))]
print(json.dumps(out))
"""


def child(lib, cases, threads, repeat, backend):
    env = {**USER_ENV, "MINIFCN_BACKEND": backend} if lib == "minifcn" else USER_ENV
    done = subprocess.run([sys.executable, "-c", CHILD, lib, str(threads), str(repeat), json.dumps(cases)],
                          capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"{lib} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def flops(case):
    """Multiply-adds x 2 of the forward pass: (output pixels) x Cin x Cout x k^2, batch included."""
    from minifcn.conv_arithmetic import conv_output_size  # late: the parent has no other use for minifcn
    name, cin, cout, k, size, batch, stride, pad, transposed = case
    pixels = size * size if transposed else conv_output_size(size, k, stride, pad) ** 2
    return 2 * batch * pixels * cin * cout * k * k


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--backend", default="numba")
    args = p.parse_args(argv)
    rows = []
    for title, cases in (("small FCN-8s (width 1/8, batch 8, pad 100 sizes)", SMALL),
                         ("full FCN-8s (VGG16 widths, one 224x224 image)", FULL)):
        ours, theirs = (child(lib, cases, args.threads, args.repeat, args.backend) for lib in ("minifcn", "torch"))
        peak = ours["peak"]
        rows.append(f"\n{title}; float32 GEMM peak {peak:.0f} GFLOP/s in minifcn's process "
                    f"({platform.machine()}, {args.threads} threads, backend {args.backend})\n")
        rows.append("| layer | minifcn fwd / fwd+bwd ms | PyTorch fwd / fwd+bwd ms | ratio fwd / fwd+bwd | "
                    "minifcn GFLOP/s fwd / fwd+bwd (% of peak) | PyTorch GFLOP/s fwd / fwd+bwd |")
        rows.append("|---|---|---|---|---|---|")
        for case in cases:
            name, f = case[0], flops(case)
            (a, ab), (b, bb) = ours[name], theirs[name]
            rows.append(f"| {name} {case[1]}→{case[2]} at {case[4]}² | {1e3 * a:.1f} / {1e3 * ab:.1f} | "
                        f"{1e3 * b:.1f} / {1e3 * bb:.1f} | {a / b:.2f} / {ab / bb:.2f} | "
                        f"{f / a / 1e9:.0f} / {3 * f / ab / 1e9:.0f} ({100 * f / a / 1e9 / peak:.0f} / "
                        f"{100 * 3 * f / ab / 1e9 / peak:.0f} %) | {f / b / 1e9:.0f} / {3 * f / bb / 1e9:.0f} |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
