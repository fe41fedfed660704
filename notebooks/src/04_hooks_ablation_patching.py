# %% [markdown]
# # 4. Hooks, caches, ablation and activation patching
#
# grokmath names every activation as TransformerLens does and keeps TransformerLens 3.x's hook
# API, so the idioms of its demos run unchanged: `run_with_hooks` with `utils.get_act_name`, hooks
# that edit in place, `run_with_cache` and the cache's look-ups and decompositions, the factored
# `QK` / `OV` circuits, the `hooks()` context and backward hooks. This notebook reproduces the
# classic TransformerLens exercise on a small two-layer induction model trained here in seconds
# (the same as in notebook 2), then shows grokmath's batched ablation and patching, which run many
# edits in one forward pass. At full scale (`python scripts/train_induction.py`, the seed set-up)
# the README reports the induction loss 4.37 at step 500 and 0.74 at step 1000; the cells after
# the first work on that model too: take `model` and `task` from `load_run` of its folder.

# %%
import os
import tempfile
from functools import partial
from pathlib import Path

import torch
from IPython.display import Image, display

from grokmath.model import utils
from grokmath.analysis import ablation, interactive, patching
from grokmath.store.checkpoint import load_run
from grokmath.config import TrainConfig, model_config_for
from grokmath.experiments import settings
from grokmath.training.losses import loss_fn
from grokmath.training.run import start_run
from grokmath.tasks import make_task

RUNS = Path(os.environ.get("GROKMATH_RUNS") or tempfile.mkdtemp(prefix="grokmath_"))  # set a folder to keep the runs
INTERACTIVE = interactive.available()  # plotly views (hover, zoom) when plotly is installed
print("runs go to", RUNS, "| interactive figures:", INTERACTIVE)

# %% [markdown]
# ## A model to look at
#
# Random tokens with a subsequence repeated three times; the model is scored on the tokens of the
# repeats that can be predicted from the first copy (`batch.mask`).

# %%
task_options, model_settings, train_settings, seed = settings("induction", "quick")
task = make_task("induction", **{**task_options, "seq_len": 31, "subseq_len": 6, "vocab_size": 24})
model_cfg = model_config_for(task, **{**model_settings, "d_model": 32, "n_heads": 2}, seed=seed)
train_cfg = TrainConfig(**{**train_settings, "steps": 400, "batch_size": 64, "lr": 3e-3, "checkpoint_every": 200},
                        seed=seed)
start_run(model_cfg, task, train_cfg, RUNS / "induction", overwrite=True, progress=False, plots=False)
model = load_run(RUNS / "induction").model
batch = task.sample(200, torch.Generator().manual_seed(0))
tokens = batch.tokens


def task_loss(logits):
    """The task's loss (a scalar tensor): next-token loss on the predictable tokens of the repeats."""
    return loss_fn(logits[:, task.pred_pos], batch.targets, batch.mask)


print(model.cfg)
print(f"clean loss {task_loss(model(tokens)):.3f}; uniform guess ln(23) = {torch.tensor(23.).log():.3f}")

# %% [markdown]
# ## Hook points and `run_with_hooks`
#
# Every activation passes through a named hook point (`model.hook_dict`). A hook gets the activation
# and the hook point, and may return a replacement or edit it in place; `run_with_hooks` attaches
# hooks for one forward and removes them after it, even if it fails. As in TransformerLens, the
# hook gets its own copy of what it may edit, so an in-place edit never touches the model.

# %%
print(list(model.hook_dict)[:8], "...")


def ablate_head(value, hook, head):
    # value: [batch, pos, head_index, d_head]
    value[:, :, head] = 0.0
    return value


for layer in range(model.cfg.n_layers):
    for head in range(model.cfg.n_heads):
        hook_fn = partial(ablate_head, head=head)
        logits = model.run_with_hooks(tokens, fwd_hooks=[(utils.get_act_name("v", layer), hook_fn)])
        print(f"L{layer}H{head}'s values zeroed: loss {task_loss(logits):.3f}")

# %% [markdown]
# ## `run_with_cache` and the cache
#
# The cache is looked up as in TransformerLens: by full name or by shorthand (`cache['pattern', 1]`,
# `cache['resid_post', -1]`). `names_filter` keeps only what you need.

# %%
logits, cache = model.run_with_cache(tokens)
print(cache["pattern", 1].shape, "is", utils.get_act_name("pattern", 1), "[batch, head, query, key]")
assert cache["pattern", 1] is cache["blocks.1.attn.hook_pattern"]
_, small = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_pattern"))
print(sorted(small.keys()))

# %% [markdown]
# The residual stream decomposed: `decompose_resid` splits the final stream into what each layer
# wrote; `stack_head_results` splits the attention layers into heads. With `logit_attrs`, each
# part's direct effect on the correct next token's logit (at the positions that are scored).

# %%
parts, labels = cache.decompose_resid(layer=-1, return_labels=True)  # [part, batch, pos, d_model]
assert torch.allclose(parts.sum(0), cache["resid_post", -1], atol=1e-5)
print(labels)
# each head's output at every position but the last (whose next token is not in the sequence)
heads, head_labels = cache.stack_head_results(layer=-1, return_labels=True, pos_slice=slice(0, -1))
attrs = cache.logit_attrs(heads, tokens=tokens[:, 1:], pos_slice=slice(0, -1))  # [head, batch, pos - 1]
for label, attr in zip(head_labels, attrs):
    print(f"{label}: mean direct logit attribution {attr[batch.mask].mean():+.2f} on the scored tokens")

# %% [markdown]
# ## Circuits as factored matrices
#
# `model.OV[layer, head]` and `model.QK[layer, head]` are FactoredMatrix objects, as in
# TransformerLens: `W_V W_O` and `W_Q W_K^T` kept as their factors. The full OV circuit
# `W_E OV W_U` of an induction head copies: each token's row is largest at that token's own logit.

# %%
U, S, V = model.OV[0, 1].svd()
print("singular values of L0H1's OV:", S.detach().numpy().round(2))
for head in range(model.cfg.n_heads):
    full = (model.W_E @ model.OV[1, head] @ model.W_U).AB  # [token in, logit out]
    copying = (full.argmax(-1) == torch.arange(model.cfg.d_vocab)).double().mean()
    print(f"L1H{head}: the top output is the input token itself for {copying:.0%} of the tokens")

# %% [markdown]
# ## The `hooks()` context and backward hooks
#
# `with model.hooks(...)` keeps hooks attached for a block (and removes them on the way out, error or
# not), so a backward pass inside it runs the backward hooks. `run_with_cache(incl_bwd=True)` caches
# every gradient as `name + '_grad'`.

# %%
grads = {}


def save_grad(grad, hook):
    grads[hook.name] = grad.detach()


with model.hooks(bwd_hooks=[(utils.get_act_name("pattern", 1), save_grad)]):
    task_loss(model(tokens)).backward()
model.zero_grad(set_to_none=True)
print({name: tuple(g.shape) for name, g in grads.items()}, "| hooks left:", model.hook_counts())
_, grad_cache = model.run_with_cache(tokens, incl_bwd=True, names_filter=lambda name: "pattern" in name,
                                     loss_fn=task_loss)
model.zero_grad(set_to_none=True)
assert torch.allclose(grad_cache["blocks.1.attn.hook_pattern_grad"], grads["blocks.1.attn.hook_pattern"])

# %% [markdown]
# ## Batched ablation: zero, mean and resample
#
# `ablation.ablate` does what the loop above did, for every head, attention layer or neuron at
# once: the batch is repeated once per ablation and run in one forward pass with one hook per hook
# point. It ablates a head's `z` (zero: 0, mean: its mean over the batch, resample: its value on
# another sequence). Zeroing `z` and zeroing `v` are the same for a head, so the zero table
# repeats the loop's numbers.

# %%
tables = {kind: ablation.ablate(model, batch, task, kind=kind) for kind in ("zero", "mean", "resample")}
summary = tables["zero"][["node", "loss"]].rename(columns={"loss": "zero"})
for kind in ("mean", "resample"):
    summary[kind] = tables[kind]["loss"]
print(f"clean loss {tables['zero'].attrs['clean_loss']:.3f}")
display(summary.round(3))
manual = model.run_with_hooks(tokens, fwd_hooks=[(utils.get_act_name("v", 1), partial(ablate_head, head=0))])
assert abs(summary.set_index("node").loc["L1H0", "zero"] - task_loss(manual).item()) < 1e-4

# %% [markdown]
# ## Activation patching
#
# A clean batch and a corrupted copy in which the first occurrence of the repeated subsequence is
# replaced by other tokens: in the corrupted run, the second copy cannot be predicted. The metric is
# the log-probability of the correct token on the second copy. Patching one activation at a time
# from the clean run into the corrupted one shows where the information that restores the metric
# lives: the residual stream by layer and position, then each head's output.

# %%
clean = batch.tokens
starts = batch.meta["starts"]  # [batch, repeat]
first_copy = starts[:, :1] + torch.arange(task.subseq_len)  # [batch, subseq_len]
noise = torch.randint(1, task.vocab_size - 1, first_copy.shape, generator=torch.Generator().manual_seed(1))
corrupted = clean.scatter(1, first_copy, (clean.gather(1, first_copy) + noise - 1) % (task.vocab_size - 1) + 1)
second_copy = batch.mask & (torch.arange(task.n_ctx - 1) < starts[:, 2:3])  # the scored tokens of copy 1


def metric(logits):
    log_probs = logits[:, :-1].log_softmax(-1).gather(-1, clean[:, 1:, None])[..., 0]  # [batch, pos - 1]
    return log_probs[second_copy].mean().item()


resid = patching.patch_residual(model, source=clean, target=corrupted, metric=metric, site="resid_pre")
print(f"metric clean {resid.source_value:.2f}, corrupted {resid.target_value:.2f}")
display(Image(filename=resid.plot(RUNS / "patch_resid.png", normalized=True,
                                  title="resid_pre patched clean -> corrupted (1 = clean restored)"), width=800))
head_patch = patching.patch_heads(model, source=clean, target=corrupted, metric=metric)  # [layer, head]
print("each head's z patched (fraction of the metric restored):\n", head_patch.to_frame().assign(
    restored=head_patch.normalized().flatten().numpy()).round(2))
if INTERACTIVE:
    interactive.heatmap_figure(resid.normalized(), resid.labels[1], [f"layer {l}" for l in resid.labels[0]],
                               xlabel="position", ylabel="resid_pre of", value_name="restored",
                               title="Activation patching of the residual stream").show()
