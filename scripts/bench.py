"""Benchmark the training loop, hook points, caching and evaluation for each task's seed set-up.

Prints, per task, steps per second of grokmath's training loop and of a straightforward
full-sequence implementation of the same model (interleaved in this process), their ratio,
tokens per second, the cost of idle hook points, run_with_cache against a plain forward,
evaluation against training throughput, and peak memory. --csv writes the table.

--figures measures issue 15's figures for the 5-digit addition set-up instead (meant for a GPU):
the job's wall time (captured and eager step), the steady-state step against the straightforward
loop, a --questions evaluation, and --seeds K (default 64) stacked seeds' model-steps/s against
one model alone, each with the achieved FLOP/s against the GPU's fp32 peak (datasheet, and a
large fp32 matmul timed on the spot). The FLOP count is grokmath.tools.bench.forward_flops's.

Example:
    python scripts/bench.py --quick
    python scripts/bench.py --tasks addition modular --steps 20 --rounds 3 --csv runs/bench.csv
    python scripts/bench.py --tasks skip_trigram modular --seeds 8 --steps 200
    python scripts/bench.py --device cuda --figures --steps 200 --csv runs/figures.csv
"""
import argparse
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from grokmath import cli  # noqa: E402
from grokmath.tools.bench import TASKS, bench_figures, bench_seeds, bench_task  # noqa: E402
from grokmath.store.checkpoint import atomic_write_text, refuse_existing  # noqa: E402
from grokmath.training.train import resolve_device  # noqa: E402


def main(argv=None):
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", choices=TASKS,
                        default=["addition", "skip_trigram", "induction", "modular"], help="set-ups to time")
    parser.add_argument("--quick", action="store_true", help="small models (seconds on a CPU) instead of the seed sizes")
    parser.add_argument("--steps", type=cli.positive_int, default=20, help="training steps per timed round (default: 20)")
    parser.add_argument("--rounds", type=cli.positive_int, default=3, help="interleaved rounds; medians are reported (default: 3)")
    parser.add_argument("--device", default=None, help="'cpu' or 'cuda' (default: cuda when available)")
    parser.add_argument("--seeds", type=cli.positive_int, default=None, metavar="K",
                        help="instead: time K models trained stacked in one process against one alone")
    parser.add_argument("--figures", action="store_true",
                        help="issue 15's figures for the 5-digit set-up instead (see above; --steps per timed run, "
                        "--seeds stacked seeds, default 64)")
    parser.add_argument("--questions", type=cli.positive_int, default=1_000_000,
                        help="--figures: questions in the timed evaluation (default: 1000000)")
    parser.add_argument("--no-job", action="store_true", help="--figures: leave out the whole 5-digit job")
    parser.add_argument("--csv", default=None, help="write the measurements to this CSV file (must not exist)")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    if args.csv:
        refuse_existing(args.csv, overwrite=False, fix="choose another --csv path (nothing is overwritten)")
    machine = torch_info(device)
    print(f"machine: {machine}")
    if args.figures:
        rows = [bench_figures(device, args.quick, args.steps, args.rounds, args.questions, args.seeds or 64,
                              main_job=not args.no_job)]
    elif args.seeds:
        rows = [bench_seeds(name, args.seeds, args.steps, args.quick, device) for name in args.tasks]
    else:
        rows = [bench_task(name, args.quick, device, args.steps, args.rounds) for name in args.tasks]
    if args.csv:  # written whole or not at all, and never over a file that appeared meanwhile
        refuse_existing(args.csv, overwrite=False, fix="choose another --csv path (nothing is overwritten)")
        atomic_write_text(args.csv, pd.DataFrame([{**row, "machine": machine} for row in rows]).to_csv(index=False))
        print(f"wrote {args.csv}")


def torch_info(device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


if __name__ == "__main__":
    cli.main_guard(main)
