"""Redraw the plots of a training run from its metrics.csv and config.json (no model needed).

Writes per_position_loss.png, loss.png, case_loss.png and (where the task has reference losses)
loss_references.png into the run folder, replacing earlier ones.

Example:
    python scripts/plot_run.py runs/addition_5d_s129000
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from grokmath import cli  # noqa: E402


def build_parser():
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder made by scripts/train_*.py")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    from grokmath.analysis.opening import open_run
    from grokmath.training.plots import plot_run

    open_run(args.run_dir, load_model=False)
    for path in plot_run(args.run_dir):
        print(path)


if __name__ == "__main__":
    cli.main_guard(main)
