"""Sparse autoencoders: recovery of known sparse directions, the loss parts against formulas,
activations through hooks against run_with_cache, the spliced-in check against independent
model edits, per-feature statistics against a loop, and scripts/train_sae.py end to end."""
import json
import math
import runpy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from grokmath.analysis.sae import (SAEConfig, SparseAutoencoder, TensorSource, evaluate_sae, grid_search,
                                   load_sae, sae_losses, score, train_sae)
from grokmath.analysis.sae_run import ModelSource, feature_stats, spliced_losses
from grokmath.model.transformer import Transformer
from grokmath.tasks import make_task
from grokmath.config import TrainConfig, model_config_for
from grokmath.training.run import start_run

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_sae.py"


def sparse_directions(n=2048, d_in=16, k=8, p_on=0.15, seed=0):
    """Rows that are sparse non-negative combinations of k orthonormal ground-truth directions."""
    gen = torch.Generator().manual_seed(seed)
    dirs = torch.linalg.qr(torch.randn(d_in, d_in, generator=gen))[0][:, :k].T  # [k, d_in]
    on = torch.rand(n, k, generator=gen) < p_on
    coef = (0.5 + torch.rand(n, k, generator=gen)) * on
    return coef @ dirs, dirs, on


def test_sae_recovers_sparse_ground_truth_with_low_mse_and_few_active_features():
    x, dirs, on = sparse_directions()
    cfg = SAEConfig(d_sae=16, lr=1e-2, epochs=30, patience=3, batch_size=128, sparsity_weight=1e-3,
                    l1_weight=0.1, min_delta=0)
    sae, history = train_sae(TensorSource(x, cfg.batch_size, seed=0), cfg)
    with torch.no_grad():
        features, recon = sae(x)
    relative_mse = ((recon - x) ** 2).mean() / x.var()
    assert relative_mse < 0.01
    active = (features > 0).float().sum(1).mean()
    assert active < 4 < cfg.d_sae  # the data has ~1.2 directions per row; the dictionary 16 features
    # every ground-truth direction is (nearly) a decoder row
    cosines = dirs @ F.normalize(sae.W_dec.detach(), dim=1).T  # [k, d_sae]
    assert cosines.max(dim=1).values.min() > 0.95
    assert set(history.columns) >= {"epoch", "loss", "mse", "sparsity_penalty", "l1_penalty", "sparsity", "l0",
                                    "explained_variance", "features_used", "dead_features", "score"}
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]


def test_loss_parts_match_their_formulas():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(32, 6, generator=gen)
    sae = SparseAutoencoder(6, 10, seed=3)
    cfg = SAEConfig(d_sae=10, sparsity_target=0.1, sparsity_weight=0.5, l1_weight=0.25)
    features, recon = sae(x)
    parts = sae_losses(x, features, recon, cfg)
    mse = sum(((recon[i] - x[i]) ** 2).sum().item() for i in range(32)) / (32 * 6)
    kl = 0.0
    for j in range(10):
        q = min(max(features[:, j].mean().item(), 1e-8), 1 - 1e-8)
        kl += 0.1 * math.log(0.1 / q) + 0.9 * math.log(0.9 / (1 - q))
    l1 = features.abs().sum().item() / (32 * 10)
    assert parts["mse"].item() == pytest.approx(mse, rel=1e-5)
    assert parts["sparsity_penalty"].item() == pytest.approx(min(kl, 1e3), rel=1e-4)
    assert parts["l1_penalty"].item() == pytest.approx(l1, rel=1e-5)
    assert parts["loss"].item() == pytest.approx(mse + 0.5 * min(kl, 1e3) + 0.25 * l1, rel=1e-4)
    assert score(0.02, 0.5, 16, 64) == pytest.approx(2 + 0.5 + 0.25)
    metrics = evaluate_sae(sae, [x], cfg)
    assert metrics["sparsity"] == pytest.approx((features > 0).float().mean().item())
    assert metrics["features_used"] == int((features > 0).any(0).sum())


def test_early_stopping_and_the_grid_keeps_the_best_held_out_score():
    x, _, _ = sparse_directions(n=512)
    flat = SAEConfig(d_sae=8, lr=1e-6, epochs=20, patience=2, min_delta=1.0, batch_size=256)
    _, history = train_sae(TensorSource(x, 256), flat)
    assert len(history) == 3  # epoch 1 sets the best; two epochs without a 1.0 improvement stop it
    base = SAEConfig(epochs=3, batch_size=256, lr=1e-2)
    sae, cfg, _, table = grid_search(TensorSource(x, 256), [x], {"d_sae": [4, 16], "l1_weight": [1e-4, 1e-1]},
                                     base, progress=False)
    assert len(table) == 4 and set(table.columns) >= {"d_sae", "l1_weight", "score", "features_used"}
    best = table.loc[table["score"].idxmin()]
    assert (cfg.d_sae, cfg.l1_weight) == (best["d_sae"], best["l1_weight"]) and sae.d_sae == cfg.d_sae
    with pytest.raises(ValueError, match="'batch' is not a grid setting"):
        grid_search([x], [x], {"batch": [1]})
    with pytest.raises(ValueError, match="sparsity_target=1.5 is out of range"):
        SAEConfig(sparsity_target=1.5)


@pytest.fixture(scope="module")
def addition_model():
    task = make_task("addition", n_digits=2)
    model = Transformer(model_config_for(task, n_layers=2, d_model=16, n_heads=2, d_mlp=24, seed=5)).eval()
    return task, model


def test_model_source_gives_the_cached_activation_at_its_positions_and_leaves_no_hooks(addition_model):
    task, model = addition_model
    source = ModelSource(model, task, "blocks.1.attn.hook_z", n_batches=2, batch_size=8, seed=3, positions="answer")
    rows = list(source)
    assert [r.shape for r in rows] == [(8 * 3, 2 * 8)] * 2  # 3 answer positions; [head, d_head] flattened
    batches = list(source.questions())
    _, cache = model.run_with_cache(batches[1].tokens)
    expected = cache["blocks.1.attn.hook_z"][:, task.pred_pos].reshape(-1, 16)
    torch.testing.assert_close(rows[1], expected)
    torch.testing.assert_close(list(source)[1], rows[1])  # the same questions every epoch
    assert model.list_hooks() == {}


def identity_sae(d_in):
    """ReLU(x) - ReLU(-x) = x: an SAE that reconstructs exactly."""
    sae = SparseAutoencoder(d_in, 2 * d_in)
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def reference_loss(model, task, batches):
    nll = torch.cat([F.cross_entropy(model(b.tokens)[:, task.pred_pos].double().transpose(1, 2), b.targets,
                                     reduction="none").flatten() for b in batches])
    return nll.mean().item()


def test_spliced_losses_against_independent_model_edits(addition_model):
    task, model = addition_model
    source = ModelSource(model, task, "blocks.0.mlp.hook_post", n_batches=2, batch_size=16, seed=4)
    batches = list(source.questions())
    exact = spliced_losses(source, identity_sae(24))
    with torch.no_grad():
        clean = reference_loss(model, task, batches)
        silenced = Transformer(model.cfg)
        silenced.load_state_dict(model.state_dict())
        silenced.blocks[0].mlp.W_out.zero_()  # zero hook_post everywhere = an MLP that outputs b_out
        zeroed = reference_loss(silenced, task, batches)
    assert exact["clean_loss"] == pytest.approx(clean, rel=1e-6)
    assert exact["sae_loss"] == pytest.approx(clean, rel=1e-5)
    assert exact["zero_ablation_loss"] == pytest.approx(zeroed, rel=1e-6)
    assert exact["loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    dead = SparseAutoencoder(24, 4)
    with torch.no_grad():
        dead.b_enc.fill_(-100.0)  # no feature fires: the reconstruction is b_dec, set to zero
        dead.b_dec.zero_()
    assert spliced_losses(source, dead)["sae_loss"] == pytest.approx(zeroed, rel=1e-6)
    assert model.list_hooks() == {}


def test_feature_stats_against_a_loop(addition_model):
    task, model = addition_model
    source = ModelSource(model, task, "blocks.0.hook_resid_post", n_batches=2, batch_size=16, seed=6)
    sae = SparseAutoencoder(16, 6, seed=2)
    stats = feature_stats(source, sae)
    feats, cases = [], []
    for batch in source.questions():
        _, cache = model.run_with_cache(batch.tokens)
        feats.append(sae.encode(cache["blocks.0.hook_resid_post"]).detach())  # [batch, n_ctx, d_sae]
        cases.append(task.case_masks(batch)["UseCarry1"])
    feats, use_carry = torch.cat(feats), torch.cat(cases)
    for f in range(6):
        on = feats[..., f] > 0
        assert stats.loc[f, "freq"] == pytest.approx(on.double().mean().item())
        for i, (label, pos) in enumerate(zip(task.pred_labels, task.pred_pos.tolist())):
            assert stats.loc[f, f"freq_{label}"] == pytest.approx(on[:, pos].double().mean().item())
        hits = [on[b, p].item() for b in range(len(on)) for i, p in enumerate(task.pred_pos.tolist())
                if use_carry[b, i]]
        assert stats.loc[f, "freq_case_UseCarry1"] == pytest.approx(sum(hits) / len(hits))
    assert {"freq_case_BaseAdd", "freq_case_UseSum9", "freq_case_S0"} <= set(stats.columns)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    task = make_task("arithmetic", n_digits=2, ops={"add": 50, "sub": 50})
    cfg = model_config_for(task, n_layers=1, d_model=16, n_heads=2, d_mlp=32, normalization="LN")
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    start_run(cfg, task, TrainConfig(steps=20, lr=3e-3, batch_size=32, checkpoint_every=20), run_dir,
              device="cpu", progress=False, plots=False)
    return run_dir


def run_script(*argv):
    main = runpy.run_path(str(SCRIPT), run_name="train_sae")["main"]
    main(list(map(str, argv)))


def test_train_sae_script_end_to_end(tiny_run, capsys):
    common = ["--n-batches", 3, "--eval-batches", 2, "--batch-size", 16, "--epochs", 2, "--no-progress"]
    run_script(tiny_run, *common, "--d-sae", 8, 12)
    out = tiny_run / "sae" / "blocks.0.mlp.hook_post"
    names = {p.name for p in out.iterdir()}
    assert {"cfg.json", "sae_weights.safetensors", "sae_config.json", "report.json", "epochs.csv", "features.csv", "grid.csv",
            "feature_frequency.png", "feature_digits.png", "feature_cases.png"} <= names
    sae, cfg, config = load_sae(out)
    assert (sae.d_in, config["hook"]) == (32, "blocks.0.mlp.hook_post")
    grid = pd.read_csv(out / "grid.csv")
    assert cfg.d_sae == grid.loc[grid["score"].idxmin(), "d_sae"] and len(grid) == 2
    report = json.loads((out / "report.json").read_text())
    assert set(report["spliced"]) >= {"clean_loss", "sae_loss", "zero_ablation_loss", "loss_recovered"}
    assert len(report["epochs"]) == len(pd.read_csv(out / "epochs.csv")) >= 1
    features = pd.read_csv(out / "features.csv")
    assert len(features) == cfg.d_sae and {"freq_sign", "freq_A0", "freq_case_add"} <= set(features.columns)
    assert np.all((features["freq"] >= 0) & (features["freq"] <= 1))
    assert "Score:" in capsys.readouterr().out

    before = (out / "sae_weights.safetensors").read_bytes()
    guard = runpy.run_path(str(SCRIPT), run_name="train_sae")
    with pytest.raises(SystemExit) as stop:  # never overwrite without --overwrite
        guard["cli"].main_guard(guard["main"], list(map(str, [tiny_run, *common])))
    assert stop.value.code == 2
    assert "already exists: pass --overwrite" in capsys.readouterr().err
    assert (out / "sae_weights.safetensors").read_bytes() == before
    run_script(tiny_run, *common, "--positions", "answer", "--overwrite", "--d-sae", 6)
    assert load_sae(out)[0].d_sae == 6 and not (out / "grid.csv").exists()
