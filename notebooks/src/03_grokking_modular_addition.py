# %% [markdown]
# # 3. Grokking modular addition
#
# This notebook reproduces the progress-measures experiment (Nanda et al. 2023): a one-layer
# transformer trained on 30% of the pairs `a + b mod p` first memorises its training set, and
# only much later generalises (groks), by building a circuit from a few Fourier frequencies. The
# progress measures (restricted and excluded loss, Fourier sparsity) show the circuit forming
# long before the test loss moves, in three phases: memorisation, circuit formation, clean-up.
#
# By default it trains a small version (p = 31, 500 epochs; the whole notebook takes about half a
# minute on a 2-core CPU). At full scale (p = 113, `python scripts/train_modular.py`; use a GPU)
# the README reports test accuracy passing 99% at epoch 7750, key frequencies 1, 8 and 21, and
# the phases ending at epochs 1.2k, 5.4k and 8.1k. Set `RUN` below to such a run's folder to analyse it here instead.
# Last, Grokfast (a gradient filter meant to speed grokking up) side by side with the plain run.

# %%
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import pandas as pd
from IPython.display import Image, display

from grokmath.analysis import interactive
from grokmath.analysis.progress import detect_phases, plot_fourier, plot_progress, progress_measures
from grokmath.checkpoint import load_run
from grokmath.config import TrainConfig, model_config_for
from grokmath.experiments import settings
from grokmath.run import start_run
from grokmath.tasks import make_task

RUN = None  # or the folder of a run of scripts/train_modular.py, e.g. "runs/modular_add_p113_s0"
EVERY = 1  # use every EVERY-th checkpoint for the progress measures (a 40k-epoch run has 400)
RUNS = Path(os.environ.get("GROKMATH_RUNS") or tempfile.mkdtemp(prefix="grokmath_"))  # set a folder to keep the runs
INTERACTIVE = interactive.available()  # plotly views (hover, zoom) when plotly is installed
print("runs go to", RUNS, "| interactive figures:", INTERACTIVE)

# %% [markdown]
# ## Training
#
# Every step is one full-batch epoch over the training pairs, with AdamW and strong weight decay,
# the paper's recipe. The small version is the experiment's 'quick' scale (p = 31, d_model 64)
# with 60% of the pairs for training and a higher learning rate and weight decay, so that it groks
# within 500 epochs; a checkpoint every 20 epochs feeds the progress measures.

# %%
task_options, model_settings, train_settings, seed = settings("modular", "quick")
task = make_task("modular", **{**task_options, "frac_train": 0.6})
model_cfg = model_config_for(task, **model_settings, seed=seed)
train_cfg = TrainConfig(**{**train_settings, "steps": 500, "lr": 5e-3, "weight_decay": 2.0,
                           "checkpoint_every": 20, "test_every": 5}, seed=seed)
if RUN is None:
    start_run(model_cfg, task, train_cfg, RUNS / "modular", overwrite=True, progress=False)
run = load_run(RUN or RUNS / "modular")
metrics = run.metrics
tested = metrics.dropna(subset=["test_acc"])
print(f"p = {run.task.p}: {run.train_cfg.steps} epochs, {len(run.steps)} checkpoints")
for column in ("train_acc", "test_acc"):
    above = tested.step[tested[column] >= 0.99]
    print(f"{column} first >= 99% at epoch", int(above.iloc[0]) if len(above) else "never")

# %% [markdown]
# Train loss falls within a few dozen epochs (memorisation) while the test loss stays high; the
# test loss collapses much later. (The small version gets about half of the test pairs right
# early: those whose mirror `b + a` is a training pair. With p = 31 and 60% of the pairs for
# training that is over half of them; the model treats its two inputs almost alike.)

# %%
display(Image(filename=run.path / "loss.png", width=720))
if INTERACTIVE:
    interactive.loss_figure(metrics, columns=["train_loss", "test_loss"], title="Train and test loss").show()

# %% [markdown]
# ## Progress measures and the three phases
#
# For every checkpoint: the **restricted loss** keeps only the key frequencies' directions of the
# logits (it falls as soon as the circuit carries the answer), the **excluded loss** removes them
# (it rises on the training pairs as the model comes to rely on the circuit), the **Gini
# coefficients** of the Fourier norms of W_E and of W_L = W_out W_U (sparsity in the Fourier basis)
# and the **sum of squared weights** (weight decay cleaning up the memorisation). The key
# frequencies are found from the trained model's neurons.

# %%
table, key_freqs = progress_measures(run.path, every=EVERY, progress=False)
phases = detect_phases(table)
print("key frequencies:", key_freqs)
print("phases end at:", phases)
display(Image(filename=plot_progress(table, phases, key_freqs, RUNS / "progress_measures.png"), width=720))
if INTERACTIVE:
    interactive.loss_figure(table, columns=["train_loss", "test_loss", "restricted_loss", "excluded_loss"],
                            title="Progress measures (log loss)").show()

# %% [markdown]
# ## Fourier sparsity
#
# The trained model in the Fourier basis over 0..p-1: the norm of each frequency's cos and sin
# components of W_E and of W_L, and how many MLP neurons each frequency dominates. A handful of key
# frequencies (red) carry almost everything.

# %%
display(Image(filename=plot_fourier(run.model, run.task, key_freqs, RUNS / "fourier.png"), width=720))

# %% [markdown]
# ## Grokfast side by side
#
# Grokfast filters the gradient (an exponential moving average, alpha 0.98, added with weight
# lambda 2) between the backward pass and the optimizer step. The same small set-up and seed,
# trained with and without it. The README's measurements (epochs to 99% test accuracy, weight
# decay 1 as in the paper): p = 113 on an H100, 7,750 without and 5,150 with the filter (1.5x
# fewer); p = 53 on a CPU, 13,330 without and 29,800 with it (2.2x more). So with weight decay the
# filter gives at most a modest speed-up and can slow grokking down; the Grokfast paper's ~50x is
# measured against a baseline without weight decay.

# %%
if RUN is None:
    start_run(model_cfg, task, replace(train_cfg, grokfast="ema"), RUNS / "modular_grokfast", overwrite=True,
              progress=False)
    both = {"plain": metrics, "Grokfast EMA": load_run(RUNS / "modular_grokfast", load_model=False).metrics}
    curves = pd.concat({name: m.set_index("step").test_acc.dropna() for name, m in both.items()}, axis=1)
    for name in curves:
        above = curves.index[curves[name] >= 0.99]
        print(f"{name}: test accuracy first >= 99% at epoch", int(above[0]) if len(above) else "never (in this run)")
    ax = curves.plot(figsize=(9, 4), title="Test accuracy, with and without Grokfast")
    ax.set_xlabel("epoch")
    if INTERACTIVE:
        interactive.loss_figure(curves.reset_index(), columns=list(curves), log_y=False, ylabel="test accuracy",
                                title="Test accuracy, with and without Grokfast").show()
else:
    print("Grokfast runs: python scripts/train_modular.py --grokfast ema (the README's table)")

# %% [markdown]
# ## At full scale
#
# `python scripts/train_modular.py --steps 15000 --test-every 10 --run-name mod_p113` then
# `python scripts/progress_measures.py runs/mod_p113 --every 3` is the README's measurement (on an
# H100: train accuracy 100% at epoch 145, test accuracy 99% at 7750; key frequencies 1, 8, 21;
# memorisation to epoch 1.2k, circuit formation to 5.4k, clean-up to 8.1k; the paper: 1.4k, 9.4k,
# 14k with its seed). Set `RUN` above to that folder to draw these figures for it here.
