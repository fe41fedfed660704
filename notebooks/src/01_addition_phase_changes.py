# %% [markdown]
# # 1. Phase changes in 5-digit addition
#
# This notebook reproduces the seed notebook 'non-modular addition grokking tasks': a one-layer
# transformer learns `12345+67890=080235`, and each answer digit's loss falls in its own sudden
# drop, at its own step. By default it trains a small version (the whole notebook takes about
# half a minute on a 2-core CPU); `FULL = True` trains the seed set-up (d_model 512, 3000 steps:
# 4.5 minutes on a 2-core CPU, 22 s on an H100), whose per-digit steps the README reports: loss
# under 0.1 at step 291 for A5 (the leading carry) and at 1753-2049 for the other digits.
#
# Then it looks inside: the loss per case (BaseAdd / UseCarry1 / UseSum9, as the seed 'Addition
# Interpretability Analysis' notebook splits it), the attention patterns, which head each digit
# needs (head ablation) and which heads write each digit's answer (direct logit attribution).

# %%
import math
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch
from IPython.display import Image, display

from grokmath.analysis import ablation, attribution, interactive
from grokmath.analysis.attention import attention_patterns, plot_attention_grid, token_labels
from grokmath.analysis.plots import save_heatmap
from grokmath.store.checkpoint import load_run
from grokmath.experiments import experiment_configs
from grokmath.training.metrics import phase_change_steps
from grokmath.training.plots import smoothing_window
from grokmath.training.run import start_run

FULL = False  # True: the seed notebook's set-up (see above for how long it takes)
RUNS = Path(os.environ.get("GROKMATH_RUNS") or tempfile.mkdtemp(prefix="grokmath_"))  # set a folder to keep the runs
INTERACTIVE = interactive.available()  # plotly views (hover, zoom) when plotly is installed
print("runs go to", RUNS, "| interactive figures:", INTERACTIVE)

# %% [markdown]
# ## The task
#
# Two 5-digit numbers, `+`, `=`, then the 6-digit answer, most significant digit first (A5 is the
# leading carry, A0 the units). The model is scored only at the six positions that predict the
# answer digits. Every question also carries the seed notebook's per-digit case labels.

# %%
task, model_cfg, train_cfg = experiment_configs("addition", "full" if FULL else "quick")
if not FULL:  # the quick scale's model (d_model 128) with a faster schedule, to fit in about half a minute
    train_cfg = replace(train_cfg, steps=450, lr=5e-3, checkpoint_every=150)
batch = task.sample(4, torch.Generator().manual_seed(0))
print(task.decode(batch.tokens))
print("scored answer digits:", task.pred_labels, "at positions", task.pred_pos.tolist())
print(model_cfg)
print(train_cfg)

# %% [markdown]
# ## Training
#
# `start_run` is what `scripts/train_addition.py` calls: it writes the run folder (config,
# `metrics.csv` with one row per step, checkpoints) and draws the run's plots. `load_run` reads it
# back, here or in any later session.

# %%
start_run(model_cfg, task, train_cfg, RUNS / "addition", overwrite=True, progress=FULL)
run = load_run(RUNS / "addition")
model, metrics = run.model, run.metrics
print(f"final training loss {metrics.train_loss.iloc[-1]:.4f}")

# %% [markdown]
# ## One phase change per digit
#
# The first step at which each digit's loss is under 0.1 (the README's measure; the dots in the
# figure below), and the step at which it drops: where its smoothed loss first falls under half of
# ln 10 (the loss of a uniform guess among 10 digits, where every digit starts). The leading carry
# A5 is learnt first. The other digits do not drop together: each drops at its own step, here at
# least 20 steps after the one before and spread over more than 200 steps. In this small run the
# losses then hover between 0.1 and 0.3 for a while, so a digit's first step under 0.1 comes well
# after its drop.

# %%
def drop_steps(columns: pd.DataFrame, window: int) -> dict:
    """For each column: the first step its loss (forward-filled over steps without an example, then a
    centred rolling mean over `window` steps) is under ln(10) / 2; None if never."""
    smoothed = columns.ffill().rolling(window, center=True, min_periods=1).mean()
    return {name: next((int(step) for step, value in zip(metrics.step, smoothed[name]) if value < math.log(10) / 2),
                       None) for name in columns}


steps = phase_change_steps(metrics, 0.1)
drops = drop_steps(metrics[[f"loss_{d}" for d in task.pred_labels]].rename(columns=lambda c: c[len("loss_"):]),
                   smoothing_window(len(metrics)))
README_FULL = {"A5": 291, "A4": 1892, "A3": 2049, "A2": 2002, "A1": 1964, "A0": 1753}  # the README, full scale
table = pd.DataFrame({"first step under 0.1": steps, "drop": drops, "README (full scale), under 0.1": README_FULL}).T
display(table)
assert min(steps, key=lambda d: steps[d] if steps[d] is not None else math.inf) == "A5"
if not FULL:  # the small run's numbers, as the text states them
    others = sorted(drops[d] for d in task.pred_labels[1:])
    assert min(b - a for a, b in zip(others, others[1:])) >= 20 and others[-1] - others[0] > 200
    assert all(steps[d] is not None and steps[d] > drops[d] for d in task.pred_labels)

# %%
display(Image(filename=run.path / "per_position_loss.png", width=720))
if INTERACTIVE:
    interactive.loss_figure(metrics, prefix="loss_", title="Per-digit loss (hover, drag to zoom)").show()

# %% [markdown]
# ## The loss per case
#
# The seed analysis notebook splits each digit's loss by what the digit needs: BaseAdd (no carry
# in), UseCarry1 (a carry from the digit below) and UseSum9 (a carry passed on through a digit sum
# of 9: a cascade). The three cases partition the answer digits. UseSum9 is rare (a few examples
# per batch), so its raw loss is mostly noise: the figure draws every curve smoothed, the raw values
# faint, and a dot at each digit's first step under 0.1. Measured by the drop as above: each digit's
# BaseAdd and UseCarry1 curves drop within 15 steps of the digit's own drop, and so do its UseSum9
# curves, within 25 steps, except A4's: UseSum9/A4 drops more than 15 steps before A4 does, after
# the leading carry A5. (An A4 whose digits sum to 9 with a carry in passes the carry on to A5: its
# answer is 0 exactly when A5 is 1, which the model has learnt first.)

# %%
display(Image(filename=run.path / "case_loss.png", width=720))
case_drops = {case: drop_steps(metrics.filter(like=f"case_{case}/").rename(columns=lambda c: c.split("/")[1]),
                               smoothing_window(len(metrics), rare=True))
              for case in ("BaseAdd", "UseCarry1", "UseSum9")}
display(pd.DataFrame({"digit": drops, **case_drops}).T)
if not FULL:
    for case, found in case_drops.items():
        for digit, step in found.items():
            if metrics[f"case_{case}/{digit}"].isna().all():  # a case the digit never has (UseSum9/A5)
                continue
            if case == "UseSum9" and digit == "A4":
                assert drops["A5"] < step < drops["A4"] - 15
            else:
                assert abs(step - drops[digit]) <= (25 if case == "UseSum9" else 15), (case, digit, step)
if INTERACTIVE:
    case = [c for c in metrics.columns if c.startswith("case_UseSum9/")]
    interactive.loss_figure(metrics[["step"] + case].ffill(), prefix="case_UseSum9/",
                            title="UseSum9 loss per digit (rare cases: forward-filled)").show()

# %% [markdown]
# ## Attention patterns
#
# Each head's attention from every position (query, rows) to the earlier ones (key, columns) on one
# question with a cascading carry. The rows that matter are the answer positions `=` and after.

# %%
tokens = task.encode(["55555+44445=100000"])[0]
display(Image(filename=plot_attention_grid(model, task, tokens, RUNS / "attention.png"), width=900))
if INTERACTIVE:
    patterns = attention_patterns(model, tokens[None])[:, 0]  # [layer, head, query, key]
    interactive.attention_figure(patterns, token_labels(task, tokens), title="55555+44445=100000").show()

# %% [markdown]
# ## Which head does each digit need? Head ablation
#
# Mean ablation replaces one head's output (its `z`) by its mean over the batch and measures the
# loss of each answer digit. `ablation.ablate` runs all the heads in one batched forward pass.
# A large increase in a digit's column means that digit depends on that head.

# %%
questions = task.sample(500, torch.Generator().manual_seed(1))
heads = ablation.ablate(model, questions, task, nodes=ablation.head_nodes(model.cfg), kind="mean")
digits = [f"loss_{label}" for label in task.pred_labels]
clean = pd.Series(heads.attrs["clean_loss_pos"]).add_prefix("loss_")
increase = heads.set_index("node")[digits] - clean[digits]  # [head, digit] loss increase
display(increase.round(3))
display(Image(filename=save_heatmap(increase.to_numpy(), RUNS / "ablation.png", xlabels=task.pred_labels,
                                    ylabels=list(increase.index), xlabel="answer digit", ylabel="head",
                                    title="loss increase when the head is mean-ablated"), width=500))
if INTERACTIVE:
    interactive.heatmap_figure(increase.to_numpy(), task.pred_labels, list(increase.index), xlabel="answer digit",
                               ylabel="head", title="Mean ablation: loss increase", value_name="loss increase").show()

# %% [markdown]
# ## Direct logit attribution
#
# The final residual stream is a sum of parts (the embeddings, each head's output, the MLP's); each
# part's dot product with the correct answer's unembedding is its direct contribution to the
# answer's logit, and the rows sum exactly to that logit. Heads feed the MLP here, so much of their
# effect is indirect: here the head whose ablation above costs the most loss writes under 5% of what
# the MLP writes to the answer's logit.

# %%
contributions, labels = attribution.direct_logit_attribution(model, questions, task)
dla = attribution.attribution_table(contributions, labels, task)
display(dla.round(2))
costliest = increase.mean(axis=1).idxmax()
by_part = dla.set_index("component")["mean"]
print(f"{costliest} costs the most when ablated; its direct share of the logit: {by_part[costliest]:.2f} against "
      f"the MLP's {by_part['0_mlp_out']:.2f}")
assert FULL or by_part[costliest] < 0.05 * by_part["0_mlp_out"]
display(Image(filename=attribution.plot_attribution(dla, task, RUNS / "dla.png"), width=600))

# %% [markdown]
# ## At full scale
#
# `FULL = True` above, or `python scripts/train_addition.py --digits 5`, trains the seed set-up
# (README: training loss 0.047 at step 2900; 91.4% of a million random questions right, as
# `python scripts/evaluate.py runs/addition_5d_s129000 --questions 1000000` reports). The same
# analyses run from the command line: `scripts/ablate.py RUN_DIR --kind mean` and
# `scripts/attention.py RUN_DIR --text 55555+44445=100000`.
