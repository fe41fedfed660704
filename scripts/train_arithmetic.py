"""Train a transformer on signed integer arithmetic (the 'accurate integer mathematics' notebook).

Questions like 133357+182243=+0315600 or 123450-345670=-0222220, with the op mix of --ops.
Defaults are the notebook's Config (grokmath/experiments.py, listed below).

Example:
    python scripts/train_arithmetic.py --digits 6 --ops sub=80,add=20
    python scripts/train_arithmetic.py --digits 5 --ops add=100 --steps 15000
    python scripts/train_arithmetic.py --n-layers 3 --n-heads 4 --insert-from runs/arithmetic_6d_add100_s372001
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from grokmath import cli  # noqa: E402


def build_parser():
    from grokmath import experiments

    defaults = experiments.flag_defaults("arithmetic")
    parser = cli.training_parser(__doc__, "arithmetic")
    parser.add_argument("--digits", type=cli.positive_int, default=None,
                        help=f"digits in each operand (default: {defaults['digits']})")
    parser.add_argument("--ops", type=cli.percentages, default=None,
                        help=f"percentage of batches per op, from add, sub, mul, summing to 100 "
                        f"(default: {cli.shown(defaults['ops'])})")
    parser.add_argument("--enrich", action=argparse.BooleanOptionalAction, default=None,
                        help="the notebook's enrichment: more carry/borrow cascades and negative answers "
                        f"(default: {'on' if defaults['enrich'] else 'off'})")
    parser.add_argument("--insert-from", metavar="RUN_DIR", default=None,
                        help="start from this trained smaller arithmetic run (the notebook's model insertion): its "
                        "heads go into the right-most heads, its MLPs into the first d_mlp units of the first "
                        "layers; LayerNorms and embeddings are copied. E.g. a --ops add=100 run")
    parser.add_argument("--insert-mode", type=int, choices=(1, 2, 3), default=None,
                        help="1: initialise only; 2: also restore --insert-heads every --insert-every steps; "
                        "3: restore every inserted head and MLP every --insert-every steps (default: 1)")
    parser.add_argument("--insert-late", action="store_true", default=None,
                        help="insert into the last layers instead of the first")
    parser.add_argument("--insert-heads", default=None,
                        help="mode 2: the small model's useful heads, e.g. L0H1,L1H2 (default: all its heads)")
    parser.add_argument("--insert-every", type=cli.positive_int, default=None,
                        help="steps between restorations in modes 2 and 3 (default: 100)")
    parser.add_argument("--insert-step", type=cli.nonneg_int, default=None,
                        help="the checkpoint of the --insert-from run (default: its newest)")
    return parser


INSERT_FLAGS = ("insert_mode", "insert_late", "insert_heads", "insert_every", "insert_step")


def insert_settings(args) -> dict | None:
    """The --insert-* flags as start_run's `insert` (None without --insert-from)."""
    if args.insert_from is None:
        given = [f"--{k.replace('_', '-')}" for k in INSERT_FLAGS if getattr(args, k) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} need(s) --insert-from RUN_DIR (the smaller run to start from)")
        return None
    return {"run_dir": args.insert_from, "mode": args.insert_mode or 1, "late": bool(args.insert_late),
            "heads": args.insert_heads, "every": args.insert_every or 100, "step": args.insert_step}


def main(argv=None):
    args = cli.parse(build_parser(), argv)
    mix = "".join(f"{op}{share:g}" for op, share in args.ops.items())
    insert = insert_settings(args)
    prefix = "" if insert is None else f"ins{insert['mode']}_"
    configs = cli.training_configs(args, {"n_digits": args.digits, "ops": args.ops, "enrich": args.enrich})
    cli.run_training(args, configs, run_name=f"{prefix}arithmetic_{args.digits}d_{mix}_s{args.seed}", insert=insert)


if __name__ == "__main__":
    cli.main_guard(main)
