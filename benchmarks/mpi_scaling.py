"""Data parallelism against threads on one machine: 1 rank x C threads against C ranks x 1 thread.

    python benchmarks/mpi_scaling.py [--rounds 3] [--steps 20]     (needs the 'mpi' extra)

Both train the same net on the same global batch: the demo's recipe (FCN-8s at width 0.125, pad32, Adam,
64-pixel crops in batches of 16) on generated 96-px images. Each configuration runs in processes of its
own (``mpiexec -n R``), alternating, ``rounds`` times; a run trains a few steps first (Numba's kernels
load, the caches fill) and then times ``steps`` steps on rank 0, from a barrier to the end of the
last step. Reported: steps per second (medians), and the scaling efficiency, ranks' throughput over
threads' (1.0: data parallelism costs nothing that threads did not already give).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile


WORKER = r"""
import json, sys, time
import minifcn
from minifcn import backend, distributed
from minifcn.train import TrainConfig, train
data, out, threads, warm, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
backend.set_num_threads(threads)
world = distributed.world()
config = TrainConfig(data=data, out=out, model="fcn8s", width=0.125, fc_width=512, input_mode="pad32",
                     optimizer="adam", lr=3e-3, warmup_steps=100, epochs=10, batch_size=16, crop=64,
                     checkpoint_every=10 ** 6, val_every=0)
train(config, max_steps=warm, progress=False, log=lambda *a: None)
world.barrier()
start = time.perf_counter()
train(config, resume=True, max_steps=warm + steps, progress=False, log=lambda *a: None)
world.barrier()
if world.rank == 0:
    print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def run(ranks, threads, data, out, warm, steps):
    """Seconds for ``steps`` steps with ``ranks`` processes of ``threads`` threads each."""
    shutil.rmtree(out, ignore_errors=True)
    python = sys.executable
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(python)) or shutil.which("mpiexec")
    command = [mpiexec, "-n", str(ranks), python, "-c", WORKER, data, out, str(threads), str(warm), str(steps)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="alternating runs of each configuration")
    p.add_argument("--steps", type=int, default=20, help="timed steps per run")
    p.add_argument("--warm", type=int, default=3, help="untimed steps first")
    p.add_argument("--cores", type=int, default=os.cpu_count(), help="C: the cores to share")
    args = p.parse_args()
    from minifcn.cpu import model_name
    from minifcn.data import synthesize
    with tempfile.TemporaryDirectory() as tmp:
        data = synthesize(os.path.join(tmp, "data"), 16 * (args.warm + args.steps), 8, 96, progress=False)
        configs = {"1 rank x %d threads" % args.cores: (1, args.cores),
                   "%d ranks x 1 thread" % args.cores: (args.cores, 1)}
        seconds = {name: [] for name in configs}
        for _ in range(args.rounds):
            for name, (ranks, threads) in configs.items():
                seconds[name].append(run(ranks, threads, data, os.path.join(tmp, "run"), args.warm, args.steps))
    print(f"CPU: {model_name()}, {os.cpu_count()} cores; {args.steps} steps of the demo's FCN-8s step (batch 16, "
          f"64 px), medians of {args.rounds} alternating runs")
    rates = {}
    for name, values in seconds.items():
        rates[name] = args.steps / statistics.median(values)
        print(f"  {name:22s} {rates[name]:6.2f} steps/s   (runs: {', '.join(f'{v:.2f}' for v in values)} s)")
    threads, ranks = rates.values()
    print(f"  scaling efficiency (ranks / threads): {ranks / threads:.2f}")


if __name__ == "__main__":
    main()
