"""The rerun noise of the SIFT Flow table's question: does FCN-8s beat an FCN-32s trained on for as long?

FCN-16s -> 8s and the FCN-32s control both grow from one FCN-32s. This trains the three again from that
same FCN-32s with another seed (another order of the photos, other crops, other dropout masks), beside
the run of ``siftflow_imagenet.py`` made with the same options (its FCN-32s, 16s, 8s and control must be
done), and writes ``results/siftflow-imagenet-rerun.json``: both seeds' rows, and in each seed the gap
FCN-8s minus control. The gap counts as real when both seeds show it and it exceeds how far the seeds
move either row.

    python benchmarks/siftflow_rerun.py --out runs/siftflow-imagenet --rerun-seed 1
"""

import dataclasses
import json
import os
import sys

from minifcn import atomic, zoo
from minifcn.data import SIFTFlow
from minifcn.experiment import Stage, run_stages
import siftflow_imagenet as table

BRANCHES = ("fcn16s", "fcn8s", "fcn32s-control")
METRICS = ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")


def reseeded(stages, seed):
    """The table's FCN-32s, and its three branches under ``seed`` in folders of their own (``NAME-seedS``)."""
    named = {s.name: s for s in stages}
    again = [named["fcn32s"]]
    for name in BRANCHES:
        s = named[name]
        parent = s.init_from if s.init_from == "fcn32s" else f"{s.init_from}-seed{seed}"
        config = dataclasses.replace(s.config, seed=seed, out=f"{s.config.out}-seed{seed}")
        again.append(Stage(f"{name}-seed{seed}", config, parent))
    return again


def main(argv=None):
    shipped = zoo.available()
    p = table.parser(shipped, __doc__)
    p.add_argument("--rerun-seed", type=int, default=1, help="the seed of the rerun (the table's is --seed)")
    args = p.parse_args(argv)
    if args.only:
        p.error("--only is the table's; this script runs the three branches")
    if args.rerun_seed == args.seed:
        p.error(f"--rerun-seed must differ from --seed ({args.seed}) to measure anything")
    if not os.path.isdir(table.ROOT):
        sys.exit(f"SIFT Flow not found at {table.ROOT}; set MINIFCN_SIFTFLOW")
    first = table.plan(args, shipped[args.weights])
    test = SIFTFlow(table.ROOT, "test")
    rows = {args.seed: {s.name: table.row(s, args, test) for s in first if s.name in BRANCHES}}
    missing = [name for name, r in rows[args.seed].items() if r is None]
    if missing:
        sys.exit(f"run siftflow_imagenet.py with these options first: {', '.join(missing)} not finished in {args.out}")
    again = reseeded(first, args.rerun_seed)
    run_stages(again, exclude_absent=True, jobs=args.jobs, only=[s.name for s in again[1:]])
    rows[args.rerun_seed] = {s.name.removesuffix(f"-seed{args.rerun_seed}"): table.row(s, args, test)
                             for s in again[1:]}
    gaps = {seed: {k: r["fcn8s"][k] - r["fcn32s-control"][k] for k in METRICS} for seed, r in rows.items()}
    record = {"setup": {k: v for k, v in vars(args).items() if k not in ("out", "results", "only")},
              "seeds": {str(seed): r for seed, r in rows.items()},
              "gap_fcn8s_minus_control": {str(seed): g for seed, g in gaps.items()}}
    os.makedirs(args.results, exist_ok=True)
    atomic.write_bytes(os.path.join(args.results, "siftflow-imagenet-rerun.json"), json.dumps(record, indent=1).encode())
    for seed, r in rows.items():
        for name in BRANCHES:
            print(f"seed {seed}  {name:15} " + "  ".join(f"{k} {100 * r[name][k]:.1f}" for k in METRICS)
                  + f"  ({r[name]['train_minutes']:.1f} min)")
        print(f"seed {seed}  fcn8s - control " + "  ".join(f"{k} {100 * gaps[seed][k]:+.1f}" for k in METRICS))


if __name__ == "__main__":
    main()
