"""The explain report's claims and figures for induction, skip-trigram and modular (others_claims)."""
import json

import torch

from analysis_helpers import tiny_model
from grokmath.analysis.explain import others_claims
from grokmath.analysis.explain.report import explain
from grokmath.tasks import make_task


def induction_setup():
    task = make_task("induction", seq_len=20, subseq_len=4, vocab_size=16)
    return task, tiny_model(task, attn_only=True)


def test_induction_report_writes_claims_and_figures(tmp_path):
    task, model = induction_setup()
    result = explain(model, task, tmp_path, progress=False)
    claims = json.loads((tmp_path / "claims.json").read_text())
    assert claims == json.loads(json.dumps(result["claims"]))
    assert any(c["claim"].endswith("is an induction head") for c in claims)  # the best-scoring head at least
    assert all(c["verdict"] in ("holds", "fails") for c in claims)
    for name in ("head_scores.png", "attention.png"):
        assert (tmp_path / name).stat().st_size > 1000
    summary = (tmp_path / "summary.md").read_text()
    assert "## Claims" in summary and all(c["claim"] in summary for c in claims)


def test_a_head_whose_ablation_does_nothing_is_no_induction_head():
    task, model = induction_setup()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.W_O.zero_()  # no head writes anything: ablating one changes no logit
    batch = task.sample(64, torch.Generator().manual_seed(1))
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8]])  # claimed by these scores, not by the model's
    claims = others_claims.induction_claims(model, task, batch, scores)
    assert {c["claim"] for c in claims} == {"L0H0 is an induction head", "L1H1 is an induction head"}
    assert all(c["verdict"] == "fails" and abs(c["loss_rise_repeats"]) < 1e-6 for c in claims)
    useful = others_claims.useful_head_claims(model, task, batch, [(0, 0)])
    assert useful[0]["verdict"] == "fails" and abs(useful[0]["loss_change"]) < 1e-6


def test_induction_verdict_needs_the_repeats_to_suffer_more_than_the_first_copy():
    assert others_claims.induction_verdict(0.5, 0.1) == "holds"
    assert others_claims.induction_verdict(0.5, 0.4) == "fails"  # hurts everywhere: not copying
    assert others_claims.induction_verdict(0.05, 0.0) == "fails"  # too small a rise
    assert others_claims.induction_verdict(0.5, -0.2) == "holds"


def test_loss_per_position_is_the_cross_entropy_at_each_scored_position():
    task, model = induction_setup()
    batch = task.sample(32, torch.Generator().manual_seed(2))
    clean = others_claims.loss_per_position(model, task, batch.tokens, batch.targets)
    logits = model(batch.tokens)[:, task.pred_pos]
    expected = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch.targets, reduction="none")
    assert torch.allclose(clean, expected, atol=1e-6)


def test_skip_trigram_and_modular_get_their_figures(tmp_path):
    for name, options, figures in (("skip_trigram", {}, ["head_scores.png", "attention.png"]),
                                   ("modular", dict(p=13), ["head_scores.png", "key_frequencies.png"])):
        task = make_task(name, **options)
        model = tiny_model(task, n_layers=1, d_model=16, d_mlp=32)
        result = explain(model, task, tmp_path / name, progress=False)
        assert all((tmp_path / name / f).stat().st_size > 1000 for f in figures), name
        assert json.loads((tmp_path / name / "claims.json").read_text()) == result["claims"]
