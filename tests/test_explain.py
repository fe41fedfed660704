"""grokmath.analysis.explain against independent truth: Python integers, hooks written by hand,
a hand-built adder whose every node's job is known, planted probe and SAE signals."""
import json

import pandas as pd

import pytest
import torch

from analysis_helpers import tiny_model, trained_addition
from grokmath.analysis.explain import claims, nodes, probes, sae_scores, table, truth
from grokmath.analysis.explain.attribution_patch import attribution_scores, spearman
from grokmath.config import ModelConfig
from grokmath.model.transformer import Transformer
from grokmath.tasks import make_task

# ---- ground truth ------------------------------------------------------------------------------


def test_variables_match_python_integers():
    task = make_task("arithmetic", n_digits=3, ops={"add": 50, "sub": 50})
    batch = task.split(300, torch.Generator().manual_seed(0), n_test=0)[0]
    found = truth.variables(task, batch)
    for row, text in enumerate(task.decode(batch.tokens)):
        x, op, y = int(text[:3]), text[3], int(text[4:7])
        for i in range(4):  # place i: the carry / borrow into it, from the integers
            low = 10 ** i
            if op == "+":
                assert found["add.use_carry A%d" % i].values[row] == (x % low + y % low >= low) if i else True
                assert found["add.use_carry A1"].valid[row] and not found["sub.sign"].valid[row]
                if i < 3:
                    digit = lambda v: v // low % 10  # noqa: E731
                    assert found[f"add.sum9 A{i}"].values[row] == (digit(x) + digit(y) == 9)
                    assert found[f"add.make_carry A{i}"].values[row] == (digit(x) + digit(y) >= 10)
                    pair = digit(x) + digit(y)
                    assert found[f"add.tricase A{i}"].values[row] == (0 if pair < 9 else 1 if pair == 9 else 2)
            else:
                a, b = max(x, y), min(x, y)
                assert found["sub.sign"].values[row] == (x < y)
                if i:
                    assert found[f"sub.use_borrow A{i}"].values[row] == (a % low < b % low)
            assert found[f"{'add' if op == '+' else 'sub'}.answer A{i}"].values[row] == abs(
                x + y if op == "+" else x - y) // low % 10


def test_variables_agree_with_the_addition_tasks_metadata():
    task = make_task("addition", n_digits=4)
    batch = task.sample(500, torch.Generator().manual_seed(1))
    found = truth.variables(task, batch)
    for i in range(4):
        assert torch.equal(found[f"sum9 A{i}"].values.bool(), batch.meta["sum9"][:, i])
        assert torch.equal(found[f"make_carry A{i}"].values.bool(), batch.meta["make_carry_base"][:, i])
        assert torch.equal(found[f"use_sum9 A{i}"].values.bool(), batch.meta["use_sum9"][:, i])
        if i:
            assert torch.equal(found[f"use_carry A{i}"].values.bool(), batch.meta["use_carry"][:, i])
    assert truth.position_names(task)[:5] == ["D3", "D2", "D1", "D0", "OP"]
    assert truth.predicts(task)[9] == "A4"  # '=' predicts the leading digit


def test_question_set_draws_each_class():
    task = make_task("addition", n_digits=4)
    batch, names = truth.question_set(task, 30, torch.Generator().manual_seed(0))
    classes = task.question_classes(task.from_questions(batch.tokens).meta)
    for name, mask in classes.items():  # the names given are the classes the task computes
        assert all(names[i] == name for i in mask.nonzero()[:, 0].tolist())
    assert sum(n == "S0" for n in names) == 30 and sum(n == "S3" for n in names) == 30


# ---- nodes against hooks written by hand -------------------------------------------------------


@pytest.fixture(scope="module")
def trained():
    return trained_addition(n_digits=2, steps=150)


def hand_ablated_logits(model, tokens, node, reference):
    """Mean ablation of one node written directly with run_with_hooks (no grokmath ablation code)."""
    hook = {"head": "attn.hook_z", "neuron": "mlp.hook_post", "mlp": "hook_mlp_out"}[node.kind]
    name = f"blocks.{node.layer}.{hook}"
    _, cache = model.run_with_cache(reference, names_filter=[name])
    mean = cache[name].mean(0)  # [pos, ...]

    def replace(act, hook):
        act = act.clone()
        if node.kind == "mlp":
            act[:, node.position] = mean[node.position]
        else:
            act[:, node.position, node.index] = mean[node.position, node.index]
        return act
    return model.run_with_hooks(tokens, fwd_hooks=[(name, replace)])


@pytest.mark.parametrize("settings", [dict(), dict(n_layers=2, normalization="LN", attn_bias=True)])
def test_ablate_nodes_matches_hand_hooks(trained, settings):
    model, task = trained
    if settings:
        model = tiny_model(task, d_model=24, **settings)
    batch = task.sample(64, torch.Generator().manual_seed(3))
    reference = task.sample(40, torch.Generator().manual_seed(4)).tokens
    chosen = [nodes.PosNode(p, layer, "head", h) for p in (3, 5, 6) for layer in range(model.cfg.n_layers) for h in (0, 1)]
    chosen += [nodes.PosNode(p, layer, "mlp") for p in (2, 5) for layer in range(model.cfg.n_layers)]
    chosen += [nodes.PosNode(6, model.cfg.n_layers - 1, "neuron", k) for k in (0, 7)]
    chosen += [nodes.PosNode(p, 0, "neuron", k) for p in (2, 6) for k in (1, 3)]  # an earlier layer's too
    answers, losses = nodes.ablate_nodes(model, task, batch.tokens, chosen, "mean", reference)
    for i, node in enumerate(chosen):
        logits = hand_ablated_logits(model, batch.tokens, node, reference)[:, task.pred_pos]
        assert torch.equal(answers[i], logits.argmax(-1)), node.name
        expected = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch.targets).item()
        assert losses[i].item() == pytest.approx(expected, abs=1e-5)


def test_node_names_round_trip():
    for text in ("P14L0H1", "P14L0M37", "P3L1MLP"):
        assert nodes.parse_node(text).name == text
    with pytest.raises(ValueError, match="not a node name"):
        nodes.parse_node("L0H1")


def test_node_table_fail_pct_and_attribution(trained):
    model, task = trained
    batch, classes = truth.question_set(task, 60, torch.Generator().manual_seed(5))
    reference = task.sample(200, torch.Generator().manual_seed(6)).tokens
    tab, failed, info = table.node_table(model, task, batch, classes, "mean", reference)
    right = (model(batch.tokens)[:, task.pred_pos].argmax(-1) == batch.targets).all(-1)
    for _, row in tab[tab["kind"] != "neuron"].iterrows():  # fail % from hand hooks and integers
        node = nodes.parse_node(row["node"])
        pred = hand_ablated_logits(model, batch.tokens, node, reference)[:, task.pred_pos].argmax(-1)
        wrong = (pred != batch.targets).any(-1) & right
        assert row["fail_pct"] == pytest.approx(100 * wrong.sum().item() / right.sum().item(), abs=1e-3)
        assert row["useful"] == (row["fail_pct"] >= 0.5)
    assert set(tab["position"][tab["layer"] == 0]) <= set(task.pred_pos.tolist())  # 1 layer: scored positions only
    assert info["spearman_all"] > 0.3  # attribution ranks nodes roughly as ablation does


@pytest.fixture(scope="module")
def trained_2layer():
    return trained_addition(n_digits=2, steps=300, n_layers=2)


def test_attribution_skip_keeps_every_useful_node(trained_2layer):
    """The skip on a 2-layer model: the useful nodes found with it are those found ablating every
    node whose estimate reaches the floor (all of them with the default floor); the skipped ones
    are listed (not ablated, no loss change) and the others' numbers are unchanged."""
    model, task = trained_2layer
    last = model.cfg.n_layers - 1
    batch, classes = truth.question_set(task, 40, torch.Generator().manual_seed(5))
    reference = task.sample(200, torch.Generator().manual_seed(6)).tokens
    run = lambda floor: table.node_table(model, task, batch, classes, "mean", reference,  # noqa: E731
                                         torch.Generator().manual_seed(2), attribution_floor=floor)
    full, _, full_info = run(0.0)
    assert full["ablated"].all() and sum(full_info["skipped_by_attribution"].values()) == 0
    dear = full[full["layer"] < last]
    tight = dear[dear["kind"] != "neuron"]["attribution"].abs().median()  # skips about half of them
    for floor in (table.ATTRIBUTION_FLOOR, tight):
        fast, _, info = run(floor)
        kept = full[(full["layer"] == last) | (full["attribution"].abs() >= floor)]
        assert set(fast[fast["useful"]]["node"]) == set(kept[kept["useful"]]["node"])
        if floor == table.ATTRIBUTION_FLOOR:
            assert set(fast[fast["useful"]]["node"]) == set(full[full["useful"]]["node"])
        coarse = lambda t: t[t["kind"] != "neuron"]["node"].tolist()  # noqa: E731
        assert coarse(fast) == coarse(full)  # every head and MLP listed, skipped or not
        skipped = fast[~fast["ablated"]]
        assert len(skipped) == sum(info["skipped_by_attribution"].values())
        assert (skipped["layer"] < last).all() and (skipped["attribution"].abs() < floor).all()
        assert skipped["loss_change"].isna().all() and (skipped["fail_pct"] == 0).all()
        tried = fast[fast["ablated"]].set_index("node")
        assert tried["loss_change"].equals(full.set_index("node").loc[tried.index, "loss_change"])
    assert len(skipped) > 0  # the median floor skips heads or MLPs


def test_attribution_is_the_directional_derivative(trained):
    model, task = trained
    tokens = task.sample(32, torch.Generator().manual_seed(7)).tokens
    node = nodes.PosNode(5, 0, "head", 1)
    score = attribution_scores(model, task, tokens, [node], "zero")[0].item()
    # finite difference of the loss along (0 - z) at that head and position, by hand
    def loss_at(t):
        def scale(act, hook):
            act = act.clone()
            act[:, 5, 1] *= 1 - t
            return act
        logits = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", scale)])[:, task.pred_pos]
        return torch.nn.functional.cross_entropy(logits.transpose(1, 2).double(), tokens[:, task.pred_pos + 1]).item()
    eps = 1e-3
    assert score == pytest.approx((loss_at(eps) - loss_at(-eps)) / (2 * eps), rel=2e-2, abs=1e-5)


def test_spearman_against_ranks_by_hand():
    a, b = [3.0, 1.0, 2.0, 5.0, 4.0], [30.0, 20.0, 10.0, 50.0, 40.0]
    ra, rb = [3, 1, 2, 5, 4], [3, 2, 1, 5, 4]  # ranks, no ties: 1 - 6 sum d^2 / (n (n^2 - 1))
    d2 = sum((x - y) ** 2 for x, y in zip(ra, rb))
    assert spearman(a, b) == pytest.approx(1 - 6 * d2 / (5 * 24))
    assert spearman([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)  # ties share a rank
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # the node table's loss_change column is of object dtype once a skipped node left it empty
    column = pd.Series([None, 1.0, 3.0, 2.0], dtype=object)[1:]
    assert spearman(pd.Series([5.0, 6.0, 7.0]), column) == pytest.approx(0.5)


# ---- probes --------------------------------------------------------------------------------------


def test_ridge_probe_recovers_a_planted_direction():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(400, 20, generator=gen, dtype=torch.float64)
    label = (X[:, 3] - 2 * X[:, 7] > 0.2).long()
    W = probes.fit_ridge(X[:300], torch.nn.functional.one_hot(label[:300]).double(), 1e-4)
    guess = probes._predict(X[300:], W).argmax(-1)
    assert (guess == label[300:]).double().mean() > 0.93


def test_probe_reads_the_carry_a_trained_model_needs(trained):
    """The carry into the leading digit must be at the '=' position of a model that answers it;
    an untrained model has only what random features of the digits give, well below that."""
    model, task = trained
    gen = torch.Generator().manual_seed(0)
    train, test = task.sample(1500, gen), task.sample(800, gen)
    name, pos = "use_carry A2", int(task.pred_pos[0])
    assert (model(test.tokens)[:, pos].argmax(-1) == test.targets[:, 0]).double().mean() > 0.97
    found = probes.probe_table(model, task, train, test)
    row = found[(found.variable == name) & (found.layer == "final") & (found.position == pos)].iloc[0]
    untrained = probes.probe_table(tiny_model(task, n_layers=1, d_model=32), task, train, test)
    cold = untrained[(untrained.variable == name) & (untrained.layer == "final") & (untrained.position == pos)].iloc[0]
    assert row.accuracy > 0.97 and row.baseline < 0.6
    assert cold.accuracy < row.accuracy - 0.15 and cold.accuracy < cold.baseline + 0.3
    embed_only = found[(found.variable == name) & (found.layer == "L0 pre") & (found.position == pos)].iloc[0]
    assert embed_only.accuracy == pytest.approx(embed_only.baseline, abs=0.05)  # '=' alone says nothing
    assert found.position.max() <= task.n_ctx - 2 and (found[found.variable == name].position <= pos).all()


# ---- claims on a hand-built adder ----------------------------------------------------------------

def hand_built_adder():
    """1-digit addition 'x+y=zz' done exactly: head 0 copies x, head 1 copies y into their own
    subspaces (from '=' and A1, the two scored positions), one MLP neuron per (position, x, y)
    writes the answer digit: the carry at '=' (position 3), (x + y) % 10 at A1 (position 4)."""
    task = make_task("addition", n_digits=1)
    cfg = ModelConfig(n_layers=1, d_model=48, n_heads=2, d_head=10, d_mlp=200, d_vocab=12, d_vocab_out=10,
                      n_ctx=6, unembed_bias=True)
    model = Transformer(cfg)
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    state["embed.W_E"][:, :12] = torch.eye(12)  # dims 0-11 token, 12-17 position, 18-27 x, 28-37 y, 38-47 out
    state["pos_embed.W_pos"][:, 12:18] = torch.eye(6)
    for head, source in ((0, 0), (1, 2)):  # queries at positions 3, 4 look at the operand's position
        state["blocks.0.attn.W_Q"][head, 15, 0] = state["blocks.0.attn.W_Q"][head, 16, 0] = 1
        state["blocks.0.attn.W_K"][head, 12 + source, 0] = 40
        state["blocks.0.attn.W_V"][head, :10] = torch.eye(10)
        state["blocks.0.attn.W_O"][head, :, 18 + 10 * head:28 + 10 * head] = torch.eye(10)
    for slot in range(2):
        for x in range(10):
            for y in range(10):
                n = 100 * slot + 10 * x + y
                state["blocks.0.mlp.W_in"][[18 + x, 28 + y, 15 + slot], n] = 1
                out = (x + y >= 10) if slot == 0 else (x + y) % 10
                state["blocks.0.mlp.W_out"][n, 38 + int(out)] = 1
    state["blocks.0.mlp.b_in"][:] = -2
    state["unembed.W_U"][38:48] = 10 * torch.eye(10)
    state["unembed.b_U"][0] = 0.01  # when every neuron is silent the model says 0
    model.load_state_dict(state)
    x, y = torch.arange(10).repeat_interleave(10)[:, None], torch.arange(10).repeat(10)[:, None]
    return model.eval(), task, task.from_digits(x, y)


def test_hand_built_adder_is_right_everywhere():
    model, task, batch = hand_built_adder()
    assert torch.equal(model(batch.tokens)[:, task.pred_pos].argmax(-1), batch.targets)


@pytest.mark.parametrize("text, verdict, precision, recall", [
    ("P3L0H0 MakeCarry 0", "holds", 1.0, 1.0),  # no x at '=': the carry is lost, and only it
    ("P3L0H1 MakeCarry 0", "holds", 1.0, 1.0),
    ("P4L0H0 BaseAdd 0", "holds", 1.0, 0.9),  # no x at A1: A0 becomes 0, wrong unless (x+y)%10 == 0
    ("P3L0H0 BaseAdd 0", "partly", 1.0, 0.45),  # only the 45 carry questions change
    ("P4L0H1 MakeCarry 0", "fails", 36 / 90, 36 / 45),
    ("P4L0MLP use_carry A1 0", "fails", 54 / 90, 54 / 55),  # A0 -> 0: right only where x + y is 0 or 10
])
def test_claims_on_the_hand_built_adder(text, verdict, precision, recall):
    model, task, batch = hand_built_adder()
    known = truth.variables(task, batch)
    claim = claims.parse_claim(text, known)
    result = claims.test_claims(model, task, batch, [claim], known, kind="zero")[0]
    assert result["verdict"].startswith(verdict)
    assert result["precision"] == pytest.approx(precision) and result["recall"] == pytest.approx(recall)


def test_proposed_claims_name_the_hand_built_roles():
    model, task, batch = hand_built_adder()
    tab, failed, _ = table.node_table(model, task, batch, None, "zero", neurons=False)
    known = truth.variables(task, batch)
    right = torch.ones(len(batch), dtype=torch.bool)
    by_node = {row["node"]: i for i, row in tab.iterrows()}
    best = claims.explain_failures(failed[by_node["P3L0H0"]], right, known, top=1)[0]
    assert (best["variable"], best["value"], best["f1"]) == ("use_carry A1", 1, 1.0)
    assert claims.claim_text("P3L0H0", best["variable"], best["value"]) == "P3L0H0 MakeCarry 0"
    row = tab.iloc[by_node["P4L0H1"]]
    assert row["attends"] == "D'0" and row["impact"] == "A0"  # head 1 looks at y; only A0 changes


def test_bad_claims_are_refused_in_words():
    model, task, batch = hand_built_adder()
    known = truth.variables(task, batch)
    with pytest.raises(ValueError, match="unknown role"):
        claims.parse_claim("P3L0H0 MakesCarry 0", known)
    with pytest.raises(ValueError, match="no variable"):
        claims.parse_claim("P3L0H0 UseSum9 5", known).predicted(known)


# ---- SAE features --------------------------------------------------------------------------------

def test_sae_feature_that_is_the_carry_scores_one():
    from grokmath.analysis.sae import SparseAutoencoder
    task = make_task("addition", n_digits=2)
    batch = task.sample(400, torch.Generator().manual_seed(0))
    known = truth.variables(task, batch)
    carry = known["use_carry A1"].values.float()
    acts = torch.stack([carry, torch.randn(400, generator=torch.Generator().manual_seed(1))], dim=1)  # [rows, 2]
    sae = SparseAutoencoder(2, 3)
    with torch.no_grad():
        sae.W_enc.zero_(); sae.b_enc.zero_()  # noqa: E702
        sae.W_enc[0, 0], sae.b_enc[0] = 1.0, -0.5  # feature 0: on exactly when the carry is
        sae.W_enc[1, 1] = 1.0  # feature 1: noise; feature 2: dead
    scored = sae_scores.score_features(sae, acts, known)
    top = scored.iloc[0]
    assert (top.feature, top.value, top.f1) == (0, 1, 1.0) and top.variable in ("use_carry A1", "make_carry A0")
    assert scored[scored.feature == 1].f1.iloc[0] < 0.8 and scored.attrs["dead"] == 1


# ---- the script ----------------------------------------------------------------------------------

def test_explain_script_on_the_hand_built_adder(tmp_path, capsys):
    from test_analysis_scripts import make_run, run_main
    model, task, _ = hand_built_adder()
    run = make_run(tmp_path / "adder", model, task)
    code, out, err = run_main("explain", [str(run), "--per-class", "40", "--probe-questions", "300",
                                          "--kind", "zero", "--no-progress"], capsys)
    assert code == 0, err
    folder = run / "analysis" / "explain"
    nodes_csv = (folder / "nodes.csv").read_text().splitlines()
    assert nodes_csv[0].startswith("node,position,position_name,predicts,layer,kind,head,neuron,useful,fail_pct,impact,"
                                   "attends,tags,loss_change,attribution")
    tested = {c["claim"]: c["verdict"] for c in json.loads((folder / "claims.json").read_text())}
    assert tested.get("P3L0H0 MakeCarry 0") == "holds"
    assert (folder / "quanta_map.png").stat().st_size > 0 and "## Claims" in (folder / "summary.md").read_text()
    code, _, err = run_main("explain", [str(run)], capsys)  # the files exist now
    assert code == 2 and "--overwrite" in err and err.count("\n") == 1
    code, _, err = run_main("explain", [str(tmp_path / "nope")], capsys)
    assert code == 2 and err.count("\n") == 1


def test_other_tasks_get_useful_heads_and_scores(tmp_path):
    from grokmath.analysis.explain.report import explain
    task = make_task("induction", seq_len=20, subseq_len=4, vocab_size=16)
    model = tiny_model(task, attn_only=True)
    result = explain(model, task, tmp_path, progress=False)
    scores = json.loads((tmp_path / "heads.json").read_text())
    assert len(scores["induction"]) == 2 and len(scores["induction"][0]) == 2  # [layer][head]
    useful = result["table"]
    assert (useful["useful"] == (useful["loss_change"] > 0.05)).all()
    assert "Induction score" in (tmp_path / "summary.md").read_text()


def test_explain_script_scores_an_sae_of_the_run(tmp_path, capsys):
    """--sae: a hand-set SAE on the adder's residual whose feature 0 reads the 'out = 1' dimension
    (39): at '=' (P3) that is the carry, at A1 (P4) the units digit 1; feature 1 reads noise-free 'out = 0'."""
    from grokmath.analysis.sae import SAEConfig, SparseAutoencoder, save_sae
    from test_analysis_scripts import make_run, run_main
    model, task, _ = hand_built_adder()
    run = make_run(tmp_path / "adder", model, task)
    sae = SparseAutoencoder(48, 4)
    with torch.no_grad():
        sae.W_enc.zero_(); sae.b_enc.fill_(-0.5)  # noqa: E702
        sae.W_enc[39, 0] = 1.0  # on when the model writes out = 1
        sae.W_enc[38, 1] = 1.0  # on when it writes out = 0
    hook = "blocks.0.hook_resid_post"
    save_sae(tmp_path / "sae", sae, SAEConfig(d_sae=4), extra={"hook": hook, "positions": [3, 4], "run_dir": str(run)})
    code, out, err = run_main("explain", [str(run), "--per-class", "40", "--probe-questions", "300", "--no-progress",
                                          "--sae", str(tmp_path / "sae")], capsys)
    assert code == 0, err
    folder = run / "analysis" / "explain"
    scored = pd.read_csv(folder / "sae_features.csv")
    at = {p: scored[(scored.position == p) & (scored.feature == 0)].iloc[0] for p in (3, 4)}
    assert at[3].f1 == 1.0 and at[3].value == 1 and at[3].variable in ("make_carry A0", "use_carry A1")
    assert at[4].f1 == 1.0 and at[4].value == 1 and at[4].variable in ("base_add A0", "answer A0")
    assert f"## SAE features against the ground truth ({hook})" in (folder / "summary.md").read_text()
    bad = SparseAutoencoder(47, 4)  # the wrong width: refused in one line before the long work
    save_sae(tmp_path / "bad", bad, SAEConfig(d_sae=4), extra={"hook": hook, "positions": "all"})
    code, _, err = run_main("explain", [str(run), "--overwrite", "--sae", str(tmp_path / "bad")], capsys)
    assert code == 2 and err.count("\n") == 1 and "reads 47 numbers per position" in err, err
