"""Time a sweep against running the same runs one by one: N seeds of the 2-digit addition quick
set-up (grokmath/experiments.py: d_model 128, lr 1e-3, 1500 steps) as `scripts/sweep.py` on
--workers processes, against N `scripts/train_addition.py` commands one after another (each
free to use every core). Prints runs per minute of each and their ratio; checks nothing else
(tests/test_sweep.py checks that a sweep's runs are ordinary runs).

Example:
    python scripts/bench_sweep.py                              # 64 seeds, 2 workers
    python scripts/bench_sweep.py --seeds 8 --steps 300         # a smaller measurement
"""
import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from grokmath import cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    from grokmath import experiments

    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=cli.positive_int, default=64, help="runs (seeds 0..N-1) (default: 64)")
    parser.add_argument("--steps", type=cli.positive_int, default=None, help="steps per run (default: the quick set-up's)")
    parser.add_argument("--workers", type=cli.positive_int, default=2, help="the sweep's processes at once (default: 2)")
    parser.add_argument("--stack", type=cli.positive_int, default=None,
                        help="the sweep's seeds per process (default: the sweep's automatic choice)")
    parser.add_argument("--skip-one-by-one", action="store_true", help="time the sweep only")
    args = parser.parse_args(argv)
    _, model, train, _ = experiments.settings("addition", "quick")
    settings = {"digits": 2, "d_model": model["d_model"], "lr": train["lr"], "steps": args.steps or train["steps"],
                "checkpoint_every": train["checkpoint_every"], "device": "cpu", "no_plots": True}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = "\n".join(f"{k} = {str(v).lower() if isinstance(v, bool) else repr(v)}" for k, v in settings.items())
        sweep = tmp / "bench.toml"
        sweep.write_text(f'script = "train_addition"\nout = "{tmp / "sweep"}"\nseeds = {list(range(args.seeds))}\n'
                         f"workers = {args.workers}\n" + (f"stack = {args.stack}\n" if args.stack else "")
                         + f"[base]\n{base}\n")
        started = time.time()
        subprocess.run([sys.executable, str(ROOT / "scripts" / "sweep.py"), str(sweep), "--no-progress"], check=True)
        swept = time.time() - started
        print(f"sweep: {args.seeds} runs of {settings['steps']} steps in {swept:.1f} s: "
              f"{60 * args.seeds / swept:.2f} runs/min")
        if args.skip_one_by_one:
            return
        flags = [f for k, v in settings.items() for f in (["--" + k.replace("_", "-")] if v is True
                                                           else ["--" + k.replace("_", "-"), str(v)])]
        started = time.time()
        for seed in range(args.seeds):
            subprocess.run([sys.executable, str(ROOT / "scripts" / "train_addition.py"), *flags, "--seed", str(seed),
                            "--out", str(tmp / "single"), "--no-progress"], check=True, stdout=subprocess.DEVNULL)
        single = time.time() - started
        print(f"one by one: {args.seeds} runs in {single:.1f} s: {60 * args.seeds / single:.2f} runs/min")
        print(f"throughput ratio sweep / one by one: {single / swept:.2f}x")


if __name__ == "__main__":
    cli.main_guard(main)
