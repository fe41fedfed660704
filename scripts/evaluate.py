"""Accuracy of a trained addition or arithmetic run over many random questions, counted in nines.

Prints per-digit and question accuracy (teacher-forced; a question is right under greedy
generation exactly when every digit is), the count of nines, accuracy per case class and the
failing questions with the model's generated answer, and writes the report as
RUN_DIR/analysis/evaluate_step<STEP>_n<N>_seed<SEED>.json (kept unless --overwrite; with --enrich,
..._enriched.json). --enrich draws the hard cases: the enriched distribution of long carry and
borrow cascades (for addition, 3 questions in 5 with 40% of digit pairs summing to 9).

Example:
    python scripts/evaluate.py runs/addition_5d_s129000 --questions 1000000
    python scripts/evaluate.py runs/addition_5d_s129000 --questions 1000000 --enrich
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from grokmath import cli  # noqa: E402


def build_parser():
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder made by scripts/train_addition.py or "
                        "train_arithmetic.py")
    parser.add_argument("--questions", type=cli.positive_int, default=None,
                        help="random questions to score (default: 1000000 on a GPU; 100000 on a CPU, where a "
                        "million takes 10 minutes or more)")
    parser.add_argument("--checkpoint", type=cli.nonneg_int, default=None, metavar="STEP",
                        help="checkpoint step (default: the newest)")
    parser.add_argument("--batch-size", type=cli.positive_int, default=None,
                        help="questions per forward pass (default: 8192 on a GPU, 1024 on a CPU)")
    parser.add_argument("--seed", type=cli.nonneg_int, default=0,
                        help="seed of the questions; with --batch-size and the device it fixes which (default: 0)")
    parser.add_argument("--max-failures", type=cli.nonneg_int, default=100,
                        help="failing questions to list with the model's answer (default: 100)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--enrich", action="store_true",
                        help="questions from the enriched distribution: long carry and borrow cascades")
    parser.add_argument("--no-capture", action="store_true",
                        help="run the eager forward on a GPU too, not the captured CUDA graph")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    from grokmath.analysis.evaluate import default_questions, evaluate, format_report
    from grokmath.analysis.opening import open_run
    from grokmath.store.checkpoint import atomic_write_json, refuse_existing
    from grokmath.training.train import resolve_device

    device = resolve_device(args.device)
    run = open_run(args.run_dir, step=args.checkpoint, device=device)
    n_questions = args.questions or default_questions(device)
    if args.questions is None:
        print(f"{n_questions:,} questions, the default on a {device.type.upper()} (--questions N for more or "
              "fewer; the bar shows the time left)", flush=True)
    enriched = "_enriched" if args.enrich else ""
    path = run.path / "analysis" / f"evaluate_step{run.step:06d}_n{n_questions}_seed{args.seed}{enriched}.json"
    refuse_existing(path, args.overwrite)
    report = evaluate(run.model, run.task, n_questions, batch_size=args.batch_size, seed=args.seed,
                      device=device, max_failures=args.max_failures, progress=not args.no_progress,
                      enrich=args.enrich, step_path="eager" if args.no_capture else "auto")
    report.update(run_dir=str(run.path), step=run.step)
    atomic_write_json(path, report)
    print(format_report(report))
    print(path)


if __name__ == "__main__":
    cli.main_guard(main)
