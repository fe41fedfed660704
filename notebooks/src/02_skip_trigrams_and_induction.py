# %% [markdown]
# # 2. Skip-trigrams and induction heads
#
# This notebook reproduces the two attention-only experiments of the seed notebook 'non-modular
# addition grokking tasks'. A **skip-trigram** model (one layer, one head) must find the one
# signal token `S<t>` hidden among noise and answer its target `t` at the `QUERY` token; each
# target's loss leaves the ln 10 plateau at its own step. An **induction** model (two layers) sees
# random tokens with a subsequence repeated and learns to predict each repeat from its first copy:
# the loss stays at the uniform level until the induction heads form, then drops.
#
# Both run small here (the whole notebook takes about half a minute on a 2-core CPU). At full
# scale (the scripts' defaults, `scripts/train_skip_trigram.py` and `scripts/train_induction.py`)
# the README reports the skip-trigram loss under 0.01 at step 341 and the induction loss 4.37 at
# step 500, 2.83 at 800 and 0.74 at 1000.

# %%
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch
from IPython.display import Image, display

from grokmath.analysis import interactive
from grokmath.analysis.attention import (attention_grad_to_signal, attention_patterns, induction_scores,
                                         plot_attention_grid, previous_token_scores, token_labels)
from grokmath.store.checkpoint import load_run
from grokmath.config import TrainConfig, model_config_for
from grokmath.experiments import experiment_configs, settings
from grokmath.training.run import start_run
from grokmath.tasks import make_task

RUNS = Path(os.environ.get("GROKMATH_RUNS") or tempfile.mkdtemp(prefix="grokmath_"))  # set a folder to keep the runs
INTERACTIVE = interactive.available()  # plotly views (hover, zoom) when plotly is installed
print("runs go to", RUNS, "| interactive figures:", INTERACTIVE)

# %% [markdown]
# ## Skip-trigrams
#
# A sequence is `BEGIN`, 40 tokens of noise `N0..N9` with one signal token `S<t>` among them, and
# `QUERY`; the answer is `t`. Only attention can solve it: the head at `QUERY` must attend to the
# signal token and copy its identity. The settings are the seed set-up's (its 'quick' scale is the
# same model), trained for fewer steps with a checkpoint every 20.

# %%
task, model_cfg, train_cfg = experiment_configs("skip_trigram", "quick")
train_cfg = replace(train_cfg, steps=300, checkpoint_every=20)
print(task.decode(task.sample(1, torch.Generator().manual_seed(0)).tokens)[0])
start_run(model_cfg, task, train_cfg, RUNS / "skip_trigram", overwrite=True, progress=False)
run = load_run(RUNS / "skip_trigram")
print(f"loss {run.metrics.train_loss.iloc[0]:.3f} at step 0 (ln 10 = 2.303), "
      f"{run.metrics.train_loss.iloc[-1]:.2e} at step {run.metrics.step.iloc[-1]}")

# %% [markdown]
# ### Per-target loss
#
# One curve per target: all sit on the plateau at first, then each drops at its own step (tens of
# steps apart), after which they fall together.

# %%
display(Image(filename=run.path / "case_loss.png", width=720))
if INTERACTIVE:
    interactive.loss_figure(run.metrics.ffill(), prefix="case_target_", title="Loss per target (hover, zoom)").show()

# %% [markdown]
# ### Where the head looks
#
# The pattern of one sequence: the last row is `QUERY`'s attention; after training it sits on the
# signal token. Over a batch, we count how often the query's strongest attention is the signal.

# %%
batch = task.sample(256, torch.Generator().manual_seed(1))
tokens = batch.tokens[0]
display(Image(filename=plot_attention_grid(run.model, task, tokens, RUNS / "skip_attention.png"), width=700))
if INTERACTIVE:
    patterns = attention_patterns(run.model, tokens[None])[:, 0]  # [layer, head, query, key]
    interactive.attention_figure(patterns, token_labels(task, tokens), title="Skip-trigram attention").show()
query_attention = attention_patterns(run.model, batch.tokens)[0, :, 0, -1]  # [batch, key] of the one head
found = (query_attention.argmax(-1) == batch.meta["signal_pos"]).double().mean()
print(f"QUERY attends most to the signal token in {found:.1%} of {len(batch)} sequences")

# %% [markdown]
# ### The attention gradient to the signal token
#
# What the seed notebook records with backward hooks: the gradient of the loss with respect to the
# attention that `QUERY` pays to the signal token, per target. Strongly negative means that more
# attention to the signal would lower the loss; it is largest just before a target's drop and
# fades once the head attends there. Here it is computed at every checkpoint of the run.

# %%
grads = pd.DataFrame([{"step": step, **{f"target {t}": g.item() for t, g in enumerate(
    attention_grad_to_signal(run.load_model(step), batch, task)[0])}} for step in run.steps])
fig, ax = plt.subplots(figsize=(9, 4))
grads.plot(x="step", ax=ax, lw=1, legend=False)
ax.set_ylabel("d loss / d attention to signal")
ax.set_title("Attention gradient to the signal token, per target")
ax.legend(fontsize=7, ncol=2)
plt.show()
if INTERACTIVE:
    interactive.loss_figure(grads, prefix="target ", log_y=False, ylabel="gradient",
                            title="Attention gradient to the signal token, per target").show()

# %% [markdown]
# ## Induction heads
#
# A sequence is `BEGIN` then random tokens, cut into three intervals; a subsequence of interval 0
# is copied into intervals 1 and 2. The loss is scored on the tokens of the copies that can be
# predicted from the first occurrence. Two layers can solve it with an induction circuit: a
# previous-token head in layer 0 marks each token with the one before it, and an induction head in
# layer 1 attends to the token after an earlier occurrence of the current token and copies it.
#
# Small version: sequences of 31 tokens from a vocabulary of 24 with repeats of 6 (the seed's
# 85, 128 and 16), d_model 32 and 2 heads (the seed's 48 and 4), the seed's optimiser with batches
# of 64 (the seed's 128) at a higher learning rate, 400 steps and a checkpoint every 25.

# %%
task_options, model_settings, train_settings, seed = settings("induction", "quick")
task = make_task("induction", **{**task_options, "seq_len": 31, "subseq_len": 6, "vocab_size": 24})
model_cfg = model_config_for(task, **{**model_settings, "d_model": 32, "n_heads": 2}, seed=seed)
train_cfg = TrainConfig(**{**train_settings, "steps": 400, "batch_size": 64, "lr": 3e-3, "checkpoint_every": 25},
                        seed=seed)
start_run(model_cfg, task, train_cfg, RUNS / "induction", overwrite=True, progress=False)
run = load_run(RUNS / "induction")
display(Image(filename=run.path / "loss_references.png", width=720))

# %% [markdown]
# ### The heads forming
#
# At every checkpoint: each head's **induction score** (the attention that a token of a repeat pays
# to the token after its earlier occurrences) and **previous-token score** (the attention to the
# position just before). Compare the layer-1 heads' induction scores with the loss: they rise from
# chance to most of their attention as the loss drops. The layer-0 scores say how much of the
# previous-token job one head does alone.

# %%
batch = task.sample(256, torch.Generator().manual_seed(2))
rows = []
for step in run.steps:
    patterns = attention_patterns(run.load_model(step), batch.tokens)  # [layer, batch, head, query, key]
    induction, previous = induction_scores(patterns, batch, task), previous_token_scores(patterns)
    rows.append({"step": step, **{f"L{l}H{h} induction": induction[l, h].item() for l in range(2) for h in range(2)},
                 **{f"L{l}H{h} previous": previous[l, h].item() for l in range(2) for h in range(2)}})
scores = pd.DataFrame(rows)
loss = run.metrics.set_index("step").train_loss
fig, axes = plt.subplots(1, 3, figsize=(15, 4))
axes[0].plot(loss.index, loss.to_numpy(), lw=1)
axes[0].set_title("training loss")
for ax, kind in zip(axes[1:], ("induction", "previous")):
    scores.plot(x="step", y=[c for c in scores.columns if c.endswith(kind)], ax=ax)
    ax.set_title(f"{kind} score per head")
plt.show()
scores.iloc[[0, len(scores) // 2, -1]].round(2)

# %% [markdown]
# ### The trained patterns
#
# One sequence: look for the induction head's off-diagonal stripe (each token of a copy attends to
# the token after its first occurrence) and the previous-token head's sub-diagonal.

# %%
tokens = batch.tokens[0]
display(Image(filename=plot_attention_grid(run.model, task, tokens, RUNS / "induction_attention.png"), width=900))
if INTERACTIVE:
    patterns = attention_patterns(run.model, tokens[None])[:, 0]
    interactive.attention_figure(patterns, token_labels(task, tokens), title="Induction model").show()

# %% [markdown]
# ## At full scale
#
# `python scripts/reproduce.py skip_trigram induction` trains both seed set-ups and collects their
# figures (README: skip-trigram loss under 0.01 at step 341 and 1.7e-9 at the end; induction loss
# 4.37 at step 500 and 0.74 at step 1000). `load_run` on their run folders gives the models to
# analyse with the cells above.
