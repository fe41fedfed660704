"""Fourier bases: orthonormal, the seed's vectors, one-frequency signals land on their own basis
vectors; the model projections have the right shapes and agree with direct computation."""
import math

import pytest
import torch

from grokmath.analysis import fourier
from grokmath.tasks import make_task

from analysis_helpers import tiny_model


@pytest.mark.parametrize("make", [lambda: fourier.digit_fourier_basis(10), lambda: fourier.digit_fourier_basis(6),
                                  lambda: fourier.modular_fourier_basis(113), lambda: fourier.modular_fourier_basis(7)])
def test_bases_are_orthonormal(make):
    basis, names = make()
    n = basis.shape[1]
    assert basis.shape == (n, n) and len(names) == n and len(set(names)) == n
    torch.testing.assert_close(basis @ basis.T, torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-12)


def test_digit_basis_is_the_notebooks():
    basis, names = fourier.digit_fourier_basis()
    assert names == ["const", "cos 1", "sin 1", "cos 2", "sin 2", "cos 3", "sin 3", "cos 4", "sin 4", "+-1"]
    d = torch.arange(10, dtype=torch.float64)
    torch.testing.assert_close(basis[0], torch.full((10,), 10 ** -0.5, dtype=torch.float64))
    torch.testing.assert_close(basis[-1], torch.tensor([1.0, -1.0] * 5, dtype=torch.float64) / 10 ** 0.5)
    cos3 = torch.cos(2 * math.pi * 3 * d / 10)
    torch.testing.assert_close(basis[names.index("cos 3")], cos3 / cos3.norm())


@pytest.mark.parametrize("n,make", [(10, fourier.digit_fourier_basis), (113, fourier.modular_fourier_basis)])
def test_a_one_frequency_signal_projects_onto_exactly_its_basis_vectors(n, make):
    basis, names = make(n)
    k = 3
    x = torch.arange(n, dtype=torch.float64)
    signal = 2.0 * torch.cos(2 * math.pi * k * x / n + 0.7)  # a phase mixes cos k and sin k only
    coefficients = fourier.project(signal, basis)
    own = [names.index(f"cos {k}"), names.index(f"sin {k}")]
    others = [i for i in range(n) if i not in own]
    assert coefficients[others].abs().max() < 1e-10
    assert coefficients[own].norm().item() == pytest.approx(signal.norm().item())
    norms, keys = fourier.frequency_norms(coefficients.abs(), names)
    assert keys[norms.argmax()] == str(k)


def test_fourier_2d_of_an_outer_product():
    basis, names = fourier.modular_fourier_basis(7)
    a, b = basis[names.index("cos 2")], basis[names.index("sin 1")]
    values = torch.einsum("x,y,z->xyz", a, b, torch.ones(3, dtype=torch.float64))
    coefficients = fourier.fourier_2d(values, basis)  # [7, 7, 3]
    expected = torch.zeros(7, 7, 3, dtype=torch.float64)
    expected[names.index("cos 2"), names.index("sin 1")] = 1.0
    torch.testing.assert_close(coefficients, expected, rtol=0, atol=1e-12)


def test_model_projections(tmp_path):
    task = make_task("modular", p=7)
    model = tiny_model(task, n_layers=1)
    coefficients, names = fourier.embedding_fourier(model, task)
    assert coefficients.shape == (7, 16)
    basis, _ = fourier.modular_fourier_basis(7)
    torch.testing.assert_close(basis.T @ coefficients, model.embed.W_E.detach()[:7].double())  # invertible
    unembed, _ = fourier.unembedding_fourier(model, task)
    assert unembed.shape == (7, 16)
    neurons, _ = fourier.neuron_fourier(model, task, layer=0)
    assert neurons.shape == (7, 7, model.cfg.d_mlp)
    logits, _ = fourier.logits_fourier(model, task)
    with torch.no_grad():
        direct = model(task.all_pairs().tokens)[:, 2].reshape(7, 7, 8)  # d_vocab_out p + 1: the paper's '=' logit too
    torch.testing.assert_close(logits, fourier.fourier_2d(direct, basis))
    assert fourier.plot_norms(coefficients, names, tmp_path / "e.png").stat().st_size > 0
    assert fourier.plot_2d(neurons, names, tmp_path / "n.png").stat().st_size > 0


def test_addition_operand_grid_fixes_the_place_digits():
    task = make_task("addition", n_digits=3)
    model = tiny_model(task, n_layers=1)
    grid = fourier.input_grid(model, task, "hook_embed", position=5, place=1, n_samples=4)  # y2 y1 y0 at 4 5 6
    assert grid.shape == (10, 10, 16)
    # position 5 holds y's digit of place 1, so the embedding there depends on b only
    torch.testing.assert_close(grid[3, 7], model.embed.W_E.detach()[7])
    torch.testing.assert_close(grid[0, 7], grid[9, 7])
    coefficients, names = fourier.neuron_fourier(model, task, layer=0, place=0, n_samples=4)
    assert coefficients.shape == (10, 10, model.cfg.d_mlp) and names[-1] == "+-1"
