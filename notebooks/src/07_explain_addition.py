# %% [markdown]
# # 7. Taking an addition model apart: useful nodes, attribution, probes and claims
#
# Quirke & Barez (2023, "Understanding Addition in Transformers") found the algorithm inside a
# 1-layer addition model by ablating every attention head and MLP at every token position, tagging
# each useful node with what fails without it (which answer digit, which carry case) and testing a
# declared algorithm against those facts. `grokmath.analysis.explain` does that in one call and
# scores every finding against the task's ground truth (the true carry into each digit, every sum
# of 9, every cascade). This notebook reproduces that analysis on a small 3-digit model trained
# here in seconds; at full scale `python scripts/explain.py runs/addition_5d_s129000` takes the
# 5-digit seed model apart the same way (the README compares its report with the paper's account).

# %%
import os
import tempfile
from pathlib import Path

import torch
from IPython.display import Image, display

from grokmath.analysis.explain import claims, nodes, probes, truth
from grokmath.analysis.explain.report import explain
from grokmath.config import ModelConfig
from grokmath.training.losses import loss_fn
from grokmath.model.transformer import Transformer
from grokmath.tasks import make_task

RUNS = Path(os.environ.get("GROKMATH_RUNS") or tempfile.mkdtemp(prefix="grokmath_"))  # set a folder to keep the output
torch.set_num_threads(max(1, torch.get_num_threads()))
print("output goes to", RUNS)

# %% [markdown]
# ## A model to take apart
#
# 3-digit addition (`123+456=0579`), a 1-layer model with 2 heads, trained for 500 steps on fresh
# batches: enough to answer most questions, not all, so that ablation has something to break.

# %%
task = make_task("addition", n_digits=3)
model = Transformer(ModelConfig(n_layers=1, d_model=64, n_heads=2, d_mlp=256, d_vocab=task.d_vocab,
                                d_vocab_out=task.d_vocab_out, n_ctx=task.n_ctx, seed=1))
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
generator = torch.Generator().manual_seed(0)
for step in range(500):
    batch = task.sample(128, generator)
    loss = loss_fn(model(batch.tokens, positions=task.pred_pos), batch.targets)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
model.eval()
test = task.sample(2000, torch.Generator().manual_seed(1))
with torch.no_grad():
    right = (model(test.tokens)[:, task.pred_pos].argmax(-1) == test.targets).all(-1)
accuracy = right.double().mean().item()
print(f"questions answered right: {accuracy:.1%}")
assert accuracy > 0.5  # "enough to answer most questions"

# %% [markdown]
# ## Names: positions and nodes
#
# Positions are named by their token (`D2 D1 D0` the first operand, `D'2 D'1 D'0` the second, then
# `=` and the answer digits); the logits at `=` predict the leading digit A3. A node is a head,
# MLP neuron or whole MLP at one position, written as QuantaTools writes it: `P8L0H1` is head 1 of
# layer 0 at position 8.

# %%
names = truth.position_names(task)
print(list(enumerate(names)))
print("position -> the answer digit its logits predict:", truth.predicts(task))
assert truth.predicts(task)[7] == "A3" and names[7] == "="
assert nodes.parse_node("P8L0H1") == nodes.PosNode(8, 0, "head", 1)

# %% [markdown]
# ## The whole report
#
# `explain` draws questions per carry class (S0: no carry, S1: a carry, S2 and S3: carries that
# cascade through sums of 9), mean-ablates every head and MLP at every position that can matter,
# then every neuron at the positions whose MLP is useful, scores all of them with attribution
# patching, fits probes, proposes claims from the failures and tests them on fresh questions.

# %%
report = explain(model, task, RUNS / "explain", per_class=100, probe_questions=1000, progress=False)
table, info = report["table"], report["info"]
print({k: info[k] for k in ("questions", "right", "spearman_all", "seconds")})
assert set(table["kind"]) == {"head", "mlp", "neuron"}
# only the 4 scored positions can matter in a 1-layer model: a last-layer node changes only its own position
assert sorted(table["position"].unique()) == sorted(task.pred_pos.tolist()) == [7, 8, 9, 10]

# %% [markdown]
# ### Which answer digit each position computes
#
# Every useful head changes exactly the answer digit its own position predicts: the `impact`
# column of each useful head at position p is the one digit predicted there.

# %%
heads = table[(table["kind"] == "head") & table["useful"]]
print(heads[["node", "position_name", "predicts", "fail_pct", "impact", "attends", "tags"]].to_string(index=False))
assert len(heads) > 0
assert all(row["impact"] == row["predicts"] for _, row in heads.iterrows())

# %% [markdown]
# ### The digit pairs the heads attend to
#
# Quirke & Barez's heads attend to a pair of digits of the same place: at the position computing
# An, the pair Dn D'n is the base add, D(n-1) D'(n-1) the carry from below. Here every head at the
# positions of A2, A1 and A0 puts at least 10% of its attention on both digits of its own place.

# %%
for _, row in heads.iterrows():
    label = row["predicts"]
    if label != "A3":
        k = label[1:]
        assert f"D{k}" in row["attends"].split() and f"D'{k}" in row["attends"].split(), row["node"]
display(Image(str(report["paths"]["quanta_map.png"])))
display(Image(str(report["paths"]["attention_by_node.png"])))

# %% [markdown]
# ### Attribution patching against true ablation
#
# One forward and one backward pass estimate every node's loss change; its Spearman rank
# correlation with the true loss change over all the nodes tried is positive.

# %%
print(f"Spearman, all nodes: {info['spearman_all']:.2f}; heads: {info['spearman_heads']:.2f}; "
      f"neurons: {info['spearman_neurons']:.2f}")
assert info["spearman_all"] > 0

# %% [markdown]
# ## Probes: where the carry is readable
#
# A linear probe for the carry into A3 (the leading digit, which is the carry itself) reads it at
# the `=` position after the layer almost perfectly, far above the majority baseline, and the
# token embeddings alone (`L0 pre`) do not have it.

# %%
table_p = report["probes"]
row = table_p[(table_p.variable == "use_carry A3") & (table_p.layer == "final") & (table_p.position == 7)].iloc[0]
embed = table_p[(table_p.variable == "use_carry A3") & (table_p.layer == "L0 pre") & (table_p.position == 7)].iloc[0]
print(f"final: {row.accuracy:.3f} (baseline {row.baseline:.3f}); embeddings only: {embed.accuracy:.3f}")
assert row.accuracy > 0.95 and row.baseline < 0.6 and embed.accuracy < 0.6
display(Image(str(report["paths"]["probes.png"])))

# %% [markdown]
# ## Claims, tested by intervention
#
# Each useful node's failures are explained by the ground-truth variable that predicts them best
# (on the node table's questions), written as a claim such as `P7L0H0 MakeCarry 2`, then tested by
# ablating the node on fresh questions. A claim holds when precision (of the questions that change,
# the share it predicted) and recall (of those it predicted, the share that change) both reach 0.8.

# %%
tested = report["claims"]
for c in tested:
    print(f"{c['claim']:28s} {c['source']:12s} precision {c['precision']:.2f} recall {c['recall']:.2f}  {c['verdict']}")
held = [c for c in tested if c["verdict"] == "holds"]
print(f"{len(held)} of {len(tested)} claims hold")
assert held and all(c["precision"] >= 0.8 and c["recall"] >= 0.8 for c in held)
display(Image(str(report["paths"]["claims.png"])))

# %% [markdown]
# A claim of your own is one line. The MLP at the position of A0 (`P10L0MLP`) does the base add of
# the units: ablating it changes nearly every answer, so `BaseAdd 0` (every question) holds there.

# %%
check_set, _ = truth.question_set(task, 100, torch.Generator().manual_seed(7))
known = truth.variables(task, check_set)
mine = claims.test_claims(model, task, check_set, [claims.parse_claim("P10L0MLP BaseAdd 0", known)], known)[0]
print(mine)
assert mine["verdict"] == "holds"
