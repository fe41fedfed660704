"""Train a 1-layer transformer on modular addition until it groks (Nanda et al., progress measures).

All p*p pairs (a, b, =) with the label (a + b) mod p; a random frac_train of them is the training
set and every step is one full-batch epoch; the test loss and train/test accuracy are recorded
every --test-every steps. Defaults are the seed notebook's set-up (grokmath/experiments.py, listed
below); the test loss usually drops (groks) after ~10000 epochs at p 113.

Example:
    python scripts/train_modular.py
    python scripts/train_modular.py --p 53 --steps 3000 --device cpu
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from grokmath import cli  # noqa: E402


def build_parser():
    from grokmath import experiments

    defaults = experiments.flag_defaults("modular")
    parser = cli.training_parser(__doc__, "modular")
    parser.add_argument("--p", type=cli.positive_int, default=None, help=f"the prime modulus (default: {defaults['p']})")
    parser.add_argument("--op", choices=("add", "subtract", "x2xyy2", "rand"), default=None,
                        help=f"the operation (default: {defaults['op']})")
    parser.add_argument("--frac-train", type=cli.fraction, default=None,
                        help=f"fraction of all pairs in the training set (default: {defaults['frac_train']})")
    return parser


def main(argv=None):
    parser = build_parser()
    args = cli.parse(parser, argv)
    if "batch_size" in args.given:
        parser.error("--batch-size does not apply: modular arithmetic trains full batch on the training pairs")
    configs = cli.training_configs(args, {"p": args.p, "op": args.op, "frac_train": args.frac_train})
    cli.run_training(args, configs, run_name=f"modular_{args.op}_p{args.p}_s{args.seed}")


if __name__ == "__main__":
    cli.main_guard(main)
