"""TopK and JumpReLU SAEs beside the ReLU one: their encoders against per-row loops, the metrics
people read (L0, explained variance, dead features) against direct formulas, the L0 penalty
working, and SAELens's on-disk layout (loaded by the real sae_lens where installed), plus a
model's weights as safetensors (loaded by a real HookedTransformer where installed)."""
import json

import pytest
import torch

from grokmath import ModelConfig, Transformer
from grokmath.analysis.sae import SAEConfig, SparseAutoencoder, TensorSource, evaluate_sae, load_sae, save_sae, train_sae
from grokmath.interop.export import load_model_safetensors, save_model_safetensors
from grokmath.interop.state_dicts import to_tlens_config, to_tlens_state_dict

X = torch.randn(64, 6, generator=torch.Generator().manual_seed(0))


def test_encoders_match_per_row_loops():
    topk = SparseAutoencoder(6, 10, seed=1, architecture="topk", k=3)
    jump = SparseAutoencoder(6, 10, seed=1, architecture="jumprelu")
    with torch.no_grad():
        jump.threshold.copy_(torch.linspace(-0.2, 0.4, 10))
        h = X @ topk.W_enc + topk.b_enc  # the same init (seed 1) for both
        got_topk, got_jump = topk.encode(X), jump.encode(X)
    for row in range(len(X)):
        values = h[row].tolist()
        top = sorted(range(10), key=lambda j: values[j], reverse=True)[:3]
        want = [max(values[j], 0.0) if j in top else 0.0 for j in range(10)]
        assert got_topk[row].tolist() == pytest.approx(want)
        want = [max(values[j], 0.0) if values[j] > jump.threshold[j].item() else 0.0 for j in range(10)]
        assert got_jump[row].tolist() == pytest.approx(want)


def test_metrics_match_their_formulas():
    sae = SparseAutoencoder(6, 12, seed=2, architecture="topk", k=2)
    cfg = SAEConfig(d_sae=12, architecture="topk", k=2)
    metrics = evaluate_sae(sae, TensorSource(X, 16), cfg)  # four batches
    with torch.no_grad():
        features, recon = sae(X)
    x, r = X.double(), recon.double()
    assert metrics["explained_variance"] == pytest.approx(
        1 - ((x - r) ** 2).sum().item() / ((x - x.mean(0)) ** 2).sum().item(), rel=1e-9)
    assert metrics["l0"] == pytest.approx((features > 0).sum(1).double().mean().item())
    assert metrics["dead_features"] == 12 - int((features > 0).any(0).sum())


def test_topk_keeps_k_and_jumprelu_l0_penalty_lowers_l0():
    gen = torch.Generator().manual_seed(3)
    x = torch.relu(torch.randn(512, 8, generator=gen))
    cfg = SAEConfig(d_sae=16, architecture="topk", k=2, epochs=2, batch_size=128, lr=1e-2)
    sae, history = train_sae(TensorSource(x, 128), cfg)
    assert ((sae.encode(x) > 0).sum(1) <= 2).all() and history["l0"].max() <= 2
    l0 = {}
    for weight in (0.0, 0.05):
        cfg = SAEConfig(d_sae=16, architecture="jumprelu", l0_weight=weight, epochs=15, patience=15,
                        batch_size=128, lr=1e-2, jumprelu_bandwidth=0.1)
        sae, _ = train_sae(TensorSource(x, 128), cfg)
        l0[weight] = evaluate_sae(sae, [x], cfg)["l0"]
        assert sae.threshold.grad is not None  # the straight-through estimator reached the threshold
    assert l0[0.05] < 0.8 * l0[0.0]


@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu"])
def test_saelens_layout_and_round_trip(tmp_path, architecture):
    cfg = SAEConfig(d_sae=10, architecture=architecture, k=3)
    sae = SparseAutoencoder.from_config(6, cfg)
    save_sae(tmp_path, sae, cfg, {"hook": "blocks.0.mlp.hook_post", "run_dir": "/r/mod"})
    saved = json.loads((tmp_path / "cfg.json").read_text())
    assert (saved["architecture"], saved["d_in"], saved["d_sae"], saved["apply_b_dec_to_input"]) == \
        (architecture, 6, 10, False)
    assert saved["metadata"]["hook_name"] == "blocks.0.mlp.hook_post"
    back = load_sae(tmp_path)[0]
    assert torch.equal(back.encode(X), sae.encode(X))
    sae_lens = pytest.importorskip("sae_lens")
    theirs = sae_lens.SAE.load_from_disk(tmp_path)
    with torch.no_grad():
        assert torch.equal(theirs.encode(X), sae.encode(X))
        assert torch.allclose(theirs.decode(sae.encode(X)), sae.decode(sae.encode(X)))


@pytest.mark.parametrize("layout", ["grokmath", "tlens"])
def test_model_weights_as_safetensors(tmp_path, layout):
    model = Transformer(ModelConfig(n_layers=2, d_model=16, n_heads=2, d_vocab=9, n_ctx=5, normalization="LN"))
    path = save_model_safetensors(model, tmp_path / "model.safetensors", layout)
    tokens = torch.randint(0, 9, (2, 5), generator=torch.Generator().manual_seed(0))
    assert torch.equal(load_model_safetensors(path)(tokens), model(tokens))
    if layout == "tlens":
        tl = pytest.importorskip("transformer_lens")
        from safetensors.torch import load_file
        hooked = tl.HookedTransformer(tl.HookedTransformerConfig(**to_tlens_config(model)))
        hooked.load_state_dict(load_file(path), strict=False)  # its mask buffers are rebuilt, not saved
        assert set(load_file(path)) == {k for k in to_tlens_state_dict(model) if not k.endswith(("mask", "IGNORE"))}
        torch.testing.assert_close(hooked(tokens), model(tokens), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="cannot read"):
        (tmp_path / "bad.safetensors").write_bytes(b"not a file")
        load_model_safetensors(tmp_path / "bad.safetensors")
