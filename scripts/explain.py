"""Find and verify the algorithm inside a trained model: useful nodes, attribution, probes and claims.

Writes RUN_DIR/analysis/explain/: nodes.csv (one row per node tried: P14L0H1-style name, position,
layer, head, neuron, useful, fail_pct, impact, attends, tags, loss change and its attribution-patching
estimate), probes.csv (variable, layer, position, accuracy, baseline), claims.json (claims proposed
from the node table and the paper's roles, tested by intervention on fresh questions), the figures
(quanta_map.png, attention_by_node.png, probes.png, claims.png) and a one-page summary.md; with
--sae SAE_DIR also sae_features.csv (each SAE feature's best ground-truth variable, per position).
Skip-trigram, induction and modular runs get the useful heads and their scores (nodes.csv,
heads.json, summary.md). Existing files are kept unless --overwrite is given.

Example:
    python scripts/explain.py runs/addition_5d_s129000
    python scripts/explain.py runs/addition_5d_s129000 --per-class 100 --kind zero --overwrite
    python scripts/explain.py runs/addition_5d_s129000 --sae runs/addition_5d_s129000/sae/blocks.0.mlp.hook_post
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from grokmath import cli  # noqa: E402


def build_parser():
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder made by scripts/train_*.py")
    parser.add_argument("--checkpoint", type=cli.nonneg_int, default=None, metavar="STEP",
                        help="checkpoint step (default: the newest)")
    parser.add_argument("--kind", choices=("mean", "zero", "resample"), default="mean",
                        help="ablation: the activation's mean over uniform questions (per position), 0, or its "
                        "value on another question (default: mean)")
    parser.add_argument("--per-class", type=cli.positive_int, default=200,
                        help="questions drawn per case class (S0..Sn for addition; per op class for arithmetic) "
                        "(default: 200)")
    parser.add_argument("--probe-questions", type=cli.positive_int, default=2000,
                        help="questions the probes are fitted on (half as many score them) (default: 2000)")
    parser.add_argument("--attribution-floor", type=cli.nonneg_float, default=0.0, metavar="LOSS",
                        help="a head, MLP or neuron outside the last layer whose attribution-patching estimate of "
                        "the loss change is below this (in absolute value) is not ablated (listed in nodes.csv with "
                        "ablated = False); 0 ablates every one (default: 0: an accurate model's saturated loss puts every "
                        "estimate below any fixed floor, the first-layer nodes that matter too)")
    parser.add_argument("--seed", type=cli.nonneg_int, default=0, help="seed of the questions (default: 0)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--sae", default=None, metavar="SAE_DIR",
                        help="also score this SAE's features against the ground truth (a folder written by "
                        "scripts/train_sae.py on this run, e.g. RUN_DIR/sae/blocks.0.mlp.hook_post): "
                        "sae_features.csv and a section of summary.md")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    from grokmath.analysis.explain.report import explain_run
    from grokmath.analysis.opening import open_run
    from grokmath.training.train import resolve_device

    run = open_run(args.run_dir, step=args.checkpoint, device=resolve_device(args.device))
    result = explain_run(run, overwrite=args.overwrite, kind=args.kind, seed=args.seed, progress=not args.no_progress,
                         per_class=args.per_class, probe_questions=args.probe_questions, sae_dir=args.sae,
                         attribution_floor=args.attribution_floor)
    for path in result["paths"].values():
        print(path)


if __name__ == "__main__":
    cli.main_guard(main)
