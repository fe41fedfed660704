# %% [markdown]
# # 5. A sparse autoencoder on an MLP layer
#
# This notebook reproduces the seed notebook that trains a sparse autoencoder (SAE) on a trained
# addition model's MLP neurons: a set of features, few of them active on any one input, that
# reconstructs the activations, trained with MSE, an L1 penalty and the notebook's KL sparsity penalty, with early
# stopping. It prints the notebook's per-epoch report, checks the reconstruction where it matters
# (the model's loss with the SAE spliced in), and asks what each feature fires on: which answer
# digit, which case (BaseAdd / UseCarry1 / UseSum9) and which carry-cascade class (S0..S4).
#
# Here the model is a small 4-digit addition model trained in the notebook and the SAE is small;
# at full scale, train the 5-digit model (`python scripts/train_addition.py --digits 5`, the
# README's run) and then `python scripts/train_sae.py runs/addition_5d_s129000 --hook
# blocks.0.mlp.hook_post`, which does all of the below with a grid search over the settings and
# writes the report into the run folder.

# %%
import os
import tempfile
from pathlib import Path

from IPython.display import Image, display

from grokmath.analysis import interactive
from grokmath.analysis.sae import SAEConfig, evaluate_sae, format_report, train_sae
from grokmath.analysis.sae_run import (ModelSource, feature_stats, plot_feature_frequency, plot_feature_heatmap,
                                       spliced_losses)
from grokmath.store.checkpoint import load_run
from grokmath.config import TrainConfig, model_config_for
from grokmath.experiments import settings
from grokmath.training.metrics import phase_change_steps
from grokmath.training.run import start_run
from grokmath.tasks import make_task

RUNS = Path(os.environ.get("GROKMATH_RUNS") or tempfile.mkdtemp(prefix="grokmath_"))  # set a folder to keep the runs
INTERACTIVE = interactive.available()  # plotly views (hover, zoom) when plotly is installed
print("runs go to", RUNS, "| interactive figures:", INTERACTIVE)

# %% [markdown]
# ## The model
#
# The addition experiment's quick-scale model (one layer, d_model 128, d_mlp 512) on 4-digit
# questions, with a fast schedule: within the 400 steps every digit's loss falls under 0.1 (the
# step each first does is printed), though at this constant learning rate the losses still jump
# about: averaged over the last 20 steps each digit's loss is under 0.3. A model that mostly adds,
# which is enough to find features in.

# %%
task_options, model_settings, train_settings, seed = settings("addition", "quick")
task = make_task("addition", **{**task_options, "n_digits": 4})
model_cfg = model_config_for(task, **model_settings, seed=seed)
train_cfg = TrainConfig(**{**train_settings, "steps": 400, "lr": 5e-3, "checkpoint_every": 200}, seed=seed)
start_run(model_cfg, task, train_cfg, RUNS / "addition_4d", overwrite=True, progress=False)
run = load_run(RUNS / "addition_4d")
first_under = phase_change_steps(run.metrics, 0.1)
last_losses = run.metrics.filter(like="loss_").iloc[-20:].mean()
print("first step under 0.1:", first_under)
print("mean over the last 20 steps:", last_losses.round(3).to_dict())
assert all(step is not None for step in first_under.values()) and (last_losses < 0.3).all()

# %% [markdown]
# ## Activations and the SAE
#
# `ModelSource` draws fixed batches of questions, runs the model up to the hook (the forward stops
# there) and yields the activations as rows, here at the answer positions only. The SAE trains on
# one source and is judged on another, drawn with a different seed. Each epoch prints the seed
# notebook's line: loss, MSE, the two penalties, the fraction of features active ("Sparsity") and
# how many of them fire at all, and its combined score (lower is better).
#
# What makes it sparse is the L1 weight. It multiplies the mean |feature| over all 256 features,
# so it must be large to matter (a weight like 1e-3 leaves a dense code). At 3, with a higher
# learning rate and up to 20 epochs, under 6% of the features are active on a held-out row (an L0
# under 16 of 256).

# %%
hook = "blocks.0.mlp.hook_post"
train_source = ModelSource(run.model, task, hook, n_batches=16, batch_size=64, seed=0, positions="answer")
eval_source = ModelSource(run.model, task, hook, n_batches=8, batch_size=64, seed=1, positions="answer")
cfg = SAEConfig(d_sae=256, l1_weight=3.0, lr=3e-3, epochs=20)
sae, history = train_sae(train_source, cfg, log=print)
held_out = evaluate_sae(sae, eval_source, cfg)
print("Held-out:", format_report(None, held_out, cfg.d_sae))
print(f"features active on a row: {held_out['sparsity']:.1%} of {cfg.d_sae} "
      f"(L0 {held_out['sparsity'] * cfg.d_sae:.1f})")
assert held_out["sparsity"] < 0.06

# %% [markdown]
# ## The spliced-in loss
#
# A low MSE is not the point; the model's behaviour is. The model's loss with the SAE's
# reconstruction patched in place of the activations, against the clean loss and the loss with the
# activations zeroed: the fraction of the loss recovered is 1 for a perfect SAE. This sparse SAE
# recovers over 95% of it.

# %%
spliced = spliced_losses(eval_source, sae)
for name, value in spliced.items():
    print(f"{name:20s} {value:.4f}")
assert spliced["loss_recovered"] > 0.95

# %% [markdown]
# ## What the features fire on
#
# For each feature: how often it fires overall, at each answer digit's position, in each case of
# that digit and in each cascade class of the question. Each feature fires rarely: none on more than
# 15% of the held-out inputs, and half of them on under 5%.

# %%
stats = feature_stats(eval_source, sae)
live = stats[stats.freq > 0]
print(f"{len(live)} of {cfg.d_sae} features fire on the held-out questions; the most often on "
      f"{live.freq.max():.1%} of the inputs, the median feature on {live.freq.median():.1%}")
assert live.freq.max() < 0.15 and live.freq.median() < 0.05
digit_columns = [f"freq_{label}" for label in task.pred_labels]
display(live.sort_values("freq", ascending=False).head(10)[["feature", "freq", "mean_act"] + digit_columns].round(3))
display(Image(filename=plot_feature_frequency(stats, RUNS / "feature_frequency.png"), width=720))
display(Image(filename=plot_feature_heatmap(stats, "freq_", RUNS / "feature_digits.png", "Features by answer digit",
                                            max_features=32), width=420))
display(Image(filename=plot_feature_heatmap(stats, "freq_case_", RUNS / "feature_cases.png", "Features by case",
                                            max_features=32), width=720))

# %% [markdown]
# Features that fire at one answer digit only would be the easiest to read. For each digit, the
# feature most specific to it (its firing rate there against its rate over all answer positions):
# only the leading digit A4 (0 or 1, the carry out of the top column) has a feature of its own,
# firing at A4 over 20 points more often than overall; every other digit's most specific feature
# fires at most 15 points above its overall rate: those digits share their features.

# %%
specificity = {}
for column in digit_columns:
    specific = (live[column] - live.freq).idxmax()
    row = live.loc[specific]
    specificity[column[5:]] = row[column] - row.freq
    print(f"{column[5:]}: feature {int(row.feature)} fires on {row[column]:.0%} of those positions, "
          f"{row.freq:.0%} overall")
lead = task.pred_labels[0]
assert specificity[lead] > 0.2 and all(gap < 0.15 for label, gap in specificity.items() if label != lead)
if INTERACTIVE:
    top = live.sort_values("freq", ascending=False).head(32)
    cases = [c for c in stats.columns if c.startswith("freq_case_")]
    interactive.heatmap_figure(top[cases].to_numpy(), [c[len("freq_case_"):] for c in cases],
                               [f"F{f}" for f in top.feature], xlabel="case", ylabel="feature",
                               value_name="firing rate", title="Feature firing rate per case").show()
