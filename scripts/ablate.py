"""Ablate every head, attention layer and MLP layer of a trained run and rank them by loss change.

Writes RUN_DIR/analysis/ablation_<kind>_step<STEP>.csv (one row per node: loss, loss change, loss
per answer position, accuracy and its change), a layer x head heatmap (_heads.png) and, with
--per-position, a node x position heatmap (_positions.png); prints the nodes that matter most.
Existing files are kept unless --overwrite is given.

Example:
    python scripts/ablate.py runs/addition_5d_s129000 --kind mean --questions 2000 --per-position
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from grokmath import cli  # noqa: E402


def build_parser():
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder made by scripts/train_*.py")
    parser.add_argument("--kind", choices=("zero", "mean", "resample"), default="mean",
                        help="replace the activation by 0, its mean over the questions (per position), or its "
                        "value on another question (default: mean)")
    parser.add_argument("--checkpoint", type=cli.nonneg_int, default=None, metavar="STEP",
                        help="checkpoint step (default: the newest)")
    parser.add_argument("--questions", type=cli.positive_int, default=1000,
                        help="random questions to score on, also the mean/resample reference (default: 1000)")
    parser.add_argument("--per-position", action="store_true",
                        help="also ablate each node at each single position (node x position heatmap)")
    parser.add_argument("--neurons", action="store_true", help="also ablate each MLP neuron of every layer")
    parser.add_argument("--top", type=cli.positive_int, default=10, help="nodes to print (default: 10)")
    parser.add_argument("--seed", type=cli.nonneg_int, default=0, help="seed of the questions (default: 0)")
    parser.add_argument("--chunk-size", type=cli.positive_int, default=16,
                        help="ablations per forward pass; lower it if memory runs out (default: 16)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    import torch

    from grokmath.analysis import ablation
    from grokmath.analysis.common import question_sampler
    from grokmath.analysis.opening import open_run
    from grokmath.store.checkpoint import atomic_write_text, refuse_existing
    from grokmath.training.train import resolve_device

    device = resolve_device(args.device)
    run = open_run(args.run_dir, step=args.checkpoint, device=device)
    stem = run.path / "analysis" / f"ablation_{args.kind}_step{run.step:06d}"
    outputs = [stem.with_suffix(".csv"), Path(f"{stem}_heads.png")] + \
        ([Path(f"{stem}_positions.png")] if args.per_position else [])
    refuse_existing(outputs, args.overwrite)
    cfg, task = run.model_cfg, run.task
    nodes = ablation.standard_nodes(cfg)
    if args.neurons and not cfg.attn_only:
        nodes += [n for layer in range(cfg.n_layers) for n in ablation.neuron_nodes(cfg, layer)]
    if args.per_position:
        nodes += ablation.per_position(ablation.standard_nodes(cfg), range(task.n_ctx))
    ablation.check_ablation_fits(cfg, args.questions, len(nodes), args.chunk_size, device)  # before drawing
    generator = torch.Generator(device=device).manual_seed(args.seed)
    batch = question_sampler(task).sample(args.questions, generator)
    table = ablation.ablate(run.model, batch, task, nodes, kind=args.kind, chunk_size=args.chunk_size,
                            generator=torch.Generator(device=device).manual_seed(args.seed + 1))
    atomic_write_text(outputs[0], table.to_csv(index=False))
    ablation.plot_heads(table, cfg, outputs[1])
    if args.per_position:
        ablation.plot_positions(table, outputs[2])
    print(f"{args.kind} ablation of {run.path} at step {run.step}, {args.questions} questions: "
          f"clean loss {table.attrs['clean_loss']:.6g}, accuracy {table.attrs['clean_acc']:.6f}")
    top = table.reindex(table["loss_change"].abs().sort_values(ascending=False).index).head(args.top)
    print(top[["node", "loss", "loss_change", "acc", "acc_change"]].to_string(index=False))
    for path in outputs:
        print(path)


if __name__ == "__main__":
    cli.main_guard(main)
