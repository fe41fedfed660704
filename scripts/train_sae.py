"""Train a sparse autoencoder on a hooked activation of a trained run (the SAE seed notebook).

Activations come from fixed batches of the run's task questions; the SAE (in SAELens's layout:
cfg.json + sae_weights.safetensors, so `sae_lens.SAE.load_from_disk` reads it), its config, a report
(report.json: per-epoch metrics, held-out metrics, the spliced-in check), epochs.csv, features.csv
(what each feature fires on) and plots go to RUN_DIR/sae/<hook or --name>/. Give several values to
any of --d-sae --lr --sparsity-target --sparsity-weight --l1-weight to grid-search them: the SAE
with the best held-out score is kept and every combination is listed in grid.csv.

Example:
    python scripts/train_sae.py runs/arithmetic_6d_sub80add20_s372001 --hook blocks.0.mlp.hook_post
    python scripts/train_sae.py runs/addition_5d_s129000 --hook blocks.0.hook_resid_post \\
        --d-sae 64 128 --l1-weight 1e-4 1e-3 --sparsity-target 0.05 0.1 --name resid_grid
    python scripts/train_sae.py runs/addition_5d_s129000 --architecture topk --k 8 --d-sae 128 --name topk
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from grokmath import cli  # noqa: E402

DEFAULTS = dict(d_sae=[64], lr=[1e-3], sparsity_target=[0.05], sparsity_weight=[1e-3], l1_weight=[1e-4])


def main(argv=None):
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder made by scripts/train_*.py")
    parser.add_argument("--hook", default="blocks.0.mlp.hook_post",
                        help="the activation, e.g. blocks.0.mlp.hook_post or blocks.1.hook_resid_pre "
                        "(default: blocks.0.mlp.hook_post)")
    parser.add_argument("--step", type=cli.nonneg_int, default=None, help="checkpoint step (default: the newest)")
    parser.add_argument("--positions", choices=("all", "answer"), default="all",
                        help="token positions whose activations are used: all (the notebook) or the scored "
                        "answer positions (default: all)")
    parser.add_argument("--n-batches", type=cli.positive_int, default=100,
                        help="question batches per training epoch (default: 100)")
    parser.add_argument("--eval-batches", type=cli.positive_int, default=20,
                        help="held-out question batches for the score, the spliced-in check and the feature "
                        "plots (default: 20)")
    parser.add_argument("--batch-size", type=cli.positive_int, default=64, help="questions per batch (default: 64)")
    parser.add_argument("--enrich", action=argparse.BooleanOptionalAction, default=None,
                        help="enriched questions (tasks with an enrich option; default: as the run was trained)")
    for flag, kind, text in (("--d-sae", cli.positive_int, "dictionary size"), ("--lr", cli.positive_float, "Adam lr"),
                             ("--sparsity-target", cli.fraction, "KL sparsity target"),
                             ("--sparsity-weight", cli.nonneg_float, "weight of the KL sparsity penalty"),
                             ("--l1-weight", cli.nonneg_float, "weight of the L1 penalty")):
        dest = flag[2:].replace("-", "_")
        parser.add_argument(flag, type=kind, nargs="+", default=DEFAULTS[dest],
                            help=f"{text}; several values grid-search (default: {DEFAULTS[dest][0]})")
    parser.add_argument("--architecture", choices=("standard", "topk", "jumprelu"), default="standard",
                        help="standard: ReLU with the notebook's KL + L1 penalties; topk: the --k largest features "
                        "per row; jumprelu: ReLU above a learned threshold, with an L0 penalty (--l0-weight) "
                        "(default: standard)")
    parser.add_argument("--k", type=cli.positive_int, default=8, help="topk: active features per row (default: 8)")
    parser.add_argument("--l0-weight", type=cli.nonneg_float, default=1e-3,
                        help="jumprelu: weight of the L0 penalty (default: 0.001)")
    parser.add_argument("--epochs", type=cli.positive_int, default=10, help="most epochs (default: 10)")
    parser.add_argument("--patience", type=cli.nonneg_int, default=2,
                        help="epochs without a loss improvement before stopping (default: 2)")
    parser.add_argument("--seed", type=cli.nonneg_int, default=0, help="seed of the questions and the SAE (default: 0)")
    parser.add_argument("--name", default=None, help="folder name under RUN_DIR/sae/ (default: the hook name)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing SAE folder of that name")
    parser.add_argument("--device", default="cpu", help="'cpu' or 'cuda' (default: cpu)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)

    from grokmath.analysis.opening import open_run
    from grokmath.analysis.sae import SAEConfig
    from grokmath.analysis.sae_run import train_sae_on_run
    from grokmath.training.train import resolve_device

    open_run(args.run_dir, step=args.step, load_model=False, at_step=True)
    grid = {name: getattr(args, name) for name in DEFAULTS}
    base = SAEConfig(**{name: values[0] for name, values in grid.items()}, epochs=args.epochs,
                     patience=args.patience, seed=args.seed, architecture=args.architecture, k=args.k,
                     l0_weight=args.l0_weight)
    report = train_sae_on_run(args.run_dir, args.hook, grid={k: v for k, v in grid.items() if len(v) > 1}, base=base,
                              step=args.step, positions=args.positions, n_batches=args.n_batches,
                              eval_batches=args.eval_batches, batch_size=args.batch_size, seed=args.seed,
                              enrich=args.enrich, name=args.name, overwrite=args.overwrite,
                              device=resolve_device(args.device), progress=not args.no_progress)
    print(f"SAE folder: {report['out_dir']}")


if __name__ == "__main__":
    cli.main_guard(main)
