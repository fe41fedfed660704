"""Draw the attention patterns of a trained run on a few questions: one layers x heads grid each.

Questions are drawn at random (--questions N, at most 20 pictures per call; --seed) or given as
text (--text, repeatable, in the task's own notation, e.g. '12345+67890=080235'); each grid goes
to RUN_DIR/analysis/attention_step<STEP>_<i>.png (kept unless --overwrite).

Example:
    python scripts/attention.py runs/addition_5d_s129000 --questions 3
    python scripts/attention.py runs/addition_5d_s129000 --text 55555+44445=100000
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from grokmath import cli  # noqa: E402

MAX_PICTURES = 20  # one PNG per question: more is a folder of pictures nobody looks at


def build_parser():
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder made by scripts/train_*.py")
    parser.add_argument("--checkpoint", type=cli.nonneg_int, default=None, metavar="STEP",
                        help="checkpoint step (default: the newest)")
    parser.add_argument("--questions", type=cli.positive_int, default=3,
                        help=f"random questions to draw, at most {MAX_PICTURES} (default: 3)")
    parser.add_argument("--text", action="append", default=None,
                        help="a question to draw instead, in the task's notation (repeatable)")
    parser.add_argument("--seed", type=cli.nonneg_int, default=0, help="seed of the random questions (default: 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing pictures")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    import torch

    from grokmath.analysis.attention import plot_attention_grid
    from grokmath.analysis.common import question_sampler
    from grokmath.analysis.opening import open_run
    from grokmath.store.checkpoint import refuse_existing

    run = open_run(args.run_dir, step=args.checkpoint)
    task = run.task
    if args.text:
        tokens = [task.encode([text])[0] for text in args.text]  # each its own length, drawn alone
        for text, row in zip(args.text, tokens):
            if not 0 < len(row) <= task.n_ctx:
                example = task.decode(question_sampler(task).sample(1, torch.Generator().manual_seed(0)).tokens)[0]
                raise ValueError(f"--text {text!r} has {len(row)} tokens: give a question of 1 to {task.n_ctx} "
                                 f"tokens in the task's notation, e.g. {example!r}")
    else:
        if args.questions > MAX_PICTURES:
            print(f"attention.py: drawing {MAX_PICTURES} of the {args.questions} questions asked for (one picture "
                  "each); use --seed for others", file=sys.stderr)
        count = min(args.questions, MAX_PICTURES)
        tokens = question_sampler(task).sample(count, torch.Generator().manual_seed(args.seed)).tokens
    paths = [run.path / "analysis" / f"attention_step{run.step:06d}_{i}.png" for i in range(len(tokens))]
    refuse_existing(paths, args.overwrite)
    for row, path in zip(tokens, paths):
        plot_attention_grid(run.model, task, row, path)
        print(path)


if __name__ == "__main__":
    cli.main_guard(main)
