"""Time scripts/explain.py's work on a trained run, stage by stage, in wall-clock and CPU seconds.

Runs the full report (node table, probes, claims, figures) into a temporary folder and prints the
seconds of each stage, the total, the CPU time (user + system: what the work costs when the machine
is shared) and the node counts that bound it. The target for the 5-digit seed model is under 5
minutes on a 2-core CPU.

Example:
    python scripts/bench_explain.py runs/addition_5d_s129000
    python scripts/bench_explain.py runs/addition_5d_s129000 --threads 2 --per-class 200
    python scripts/bench_explain.py runs/arithmetic_6d_add100_s372001 --threads 2
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from grokmath import cli  # noqa: E402


def main(argv=None):
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a trained addition or arithmetic run folder")
    parser.add_argument("--per-class", type=cli.positive_int, default=200, help="questions per case class (default: 200)")
    parser.add_argument("--checkpoint", type=cli.nonneg_int, default=None, metavar="STEP",
                        help="checkpoint step (default: the newest)")
    parser.add_argument("--attribution-floor", type=cli.nonneg_float, default=0.0, metavar="LOSS",
                        help="as scripts/explain.py's: nodes outside the last layer estimated below it are not "
                        "ablated; 0 ablates all (default: 0)")
    parser.add_argument("--threads", type=cli.positive_int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    import os
    import tempfile
    import time

    import torch

    from grokmath.analysis.explain.report import explain
    from grokmath.store.checkpoint import load_run

    if args.threads:
        torch.set_num_threads(args.threads)
    run = load_run(args.run_dir, step=args.checkpoint)
    start, cpu = time.perf_counter(), os.times()
    with tempfile.TemporaryDirectory() as out:
        result = explain(run.model, run.task, out, per_class=args.per_class, progress=False,
                         attribution_floor=args.attribution_floor)
    wall, after = time.perf_counter() - start, os.times()
    info, table = result["info"], result["table"]
    counts = table["kind"].value_counts().to_dict()
    print(f"{run.path.name} step {run.step}: {torch.get_num_threads()} threads, {info['questions']} questions")
    print("stage seconds:", info["timings"])
    print(f"total {wall:.1f} s wall, {after.user + after.system - cpu.user - cpu.system:.1f} s CPU; "
          f"nodes listed: {counts}; ablated: {info['ablations']}; skipped by attribution (floor "
          f"{info['attribution_floor']:g}): {info['skipped_by_attribution']} and {info['neurons_skipped']} neurons")


if __name__ == "__main__":
    cli.main_guard(main)
