# %% [markdown]
# # 5. A sparse autoencoder on an MLP layer
#
# This notebook reproduces the seed notebook that trains a sparse autoencoder (SAE) on a trained
# addition model's MLP neurons: a wider, sparsely active set of features that reconstructs the
# activations, trained with MSE, an L1 penalty and the notebook's KL sparsity penalty, with early
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
from grokmath.checkpoint import load_run
from grokmath.config import TrainConfig, model_config_for
from grokmath.experiments import settings
from grokmath.run import start_run
from grokmath.tasks import make_task

RUNS = Path(os.environ.get("GROKMATH_RUNS") or tempfile.mkdtemp(prefix="grokmath_"))  # set a folder to keep the runs
INTERACTIVE = interactive.available()  # plotly views (hover, zoom) when plotly is installed
print("runs go to", RUNS, "| interactive figures:", INTERACTIVE)

# %% [markdown]
# ## The model
#
# The addition experiment's quick-scale model (one layer, d_model 128, d_mlp 512) on 4-digit
# questions, with a fast schedule: every digit's loss falls under 0.1 within the 400 steps.

# %%
task_options, model_settings, train_settings, seed = settings("addition", "quick")
task = make_task("addition", **{**task_options, "n_digits": 4})
model_cfg = model_config_for(task, **model_settings, seed=seed)
train_cfg = TrainConfig(**{**train_settings, "steps": 400, "lr": 5e-3, "checkpoint_every": 200}, seed=seed)
start_run(model_cfg, task, train_cfg, RUNS / "addition_4d", overwrite=True, progress=False)
run = load_run(RUNS / "addition_4d")
print(run.metrics.filter(like="loss_").iloc[-20:].mean().round(3).to_dict())

# %% [markdown]
# ## Activations and the SAE
#
# `ModelSource` draws fixed batches of questions, runs the model up to the hook (the forward stops
# there) and yields the activations as rows, here at the answer positions only. The SAE trains on
# one source and is judged on another, drawn with a different seed. Each epoch prints the seed
# notebook's line: loss, MSE, the two penalties, the fraction of features active and how many of
# them fire at all, and its combined score (lower is better).

# %%
hook = "blocks.0.mlp.hook_post"
train_source = ModelSource(run.model, task, hook, n_batches=16, batch_size=64, seed=0, positions="answer")
eval_source = ModelSource(run.model, task, hook, n_batches=8, batch_size=64, seed=1, positions="answer")
cfg = SAEConfig(d_sae=256, l1_weight=1e-3, epochs=8)
sae, history = train_sae(train_source, cfg, log=print)
print("Held-out:", format_report(None, evaluate_sae(sae, eval_source, cfg), cfg.d_sae))

# %% [markdown]
# ## The spliced-in loss
#
# A low MSE is not the point; the model's behaviour is. The model's loss with the SAE's
# reconstruction patched in place of the activations, against the clean loss and the loss with the
# activations zeroed: the fraction of the loss recovered is 1 for a perfect SAE.

# %%
spliced = spliced_losses(eval_source, sae)
for name, value in spliced.items():
    print(f"{name:20s} {value:.4f}")

# %% [markdown]
# ## What the features fire on
#
# For each feature: how often it fires overall, at each answer digit's position, in each case of
# that digit and in each cascade class of the question.

# %%
stats = feature_stats(eval_source, sae)
live = stats[stats.freq > 0]
print(f"{len(live)} of {cfg.d_sae} features fire on the held-out questions")
digit_columns = [f"freq_{label}" for label in task.pred_labels]
display(live.sort_values("freq", ascending=False).head(10)[["feature", "freq", "mean_act"] + digit_columns].round(3))
display(Image(filename=plot_feature_frequency(stats, RUNS / "feature_frequency.png"), width=720))
display(Image(filename=plot_feature_heatmap(stats, "freq_", RUNS / "feature_digits.png", "Features by answer digit",
                                            max_features=32), width=420))
display(Image(filename=plot_feature_heatmap(stats, "freq_case_", RUNS / "feature_cases.png", "Features by case",
                                            max_features=32), width=720))

# %% [markdown]
# Features that fire at one answer digit only are the easiest to read: for each digit, the feature
# most specific to it (its firing rate there against its rate over all answer positions).

# %%
for column in digit_columns:
    specific = (live[column] - live.freq).idxmax()
    row = live.loc[specific]
    print(f"{column[5:]}: feature {int(row.feature)} fires on {row[column]:.0%} of those positions, "
          f"{row.freq:.0%} overall")
if INTERACTIVE:
    top = live.sort_values("freq", ascending=False).head(32)
    cases = [c for c in stats.columns if c.startswith("freq_case_")]
    interactive.heatmap_figure(top[cases].to_numpy(), [c[len("freq_case_"):] for c in cases],
                               [f"F{f}" for f in top.feature], xlabel="case", ylabel="feature",
                               value_name="firing rate", title="Feature firing rate per case").show()
