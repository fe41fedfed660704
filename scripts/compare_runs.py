"""Compare several runs' training loss on one figure, and write a summary table.

Each run's loss is smoothed with a centred rolling mean (--window steps) drawn with its rolling
min-max band, on a linear axis over the first --first-steps steps and on a log axis over all steps
(the seed notebook 002_). The summary CSV has per run: final loss, mean loss over the last
--last steps, and the first step under each loss threshold.

Example:
    python scripts/compare_runs.py runs/addition_5d_s129000 runs/addition_6d_s129000 --label-by digits
    python scripts/compare_runs.py runs/* --out runs/compare_all.png
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from grokmath import cli  # noqa: E402


def build_parser():
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders made by scripts/train_*.py")
    parser.add_argument("--label-by", default=None,
                        help="label each run by this setting from its config.json, e.g. digits, d_model, seed "
                        "(default: the run folder's name)")
    parser.add_argument("--out", default="runs/compare.png",
                        help="the PNG to write; the summary goes beside it as .csv (default: runs/compare.png)")
    parser.add_argument("--window", type=cli.positive_int, default=100, help="smoothing window in steps (default: 100)")
    parser.add_argument("--first-steps", type=cli.positive_int, default=None,
                        help="steps shown on the linear plot (default: a quarter of the longest run)")
    parser.add_argument("--last", type=cli.positive_int, default=100,
                        help="steps averaged for the summary's final mean loss (default: 100)")
    parser.add_argument("--thresholds", type=cli.positive_float, nargs="+", default=[1.0, 0.1, 0.01, 0.001],
                        help="losses whose first step the summary reports (default: 1 0.1 0.01 0.001)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing figure and summary")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    from grokmath.analysis.opening import open_run
    from grokmath.store.checkpoint import refuse_existing
    from grokmath.training.plots import write_compare

    for run_dir in args.run_dirs:
        open_run(run_dir, load_model=False)
    out = Path(args.out)
    refuse_existing([out.with_suffix(".png"), out.with_suffix(".csv")], args.overwrite,
                    "pass --overwrite to replace it, or choose another --out")
    png, csv, summary = write_compare(args.run_dirs, args.out, label_by=args.label_by, window=args.window,
                                      first_steps=args.first_steps, last=args.last, thresholds=args.thresholds)
    print(summary.to_string(index=False))
    print(png)
    print(csv)


if __name__ == "__main__":
    cli.main_guard(main)
