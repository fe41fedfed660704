"""Train a transformer on n-digit addition (the 'non-modular addition grokking tasks' notebook).

Questions like 12345+67890=080235, the loss on the answer digits. Defaults are the notebook's set-up
(grokmath/experiments.py, listed below): a fresh batch every step (--finite N trains on a fixed set
of N questions instead; the notebook used 750). Writes runs/<run-name>/ with config.json,
metrics.csv, checkpoints/ and the per-digit plots.

Example:
    python scripts/train_addition.py --digits 5
    python scripts/train_addition.py --digits 5 --d-model 64 --steps 200 --device cpu
    python scripts/train_addition.py --resume runs/addition_5d_s129000
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from grokmath import cli  # noqa: E402


def build_parser():
    from grokmath import experiments

    defaults = experiments.flag_defaults("addition")
    parser = cli.training_parser(__doc__, "addition")
    parser.add_argument("--digits", type=cli.positive_int, default=None,
                        help=f"digits in each operand (default: {defaults['digits']})")
    parser.add_argument("--finite", type=cli.positive_int, default=None, metavar="N",
                        help="train on a fixed set of N questions, full batch unless --batch-size is given, "
                        "with the loss on N held-out questions (the notebook: 750) (default: a fresh batch each step)")
    return parser


def main(argv=None):
    args = cli.parse(build_parser(), argv)
    finite = args.finite is not None
    name = f"addition_{args.digits}d" + (f"_finite{args.finite}" if finite else "") + f"_s{args.seed}"
    configs = cli.training_configs(args, {"n_digits": args.digits}, data="finite" if finite else None,
                                   n_train=args.finite)
    cli.run_training(args, configs, run_name=name)


if __name__ == "__main__":
    cli.main_guard(main)
