"""Progress measures: the Fourier bases, the exact logit decomposition, the Gini coefficient, phase
detection, and a small prime that groks within a bounded number of steps, measured from its checkpoints."""
import itertools
import json
import math
import random

import numpy as np
import pandas as pd
import pytest
import torch

from grokmath.analysis import progress as pm
from grokmath.analysis.fourier import fourier_2d, modular_fourier_basis
from grokmath.store.checkpoint import load_run
from grokmath.cli import main_guard

from script_helpers import load_script

# ---- the trig directions ------------------------------------------------------------------------------

@pytest.mark.parametrize("p", [7, 23])
def test_trig_directions_are_orthonormal_and_orthogonal_to_the_constant(p):
    freqs = list(range(1, (p - 1) // 2 + 1))
    d = pm.trig_directions(p, freqs)  # [2K, p*p]
    assert torch.allclose(d @ d.T, torch.eye(2 * len(freqs), dtype=torch.float64), atol=1e-12)
    assert d.sum(1).abs().max() < 1e-12
    a, b = 2, 5  # the row of (a, b) is a*p + b; its value is cos(w(a + b)) * sqrt(2)/p
    assert d[0, a * p + b].item() == pytest.approx(math.cos(2 * math.pi * (a + b) / p) * math.sqrt(2) / p)
    with pytest.raises(ValueError, match="not in 1.."):
        pm.trig_directions(p, [p])


# ---- the logit decomposition --------------------------------------------------------------------

def _features(p, freqs, sign=1):
    """cos/sin(w_k (a + sign*b)) over all pairs, by plain numpy loops over a and b: [p*p, 2K]."""
    cols = []
    for k in freqs:
        w = 2 * math.pi * k / p
        cols.append([math.cos(w * (a + sign * b)) for a in range(p) for b in range(p)])
        cols.append([math.sin(w * (a + sign * b)) for a in range(p) for b in range(p)])
    return np.array(cols).T


@pytest.mark.parametrize("sign", [1, -1])
def test_restricted_plus_excluded_decompose_the_logits_exactly(sign):
    p, freqs = 13, [2, 5]
    logits = torch.randn(p * p, p, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    parts = pm.decompose_logits(logits, p, freqs, sign)
    # exact: const + key + rest is the logits, and restricted + excluded = logits + const
    assert torch.allclose(parts.const + parts.key + parts.rest, logits, atol=1e-12)
    assert torch.allclose(parts.restricted + parts.excluded, logits + parts.const, atol=1e-12)
    assert torch.allclose(parts.const, logits.mean(0, keepdim=True).expand_as(logits))
    # independent truth: the key part is the least-squares fit of each output's (centred) logits
    # on the trig features of the key frequencies
    X = _features(p, freqs, sign)
    centred = (logits - logits.mean(0)).numpy()
    coef, *_ = np.linalg.lstsq(X, centred, rcond=None)
    assert np.allclose(parts.key.numpy(), X @ coef, atol=1e-10)
    # rest has no component left on the key directions and no mean
    assert np.abs(X.T @ parts.rest.numpy()).max() < 1e-9
    assert parts.rest.mean(0).abs().max() < 1e-12


def test_logits_made_of_key_frequencies_are_all_restricted():
    p, freqs = 11, [3, 4]
    a, b, c = np.meshgrid(np.arange(p), np.arange(p), np.arange(p), indexing="ij")
    grid = 1.5 + sum((k + 1) * np.cos(2 * np.pi * k * (a + b - c) / p) for k in freqs)  # [a, b, c]
    logits = torch.tensor(grid.reshape(p * p, p))
    parts = pm.decompose_logits(logits, p, freqs)
    assert torch.allclose(parts.restricted, logits, atol=1e-12)
    assert torch.allclose(parts.excluded, parts.const, atol=1e-12)
    assert parts.const.sub(1.5).abs().max() < 1e-12
    # with other frequencies as key, nothing of it is kept
    assert pm.decompose_logits(logits, p, [1, 2]).key.abs().max() < 1e-12


def test_decompose_refuses_the_wrong_shape():
    with pytest.raises(ValueError, match="all p\\*p"):
        pm.decompose_logits(torch.zeros(10, 5), 5, [1])


# ---- Gini ---------------------------------------------------------------------------------------

def _gini_pairs(x):
    """The normalised Gini by its definition, in plain Python: sum |xi - xj| / (2 (n-1) sum x)."""
    n = len(x)
    return sum(abs(u - v) for u, v in itertools.product(x, x)) / (2 * (n - 1) * sum(x))


def test_gini_of_one_hot_is_one_and_of_flat_is_zero():
    for n in (2, 5, 57):
        for hot in (0, n - 1):
            assert pm.gini(np.eye(n)[hot] * 3.7) == pytest.approx(1.0, abs=1e-15)
        assert pm.gini(np.full(n, 0.3)) == pytest.approx(0.0, abs=1e-15)
    assert pm.gini(np.zeros(4)) == 0.0


def test_gini_matches_its_definition():
    rng = random.Random(0)
    for n in (2, 3, 10, 40):
        x = [rng.random() ** 3 for _ in range(n)]
        assert pm.gini(x) == pytest.approx(_gini_pairs(x), rel=1e-12)
        assert pm.gini(np.array(x) * 7) == pytest.approx(_gini_pairs(x), rel=1e-12)  # scale-free


def test_gini_refuses_negative_values():
    with pytest.raises(ValueError, match="non-negative"):
        pm.gini([1.0, -0.5, 2.0])


# ---- neurons and phases -------------------------------------------------------------------------

def test_neuron_frequencies_find_the_frequency_of_synthetic_neurons():
    p = 17
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    w = lambda k: 2 * np.pi * k / p  # noqa: E731
    neurons = [np.cos(w(3) * a) * np.cos(w(3) * b),  # one frequency exactly
               np.maximum(0, np.cos(w(5) * (a + b)) + 0.2),  # a ReLU of cos(w(a+b)): mostly frequency 5
               np.cos(w(7) * a) + 0.3 * np.sin(w(2) * b)]  # 7 dominates 2
    grid = torch.tensor(np.stack(neurons, -1))  # [a, b, neuron]
    freq, share = pm.neuron_frequencies(fourier_2d(grid, modular_fourier_basis(p)[0]))
    assert freq.tolist() == [3, 5, 7]
    assert share[0].item() == pytest.approx(1.0)
    assert 0.5 < share[1].item() < 1.0
    assert share[2].item() == pytest.approx(1 / (1 + 0.09))


def test_detect_phases_on_a_hand_made_table():
    table = pd.DataFrame({
        "step": [0, 100, 200, 300, 400, 500, 600, 700],
        "train_loss": [4.0, 0.5, 0.005, 0.001, 1e-4, 1e-5, 1e-6, 1e-7],
        "test_loss": [4.0, 6.0, 8.0, 7.0, 5.0, 1.0, 0.005, 0.001],
        "excluded_loss": [4.0, 0.4, 0.004, 0.002, 0.1, 2.0, 5.0, 6.0],
    })
    # train < 0.01 from 200; excluded loss is lowest at 300 (test loss 7 there), test loss is still
    # >= 3.5 at 400 and < 0.01 from 600
    assert pm.detect_phases(table) == {"memorisation_end": 300, "circuit_formation_end": 400, "cleanup_end": 600}
    # without the excluded loss, memorisation ends when the train loss is first < 0.01 (test loss 8)
    assert pm.detect_phases(table.drop(columns="excluded_loss")) == {
        "memorisation_end": 200, "circuit_formation_end": 400, "cleanup_end": 600}
    assert pm.detect_phases(table, cleanup_fraction=0.1)["circuit_formation_end"] == 500
    assert pm.detect_phases(table, test_threshold=1e-9)["cleanup_end"] is None
    assert pm.detect_phases(table, train_threshold=1e-9)["memorisation_end"] is None


# ---- a small prime that groks, measured from its checkpoints -------------------------------------

# p=23 with a fast set-up, the paper's split of seed 0: train accuracy 100% at step 60, test
# accuracy > 95% at 230, test loss < 0.01 at 270
GROK = ["--p", "23", "--frac-train", "0.7", "--d-model", "64", "--d-mlp", "256", "--lr", "5e-3",
        "--weight-decay", "2", "--steps", "600", "--checkpoint-every", "50", "--test-every", "10", "--seed", "0"]



@pytest.fixture(scope="module")
def grokked_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    load_script("train_modular").main(GROK + ["--out", str(out), "--run-name", "p23", "--device", "cpu", "--no-progress",
                               "--no-plots"])
    return out / "p23"


def test_small_prime_groks_within_a_bounded_number_of_steps(grokked_run):
    metrics = pd.read_csv(grokked_run / "metrics.csv")
    tested = metrics.dropna(subset=["test_acc"])
    assert tested["train_acc"].iloc[-1] == 1.0
    assert tested["test_acc"].iloc[-1] > 0.95
    assert (tested["test_acc"] > 0.95).any() and tested.loc[tested["test_acc"] > 0.95, "step"].iloc[0] < 600
    # memorised long before it generalised: the grokking gap
    first_train = tested.loc[tested["train_acc"] == 1.0, "step"].iloc[0]
    first_test = tested.loc[tested["test_acc"] > 0.95, "step"].iloc[0]
    assert first_test > 3 * first_train


def test_progress_measures_of_the_grokked_run(grokked_run):
    result = pm.write_progress(grokked_run, progress=False)
    table, keys, phases = result["table"], result["key_freqs"], result["phases"]
    # the table's losses are the training loop's own numbers at those steps (a checkpoint at step s
    # holds the weights that step s's row of metrics.csv was computed with)
    metrics = pd.read_csv(grokked_run / "metrics.csv").set_index("step")
    inside = table[table["step"] < len(metrics)]
    assert np.allclose(inside["train_loss"], metrics.loc[inside["step"], "train_loss"], rtol=1e-4, atol=1e-7)
    tested = inside[inside["step"] % 10 == 0]
    assert np.allclose(tested["test_loss"], metrics.loc[tested["step"], "test_loss"], rtol=1e-4, atol=1e-7)
    assert np.allclose(tested["test_acc"], metrics.loc[tested["step"], "test_acc"])
    # key frequencies from the neurons agree with the embedding: they are its largest Fourier norms
    run = load_run(grokked_run)
    norms = pm.per_frequency(pm.fourier_component_norms(run.model, run.task)["W_E"])
    assert 1 <= len(keys) <= 6
    assert sorted(keys) == sorted((norms.argsort(descending=True)[:len(keys)] + 1).tolist())
    # the grokked model: restricted loss low, excluded loss high, weights sparse in the Fourier basis
    last, first = table.iloc[-1], table.iloc[0]
    assert last["restricted_loss"] < 0.1 < 2.0 < last["excluded_loss"]
    # ARENA's excluded loss, one key frequency removed at a time: a column per key frequency
    assert {f"excluded_loss_k{k}" for k in keys} <= set(table.columns)
    assert all(np.isfinite(last[f"excluded_loss_k{k}"]) for k in keys)
    assert last["gini_W_E"] > first["gini_W_E"] + 0.1 and last["gini_W_L"] > first["gini_W_L"] + 0.2
    assert last["sum_sq_weights"] < table["sum_sq_weights"].max()
    assert phases["memorisation_end"] < phases["cleanup_end"]
    assert phases["memorisation_end"] <= phases["circuit_formation_end"] <= phases["cleanup_end"]
    # the files: a CSV pandas loads in one call, the JSON, the figures
    assert pd.read_csv(grokked_run / "progress_measures.csv").shape == table.shape
    saved = json.loads((grokked_run / "progress_measures.json").read_text())
    assert saved["key_freqs"] == keys and saved["phases"] == phases
    for name in ("progress_measures.png", "fourier.png"):
        assert (grokked_run / name).stat().st_size > 10_000


def _script_error(capsys, argv) -> str:
    """Run scripts/progress_measures.py's main through the error edge; return its one-line stderr."""
    with pytest.raises(SystemExit) as stop:
        main_guard(load_script("progress_measures").main, argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_progress_script_reports_a_bad_run_folder_in_one_line(tmp_path, capsys):
    assert "does not exist" in _script_error(capsys, [str(tmp_path / "nope")])


def test_progress_script_refuses_an_out_of_range_key_frequency(grokked_run, capsys):
    assert "frequency 40" in _script_error(capsys, [str(grokked_run), "--key-freqs", "2,40", "--no-progress"])
