"""Time the data generators: milliseconds per batch for every task's seed set-up (its task options
and batch size, grokmath/experiments.py; a full-batch set-up's batch is its whole training set),
so they can be set beside a training step's time.

Example:
    python scripts/bench_data.py
    python scripts/bench_data.py --tasks addition induction --n-batches 200 --csv runs/bench_data.csv
    python scripts/bench_data.py --device cuda --batch-size 4096
    python scripts/bench_data.py --threads 1
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from grokmath import cli  # noqa: E402


def main(argv=None):
    import torch

    from grokmath import experiments
    from grokmath.store.checkpoint import atomic_write_text, refuse_existing
    from grokmath.tasks import TASKS, time_per_batch

    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS),
                        help="tasks to time (default: all)")
    parser.add_argument("--n-batches", type=cli.positive_int, default=50, help="batches timed per task (default: 50)")
    parser.add_argument("--batch-size", type=cli.positive_int, default=None,
                        help="one batch size for every task (default: each task's seed batch size)")
    parser.add_argument("--device", default="cpu", help="device the batches are made on (default: cpu)")
    parser.add_argument("--threads", type=cli.positive_int, default=None,
                        help="torch CPU threads (default: torch's choice; on a busy 2-core machine 1 is faster)")
    parser.add_argument("--csv", type=Path, default=None, help="also write the table to this new CSV file")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device != "cpu" and not (args.device.startswith("cuda") and torch.cuda.is_available()):
        raise ValueError(f"device {args.device!r} is not available here; use --device cpu")
    if args.csv is not None:
        refuse_existing(args.csv, overwrite=False, fix="choose a new --csv path")
    rows = []
    for name in args.tasks:
        batch_size = args.batch_size or experiments.seed_batch_size(name)
        task = experiments.experiment_configs(name)[0]  # the seed set-up's task
        seconds = time_per_batch(task, batch_size, args.n_batches, device=args.device)
        rows.append((name, batch_size, 1e3 * seconds, batch_size / seconds))
    print(f"{'task':<14}{'batch':>7}{'ms/batch':>11}{'examples/s':>14}   "
          f"({args.device}, {torch.get_num_threads()} CPU threads)")
    for name, batch_size, ms, rate in rows:
        print(f"{name:<14}{batch_size:>7}{ms:>11.3f}{rate:>14.0f}")
    if args.csv is not None:
        threads = torch.get_num_threads()
        lines = ["task,batch_size,ms_per_batch,examples_per_s,device,threads"]
        lines += [f"{name},{batch_size},{ms:.6f},{rate:.1f},{args.device},{threads}"
                  for name, batch_size, ms, rate in rows]
        atomic_write_text(args.csv, "\n".join(lines) + "\n")


if __name__ == "__main__":
    cli.main_guard(main)
