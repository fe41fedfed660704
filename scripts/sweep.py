"""Run a sweep: every combination of a grid of settings x every seed, as ordinary run folders.

A sweep file (TOML):
    script = "train_addition"        # which training script
    out = "runs/sweep_lr"            # the sweep folder (default: runs/sweep_<file name>)
    seeds = [1, 2, 3, 4]
    stack = 2                        # optional: seeds per process (default: all of a setting's on a GPU,
                                     # on CPUs enough processes to fill the cores)
    workers = 2                      # optional: processes at once (default: free cores, or GPUs)
    [base]                           # settings of every run: flag names with '_' for '-'
    digits = 5
    no_plots = true
    [grid]                           # every combination
    lr = [1e-4, 3e-4]
Each run is `<out>/<grid values>_s<seed>` (e.g. lr=0.0003_s1), trained by the script itself (its
output in <out>/logs/). Run the same command again after a stop or a kill: finished runs are kept,
stopped ones resumed, the rest started. At the end <out>/results.csv has one row per run and
<out>/views/ the across-seeds curves and the phase-change atlas (scripts/sweep_views.py redraws them).

Example:
    python scripts/sweep.py sweeps/lr.toml
    python scripts/sweep.py sweeps/lr.toml --ray local            # the same, as Ray tasks
    python scripts/sweep.py sweeps/lr.toml --ray 10.0.0.1:6379    # on a Ray cluster (shared file system)
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from grokmath import cli  # noqa: E402


def build_parser():
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_file", metavar="SWEEP.toml", help="the sweep file")
    parser.add_argument("--out", default=None, help="the sweep folder (default: the file's `out`)")
    parser.add_argument("--workers", type=cli.positive_int, default=None,
                        help="processes at once (default: the file's, else one per free core, or per GPU; with "
                        "--ray: the CPUs of a local Ray instance)")
    parser.add_argument("--stack", type=cli.positive_int, default=None,
                        help="seeds trained stacked in one process (--seeds); 1: one process per run "
                        "(default: the file's, else automatic)")
    parser.add_argument("--ray", metavar="ADDRESS", default=None,
                        help="run each process as a Ray task: 'local' starts a Ray instance here, else the "
                        "address of a cluster's head (e.g. 10.0.0.1:6379 or ray://host:10001); needs "
                        "`pip install ray` and the repository and sweep folder at the same paths on every node")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    from grokmath.sweeps.grid import SweepFailed, read_sweep, run_sweep

    sweep = read_sweep(args.sweep_file, out=args.out)
    try:
        results = run_sweep(sweep, workers=args.workers, stack=args.stack, progress=not args.no_progress,
                            ray_address=args.ray)
    except SweepFailed as e:
        print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"{len(results)} runs finished: {sweep.out / 'results.csv'}, views in {sweep.out / 'views'}")


if __name__ == "__main__":
    cli.main_guard(main)
