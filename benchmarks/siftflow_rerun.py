"""The table's branches again with one setting changed: FCN-16s -> 8s and the control, from the same FCN-32s.

FCN-16s -> 8s and the FCN-32s control both grow from one FCN-32s. This trains the three again from that
same FCN-32s, beside the run of ``siftflow_imagenet.py`` made with the same options (its FCN-32s, 16s, 8s
and control must be done), with one thing changed:

- ``--rerun-seed S``: another seed (another order of the photos, other crops, other dropout masks): the
  rerun noise of the question "does FCN-8s beat an FCN-32s trained on for as long?". The gap counts as
  real when both seeds show it and it exceeds how far the seeds move either row. Folders ``NAME-seedS``,
  record ``results/siftflow-imagenet-rerun.json`` (``seeds``).
- ``--class-weights sqrt`` (or ``fourth-root``, ``eighth-root``, ``balanced``): a loss that weights each class
  by the inverse square root of its pixel share (or its fourth or eighth root, or the inverse share;
  ``minifcn.train.class_weights``), so that windows and poles count for more than sky. Folders
  ``NAME-sqrt``, record ``results/siftflow-imagenet-sqrt.json`` (``losses``), its FCN-8s's prediction of
  every test photo (``_test_predictions.npz``) and a figure of both FCN-8s (``siftflow-imagenet-sqrt.png``).
- both: the loss run's rerun noise. Its branches again under another seed (``NAME-sqrt-seedS``), compared
  with the loss run (which must be done), record ``results/siftflow-imagenet-sqrt-rerun.json`` (``seeds``).

Each record holds both runs' rows and, in each, the gap FCN-8s minus control.

    python benchmarks/siftflow_rerun.py --out runs/siftflow-imagenet --rerun-seed 1
    python benchmarks/siftflow_rerun.py --out runs/siftflow-imagenet --class-weights sqrt
    python benchmarks/siftflow_rerun.py --out runs/siftflow-imagenet --class-weights sqrt --rerun-seed 1
"""

import dataclasses
import os
import sys

from minifcn import atomic, zoo
from minifcn.config import CLASS_WEIGHT_POWER
from minifcn.data import SIFTFLOW_CLASSES, SIFTFlow
from minifcn.experiment import Stage, run_stages, stage_predictions
from minifcn.viz import prediction_grid
from siftflow import examples
import siftflow_imagenet as table

BRANCHES = ("fcn16s", "fcn8s", "fcn32s-control")
METRICS = ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")


def branches(stages, suffix, **change):
    """The table's FCN-32s, and its three branches with ``change`` made, in folders of their own (``NAME-suffix``)."""
    named = {s.name: s for s in stages}
    again = [named["fcn32s"]]
    for name in BRANCHES:
        s = named[name]
        parent = s.init_from if s.init_from == "fcn32s" else f"{s.init_from}-{suffix}"
        config = dataclasses.replace(s.config, **change, out=f"{s.config.out}-{suffix}")
        again.append(Stage(f"{name}-{suffix}", config, parent))
    return again


def pictures(first, again, test, args):
    """For the loss rerun: its FCN-8s's prediction of every test photo (``_test_predictions.npz``, in the label
    files' values 1-33), and a figure of five test photos, FCN-8s under either loss beside the truth."""
    eights = [next(s for s in stages if s.name.startswith("fcn8s")) for stages in (first, again)]
    name = f"siftflow-imagenet-{args.class_weights}"
    table.save_test_predictions(eights[1], test, os.path.join(args.results, f"{name}_test_predictions.npz"))
    labels = ["FCN-8s, equal loss", f"FCN-8s, {args.class_weights} loss"]
    prediction_grid(stage_predictions(eights, test, examples(test)), labels, os.path.join(args.results, f"{name}.png"),
                    f"SIFT Flow test photos: FCN-8s trained with equal and with {args.class_weights}-weighted classes",
                    SIFTFLOW_CLASSES)


def main(argv=None):
    shipped = zoo.available()
    p = table.parser(shipped, __doc__)
    p.add_argument("--rerun-seed", type=int, help="the seed of the rerun (the table's is --seed)")
    p.add_argument("--class-weights", choices=tuple(CLASS_WEIGHT_POWER),
                   help="the loss of the rerun (the table's: equal)")
    args = p.parse_args(argv)
    if args.rerun_seed is None and args.class_weights is None:
        p.error("say what changes: --rerun-seed, --class-weights, or both")
    if args.only:
        p.error("--only is the table's; this script runs the three branches")
    if args.rerun_seed == args.seed:
        p.error(f"--rerun-seed must differ from --seed ({args.seed}) to measure anything")
    if not os.path.isdir(table.ROOT):
        sys.exit(f"SIFT Flow not found at {table.ROOT}; set MINIFCN_SIFTFLOW")
    first = table.plan(args, shipped[args.weights])
    test = SIFTFlow(table.ROOT, "test")
    loss = {"class_weights": args.class_weights} if args.class_weights else {}
    if args.rerun_seed is None:  # the loss changes: the table's run against the loss's
        kind, labels, file, suffix = "losses", ("equal", args.class_weights), args.class_weights, args.class_weights
        base, base_suffix, again = first, "", branches(first, suffix, **loss)
    else:  # the seed changes: the table's run, or the loss's, against the same under the rerun seed
        kind, labels = "seeds", (str(args.seed), str(args.rerun_seed))
        file = f"{args.class_weights}-rerun" if loss else "rerun"
        suffix = "-".join(filter(None, (args.class_weights, f"seed{args.rerun_seed}")))
        base_suffix = args.class_weights or ""
        base = branches(first, base_suffix, **loss) if loss else first
        again = branches(first, suffix, seed=args.rerun_seed, **loss)

    def branch(stage, suffix):
        return stage.name.removesuffix(f"-{suffix}") if suffix else stage.name
    rows = {labels[0]: {branch(s, base_suffix): table.row(s, args, test) for s in base
                        if branch(s, base_suffix) in BRANCHES}}
    missing = [name for name, r in rows[labels[0]].items() if r is None]
    if missing:
        sys.exit(f"run the {'loss rerun' if loss and kind == 'seeds' else 'table'} with these options first: "
                 f"{', '.join(missing)} not finished in {args.out}")
    run_stages(again, exclude_absent=True, jobs=args.jobs, only=[s.name for s in again[1:]])
    rows[labels[1]] = {branch(s, suffix): table.row(s, args, test) for s in again[1:]}
    gaps = {label: {k: r["fcn8s"][k] - r["fcn32s-control"][k] for k in METRICS} for label, r in rows.items()}
    record = {"setup": {k: v for k, v in vars(args).items() if k not in ("out", "results", "only")},
              kind: rows, "gap_fcn8s_minus_control": gaps}
    os.makedirs(args.results, exist_ok=True)
    atomic.write_json(os.path.join(args.results, f"siftflow-imagenet-{file}.json"), record)
    if kind == "losses":
        pictures(first, again, test, args)
    for label, r in rows.items():
        for name in BRANCHES:
            print(f"{label:6}  {name:15} " + "  ".join(f"{k} {100 * r[name][k]:.1f}" for k in METRICS)
                  + f"  ({r[name]['train_minutes']:.1f} min)")
        print(f"{label:6}  fcn8s - control " + "  ".join(f"{k} {100 * gaps[label][k]:+.1f}" for k in METRICS))


if __name__ == "__main__":
    main()
