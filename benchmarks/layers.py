"""Per-layer speed of minifcn against PyTorch CPU, measured side by side in one process.

    python benchmarks/layers.py            (needs the crosscheck extra; benchmarks/speed.py runs it too)

Each layer runs minifcn and PyTorch alternately, ``--repeat`` times each; the
table gives the median times, their ratio (minifcn / PyTorch: below 1 is
faster) and minifcn's GFLOP/s as a share of this machine's float32 GEMM
peak, measured in the same run. Ratios, not raw times, are what compare
across noisy machines.
"""

import argparse
import os
import platform
import time

import numpy as np
import torch

import minifcn
from minifcn import Tensor
from minifcn import functional as F


def median_time(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def gemm_peak(n=2048, repeat=5):
    a, b = np.random.rand(n, n).astype(np.float32), np.random.rand(n, n).astype(np.float32)
    a @ b
    return 2 * n ** 3 / median_time(lambda: a @ b, repeat) / 1e9


def conv_case(name, cin, cout, k, size, stride=1, padding=1, transposed=False):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, cin, size, size), dtype=np.float32)
    w = rng.standard_normal((cin, cout, k, k) if transposed else (cout, cin, k, k), dtype=np.float32)
    ours = F.conv_transpose2d if transposed else F.conv2d
    theirs = torch.nn.functional.conv_transpose2d if transposed else torch.nn.functional.conv2d
    out = ours(x, w, stride=stride, padding=padding).shape
    pixels = (size * size) if transposed else (out[2] * out[3])
    flops = 2 * pixels * cin * cout * k * k

    def mine(backward):
        xt, wt = Tensor(x, requires_grad=backward), Tensor(w, requires_grad=backward)
        y = ours(xt, wt, stride=stride, padding=padding)
        if backward:
            y.backward(np.ones(y.shape, np.float32))

    def torch_run(backward):
        xt, wt = torch.tensor(x, requires_grad=backward), torch.tensor(w, requires_grad=backward)
        y = theirs(xt, wt, stride=stride, padding=padding)
        if backward:
            y.backward(torch.ones_like(y))

    return name, mine, torch_run, flops


def pool_case():
    x = np.random.default_rng(0).standard_normal((1, 64, 224, 224), dtype=np.float32)

    def mine(backward):
        xt = Tensor(x, requires_grad=backward)
        y = F.max_pool2d(xt, 2, 2, ceil_mode=True)
        if backward:
            y.backward(np.ones(y.shape, np.float32))

    def torch_run(backward):
        xt = torch.tensor(x, requires_grad=backward)
        y = torch.nn.functional.max_pool2d(xt, 2, 2, ceil_mode=True)
        if backward:
            y.backward(torch.ones_like(y))

    return "pool 2x2/2, 64ch 224²", mine, torch_run, None


CASES = [
    lambda: conv_case("conv1_2 64→64 224²", 64, 64, 3, 224),
    lambda: conv_case("conv3_2 256→256 56²", 256, 256, 3, 56),
    lambda: conv_case("conv5_2 512→512 14²", 512, 512, 3, 14),
    lambda: conv_case("fc6 7×7 512→4096 on 7²", 512, 4096, 7, 7, padding=0),
    lambda: conv_case("upscore 4×4/2 21ch 32²", 21, 21, 4, 32, stride=2, padding=0, transposed=True),
    lambda: conv_case("upscore 16×16/8 21ch 32²", 21, 21, 16, 32, stride=8, padding=0, transposed=True),
    pool_case,
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    minifcn.set_num_threads(args.threads)
    peak = gemm_peak()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"numpy {np.__version__}, minifcn backend {minifcn.get_backend()}; "
          f"float32 GEMM peak {peak:.0f} GFLOP/s (numpy 2048³)")
    print("| layer | pass | minifcn ms | PyTorch ms | ratio | minifcn GFLOP/s (% peak) |")
    print("|---|---|---|---|---|---|")
    for make in CASES:
        name, mine, theirs, flops = make()
        for backward in (False, True):
            mine(backward), theirs(backward)  # warm up
            ours_t, theirs_t = [], []
            for _ in range(args.repeat):  # alternate, so drifts in machine load hit both
                ours_t.append(median_time(lambda: mine(backward), 1))
                theirs_t.append(median_time(lambda: theirs(backward), 1))
            a, b = np.median(ours_t), np.median(theirs_t)
            rate = "" if flops is None or backward else f"{flops / a / 1e9:.0f} ({100 * flops / a / 1e9 / peak:.0f} %)"
            print(f"| {name} | {'fwd+bwd' if backward else 'fwd'} | {1e3 * a:.1f} | {1e3 * b:.1f} | "
                  f"{a / b:.2f} | {rate} |")


if __name__ == "__main__":
    main()
