"""Redraw a sweep folder's results.csv and across-seeds views from its run folders.

Writes <sweep>/results.csv (one row per finished run) and <sweep>/views/: curves.png (per setting,
the smoothed training loss with its min-max band over seeds), phase_changes.png and .csv (per
answer position, the step of its phase change over seeds, per setting; modular runs: the grokking
step), runs.png and runs.csv (scripts/compare_runs.py's figure and table of every run).

Example:
    python scripts/sweep_views.py runs/sweep_lr
    python scripts/sweep_views.py runs/sweep_lr --window 50
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from grokmath import cli  # noqa: E402


def build_parser():
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", metavar="SWEEP_DIR", help="a sweep folder (the `out` of a sweep file)")
    parser.add_argument("--window", type=cli.positive_int, default=100, help="smoothing window in steps (default: 100)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    from grokmath.sweeps.results import write_results

    table = write_results(args.sweep_dir, window=args.window)
    print(table.to_string(index=False))
    print(Path(args.sweep_dir) / "results.csv")
    print(Path(args.sweep_dir) / "views")


if __name__ == "__main__":
    cli.main_guard(main)
