"""Progress measures of a modular-addition run, computed from its saved checkpoints (Nanda et al. 2023).

For every checkpoint: train/test loss and accuracy, restricted loss (only the key frequencies'
directions of the logits kept, all pairs), excluded loss (those directions removed, train pairs),
the Gini coefficients of the Fourier norms of W_E and of W_L = W_out @ W_U, and the sum of squared
weights. The key frequencies are found from the newest checkpoint (or given with --key-freqs).
Writes into RUN_DIR (replacing earlier ones): progress_measures.csv (one row per checkpoint),
progress_measures.json (key frequencies and phase boundaries), progress_measures.png (losses with
the memorisation / circuit formation / clean-up phases shaded, the measures beneath) and
fourier.png (the final model's Fourier norms and its neurons' frequencies).

Example:
    python scripts/train_modular.py --p 53 --steps 15000 --test-every 10   # groks at ~13k epochs
    python scripts/progress_measures.py runs/modular_add_p53_s0
    python scripts/progress_measures.py runs/modular_add_p113_s0 --every 5 --key-freqs 14,35,41,42,52
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from grokmath import cli  # noqa: E402


def frequency_list(text: str) -> list[int]:
    try:
        freqs = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of frequencies like 14,35,41") from None
    if not freqs or min(freqs) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give frequencies >= 1, e.g. 14,35,41")
    return sorted(set(freqs))


def main(argv=None):
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder made by scripts/train_modular.py")
    parser.add_argument("--every", type=cli.positive_int, default=1,
                        help="use every N-th checkpoint (the last is always used) (default: 1)")
    parser.add_argument("--key-freqs", type=frequency_list, default=None,
                        help="key frequencies, e.g. 14,35,41,42,52 (default: found from the newest checkpoint)")
    parser.add_argument("--train-threshold", type=cli.positive_float, default=0.01,
                        help="memorisation ends where the excluded loss is lowest, but not before the train loss "
                        "is below this (default: 0.01)")
    parser.add_argument("--test-threshold", type=cli.positive_float, default=0.01,
                        help="clean-up ends at the first checkpoint with test loss below this (default: 0.01)")
    parser.add_argument("--cleanup-fraction", type=cli.fraction, default=0.5,
                        help="clean-up starts after the last checkpoint whose test loss is at least this fraction "
                        "of the test loss at the end of memorisation (default: 0.5)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)

    from grokmath.analysis.opening import open_run
    from grokmath.analysis.progress import write_progress

    open_run(args.run_dir, load_model=False)
    result = write_progress(args.run_dir, every=args.every, key_freqs=args.key_freqs, progress=not args.no_progress,
                            train_threshold=args.train_threshold, test_threshold=args.test_threshold,
                            cleanup_fraction=args.cleanup_fraction)
    phases = result["phases"]
    print(f"key frequencies: {', '.join(map(str, result['key_freqs'])) or 'none found'}")
    print("phases: " + ", ".join(f"{name} {step if step is not None else 'not reached'}"
                                 for name, step in phases.items()))
    for path in result["paths"]:
        print(path)


if __name__ == "__main__":
    cli.main_guard(main)
