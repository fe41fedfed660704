"""Train an attention-only transformer on skip-trigrams (the grokking-tasks notebook).

A signal token S_t somewhere among random noise tokens decides the answer t at the final query
token. Defaults are the notebook's set-up (grokmath/experiments.py, listed below). Plots include
the per-target loss curves.

Example:
    python scripts/train_skip_trigram.py
    python scripts/train_skip_trigram.py --steps 500 --device cpu
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from grokmath import cli  # noqa: E402


def build_parser():
    from grokmath import experiments

    defaults = experiments.flag_defaults("skip_trigram")
    parser = cli.training_parser(__doc__, "skip_trigram")
    parser.add_argument("--rand-size", type=cli.positive_int, default=None,
                        help=f"number of targets (and of noise tokens) (default: {defaults['rand_size']})")
    parser.add_argument("--seq-len", type=cli.positive_int, default=None,
                        help=f"noise tokens per sequence (default: {defaults['seq_len']})")
    parser.add_argument("--finite", type=cli.positive_int, default=None, metavar="N",
                        help="train on a fixed set of N sequences (the notebook: 100) (default: fresh data each step)")
    return parser


def main(argv=None):
    args = cli.parse(build_parser(), argv)
    finite = args.finite is not None
    configs = cli.training_configs(args, {"rand_size": args.rand_size, "seq_len": args.seq_len},
                                   data="finite" if finite else None, n_train=args.finite)
    cli.run_training(args, configs,
                     run_name="skip_trigram" + (f"_finite{args.finite}" if finite else "") + f"_s{args.seed}")


if __name__ == "__main__":
    cli.main_guard(main)
