# %% [markdown]
# # 6. Accurate maths: signed arithmetic, accuracy in nines, model insertion
#
# This notebook reproduces, at a small scale, the workflow of the seed notebook 'accurate integer
# mathematics': a transformer on the signed layout `123450-345670=-0222220` (an operator, a sign
# and one more answer digit than the operands), trained on enriched data (more carry cascades);
# its accuracy measured over many random questions and counted in nines (Six9s: at most one wrong
# in a million), with the failing questions listed; and model insertion, which starts a larger
# model from a trained smaller one.
#
# The model here is small (3-digit addition, one layer, a few hundred steps) and is far from
# accurate. The full set-up is `python scripts/train_arithmetic.py` (6 digits, 80% subtraction
# and 20% addition, 2 layers, d_model 510, 40,000 steps: a GPU job); `python
# scripts/train_arithmetic.py --ops add=100 --steps 15000` trains the 6-digit addition model the
# README's insertion example starts from, and `python scripts/evaluate.py RUN_DIR --questions
# 1000000` counts its nines. The README reports the full-scale models' measured figures.

# %%
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch
from IPython.display import Image, display

from grokmath.analysis import interactive
from grokmath.analysis.evaluate import evaluate, format_report
from grokmath.store.checkpoint import load_run
from grokmath.config import TrainConfig, model_config_for
from grokmath.experiments import settings
from grokmath.training.insert import insert_model
from grokmath.model.transformer import Transformer
from grokmath.training.run import start_run
from grokmath.tasks import make_task

RUNS = Path(os.environ.get("GROKMATH_RUNS") or tempfile.mkdtemp(prefix="grokmath_"))  # set a folder to keep the runs
INTERACTIVE = interactive.available()  # plotly views (hover, zoom) when plotly is installed
print("runs go to", RUNS, "| interactive figures:", INTERACTIVE)

# %% [markdown]
# ## The task and the small model
#
# The experiment's settings (LayerNorm, attention and unembedding biases, warm-up then cosine
# decay, enriched data), at its quick scale (d_model 60), on 3-digit addition, with one layer and a
# higher learning rate.

# %%
task_options, model_settings, train_settings, seed = settings("arithmetic", "quick")
task = make_task("arithmetic", **{**task_options, "n_digits": 3, "ops": {"add": 100}})
print(task.decode(task.sample(3, torch.Generator().manual_seed(0)).tokens), "scored:", task.pred_labels)
model_cfg = model_config_for(task, **{**model_settings, "n_layers": 1}, seed=seed)
train_cfg = TrainConfig(**{**train_settings, "steps": 400, "lr": 5e-3, "checkpoint_every": 200}, seed=seed)
start_run(model_cfg, task, train_cfg, RUNS / "small", overwrite=True, progress=False)
small = load_run(RUNS / "small")
display(Image(filename=small.path / "per_position_loss.png", width=720))

# %% [markdown]
# ## Accuracy over many questions, in nines
#
# `evaluate` scores random questions (drawn by their own seed, without enrichment) in batches with
# one teacher-forced forward pass each. A question is right when every answer digit is: exactly
# when greedy generation writes the whole answer, so generation runs only on the failing questions
# to show what the model writes. Nines: with 1 wrong in 1,000,000 the count is 6.

# %%
report = evaluate(small.model, small.task, n_questions=20_000, progress=False)
print(format_report(report))

# %%
pd.DataFrame(report["cases"]).T.astype({"n": int, "wrong": int, "accuracy": float}).round(4)

# %% [markdown]
# ## Model insertion
#
# A larger model (2 layers of 4 heads) starts from the small one: its heads go into the right-most
# heads of layer 0, its MLP into the first units, LayerNorms and embeddings whole; everything else
# keeps its own initialisation. The inserted heads then compute exactly what the small model's did.

# %%
large_cfg = replace(small.model_cfg, n_layers=2, n_heads=4)  # the same d_head
large = Transformer(large_cfg)
insert_model(small.model, large)
questions = task.sample(256, torch.Generator().manual_seed(1))
_, small_cache = small.model.run_with_cache(questions.tokens, names_filter="blocks.0.attn.hook_z")
_, large_cache = large.run_with_cache(questions.tokens, names_filter="blocks.0.attn.hook_z")
torch.testing.assert_close(large_cache["z", 0][:, :, 1:], small_cache["z", 0])  # heads 1-3 of the large model
print("the large model's layer-0 heads 1-3 reproduce the small model's heads 0-2")

# %% [markdown]
# Training the larger model from the inserted start (`insert` in `start_run`, as
# `scripts/train_arithmetic.py --insert-from RUN_DIR` does; mode 3 restores the inserted heads and
# MLP every 50 steps) against the same model from scratch, for a few steps: the inserted start
# begins from the small model's knowledge.

# %%
short = replace(train_cfg, steps=100, warmup=10, checkpoint_every=100)
start_run(large_cfg, task, short, RUNS / "large_inserted", overwrite=True, progress=False, plots=False,
          insert={"run_dir": small.path, "mode": 3, "every": 50})
start_run(large_cfg, task, short, RUNS / "large_scratch", overwrite=True, progress=False, plots=False)
curves = pd.DataFrame({name: load_run(RUNS / name, load_model=False).metrics.train_loss
                       for name in ("large_inserted", "large_scratch")})
ax = curves.rolling(10, min_periods=1).mean().plot(logy=True, figsize=(9, 4), title="Training loss of the large model")
ax.set_xlabel("step")
if INTERACTIVE:
    interactive.loss_figure(curves.reset_index(names="step"), columns=list(curves),
                            title="Large model: inserted vs from scratch").show()
curves.iloc[[0, -1]]
