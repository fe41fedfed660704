"""Reproduce the seed experiments and collect their figures into a gallery.

Runs each named experiment with its defaults (grokmath/experiments.py, as scripts/train_<name>.py), draws its plots
(and, for modular addition, the progress measures), copies the figures into <out>/gallery/ and
rewrites <out>/gallery/README.md, which says what each figure shows and should look like.
Run folders are <out>/<name> (<out>/<name>_quick with --quick). The full modular run is p=113 for
40,000 epochs: use a GPU. --quick runs small versions that finish on a CPU in a few minutes in all.

Example:
    python scripts/reproduce.py all --quick --device cpu
    python scripts/reproduce.py modular --device cuda
    python scripts/reproduce.py addition induction --out runs --overwrite
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from grokmath import cli  # noqa: E402


def main(argv=None):
    from grokmath.tools.gallery import GALLERY, reproduce

    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiments", nargs="+", choices=[*GALLERY, "all"], metavar="EXPERIMENT",
                        help=f"one or more of {', '.join(GALLERY)}, or all")
    parser.add_argument("--quick", action="store_true", help="small versions that finish on a CPU in minutes")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # a few steps each, for tests
    parser.add_argument("--device", default=None,
                        help="'cpu', 'cuda' or 'cuda:N' (default: cuda when available, else cpu)")
    parser.add_argument("--out", default="runs", help="folder for the run folders and gallery/ (default: runs)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing run folders of the same name")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    if args.quick and args.tiny:
        parser.error("--quick and --tiny cannot be combined")
    scale = "tiny" if args.tiny else "quick" if args.quick else "full"

    index = reproduce(args.experiments, args.out, scale, args.device, args.overwrite, not args.no_progress)
    print(f"gallery: {index}")


if __name__ == "__main__":
    cli.main_guard(main)
