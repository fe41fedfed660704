"""Train a 2-layer attention-only transformer to form induction heads (the grokking-tasks notebook).

Sequences of random tokens (token 0 = BEGIN) in which a subsequence appears several times; the
loss counts only the predictable tokens of the repeats, so it falls from about ln(vocab_size - 1)
towards 0 when induction heads form. Defaults are the notebook's set-up (grokmath/experiments.py,
listed below), except weight decay 0.1, not the notebook's 1 (experiments.py says why).

Example:
    python scripts/train_induction.py
    python scripts/train_induction.py --steps 1500 --device cpu
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from grokmath import cli  # noqa: E402

OPTIONS = ("seq_len", "subseq_len", "num_repeats", "vocab_size")


def build_parser():
    from grokmath import experiments

    defaults = experiments.flag_defaults("induction")
    parser = cli.training_parser(__doc__, "induction")
    for flag, dest, text in (("--seq-len", "seq_len", "tokens per sequence, BEGIN included"),
                             ("--subseq-len", "subseq_len", "length of the repeated subsequence"),
                             ("--num-repeats", "num_repeats", "occurrences of the subsequence"),
                             ("--vocab-size", "vocab_size", "vocabulary size, BEGIN included")):
        parser.add_argument(flag, dest=dest, type=cli.positive_int, default=None,
                            help=f"{text} (default: {defaults[dest]})")
    return parser


def main(argv=None):
    args = cli.parse(build_parser(), argv)
    configs = cli.training_configs(args, {k: getattr(args, k) for k in OPTIONS})
    cli.run_training(args, configs, run_name=f"induction_s{args.seed}")


if __name__ == "__main__":
    cli.main_guard(main)
