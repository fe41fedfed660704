"""FactoredMatrix against the dense product A @ B computed directly (and torch.linalg on it)."""
import pytest
import torch

from grokmath.model.factored_matrix import FactoredMatrix
from grokmath.model.utils import get_corner

close = torch.testing.assert_close


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def factors(lead=(), l=5, m=2, r=7, seed=0):
    return randn(*lead, l, m, seed=seed), randn(*lead, m, r, seed=seed + 1)


@pytest.mark.parametrize("lead", [(), (3,), (2, 3)])
def test_product_shape_and_transpose(lead):
    A, B = factors(lead)
    fm = FactoredMatrix(A, B)
    close(fm.AB, A @ B)
    assert fm.shape == (*lead, 5, 7) and fm.ndim == len(lead) + 2
    assert (fm.ldim, fm.mdim, fm.rdim) == (5, 2, 7)
    close(fm.T.AB, (A @ B).transpose(-2, -1))
    assert fm.pair[0] is fm.A and fm.pair[1] is fm.B


def test_leading_dimensions_broadcast():
    A, B = randn(3, 1, 4, 2), randn(5, 2, 6, seed=1)
    fm = FactoredMatrix(A, B)
    assert fm.shape == (3, 5, 4, 6) and fm.A.shape == (3, 5, 4, 2) and fm.B.shape == (3, 5, 2, 6)
    close(fm.AB, A @ B)


def test_BA_needs_a_square_matrix():
    A, B = factors(l=6, m=3, r=6)
    close(FactoredMatrix(A, B).BA, B @ A)
    for error in (ValueError, AssertionError):  # TransformerLens asserts here
        with pytest.raises(error, match="square"):
            FactoredMatrix(*factors()).BA
    with pytest.raises(ValueError, match="A .* and B"):
        FactoredMatrix(randn(4, 3), randn(2, 5))


@pytest.mark.parametrize("lm_r", [(5, 2, 7), (4, 6, 3), (6, 3, 6), (3, 8, 3)])
@pytest.mark.parametrize("lead", [(), (2, 3)])
def test_svd_is_that_of_the_dense_product(lm_r, lead):
    l, m, r = lm_r
    A, B = factors(lead, l, m, r, seed=l)
    fm = FactoredMatrix(A, B)
    U, S, V = fm.svd()
    k = min(l, m, r)
    assert U.shape == (*lead, l, k) and S.shape == (*lead, k) and V.shape == (*lead, r, k)
    close(U @ torch.diag_embed(S) @ V.transpose(-2, -1), A @ B)
    eye = torch.eye(k, dtype=torch.float64).expand(*lead, k, k)
    close(U.transpose(-2, -1) @ U, eye)
    close(V.transpose(-2, -1) @ V, eye)
    close(S, torch.linalg.svdvals(A @ B)[..., :k])
    assert fm.U is U and fm.S is S and fm.V is V and fm.Vh is V  # TransformerLens's Vh is V
    close(fm.norm(), torch.linalg.matrix_norm(A @ B))


def test_eigenvalues_are_the_nonzero_eigenvalues_of_the_product():
    A, B = factors((2,), l=6, m=3, r=6, seed=3)
    ours = FactoredMatrix(A, B).eigenvalues  # [2, 3] complex
    dense = torch.linalg.eigvals(A @ B)  # [2, 6]: the same three and three zeros
    assert ours.shape == (2, 3) and ours.is_complex()
    for b in range(2):
        distance = (ours[b][:, None] - dense[b][None, :]).abs()
        assert distance.min(1).values.max() < 1e-8  # every one of ours is an eigenvalue of A @ B
        big = dense[b][dense[b].abs() > 1e-6]
        assert len(big) == 3 and (big[:, None] - ours[b][None]).abs().min(1).values.max() < 1e-8
    with pytest.raises(AssertionError):
        FactoredMatrix(*factors()).eigenvalues


def test_matmul_with_tensors_and_factored_matrices():
    A, B = factors((3,), l=5, m=2, r=7)
    fm, dense = FactoredMatrix(A, B), A @ B
    wide, narrow = randn(7, 9, seed=5), randn(7, 1, seed=6)
    for other in (wide, narrow):  # rdim > mdim keeps the factor; both must give the product
        out = fm @ other
        assert isinstance(out, FactoredMatrix)
        close(out.AB, dense @ other)
    left = randn(4, 5, seed=7)
    out = left @ fm
    assert isinstance(out, FactoredMatrix)
    close(out.AB, left @ dense)
    vector_r, vector_l = randn(7, seed=8), randn(5, seed=9)
    close(fm @ vector_r, dense @ vector_r)
    close(vector_l @ fm, vector_l @ dense)
    other = FactoredMatrix(*factors((3,), l=7, m=3, r=4, seed=10))
    close((fm @ other).AB, dense @ other.AB)
    close((fm * 2.5).AB, 2.5 * dense)
    close((3 * fm).AB, 3 * dense)
    with pytest.raises(ValueError):
        fm @ randn(6, 2)


def test_indexing_matches_the_dense_product():
    A, B = factors((2, 3), l=5, m=2, r=7)
    fm, dense = FactoredMatrix(A, B), A @ B
    close(fm[1, 2].AB, dense[1, 2])  # [layer, head], as model.QK[layer, head]
    close(fm[:, 1].AB, dense[:, 1])
    close(fm[1].AB, dense[1])
    # an int in the matrix dimensions keeps its dimension (TransformerLens's rule)
    close(fm[1, 2, 3].AB, dense[1, 2, 3:4])
    close(fm[1, 2, -1, -1].AB, dense[1, 2, -1:, -1:])
    close(fm[0, 0, 1:4, 2:6].AB, dense[0, 0, 1:4, 2:6])
    close(fm[..., 1:4, 2:6].AB, dense[..., 1:4, 2:6])
    close(fm[..., 2].AB, dense[..., 2:3])
    close(fm[..., [0, 3], :].AB, dense[..., [0, 3], :])
    close(fm[:, :, :, torch.tensor([1, 4])].AB, dense[:, :, :, [1, 4]])
    close(fm[None, ..., 1].AB, dense[None, ..., 1:2])
    mask = torch.tensor([True, False])
    close(fm[mask].AB, dense[mask])
    assert fm[1, 2].mdim == 2
    with pytest.raises(ValueError, match="too long"):
        fm[0, 0, 0, 0, 0]
    with pytest.raises(IndexError):
        fm[..., ...]


def test_even_split_collapses_corner_and_unsqueeze():
    A, B = factors((2,), l=6, m=3, r=5)
    fm, dense = FactoredMatrix(A, B), A @ B
    even = fm.make_even()
    close(even.AB, dense)
    # both halves carry the square roots of the singular values
    close(torch.linalg.svdvals(even.A), fm.S.sqrt())
    close(torch.linalg.svdvals(even.B), fm.S.sqrt())
    close(fm.U @ fm.collapse_l(), dense)
    close(fm.collapse_r() @ fm.V.transpose(-2, -1), dense)
    assert fm.collapse_l().shape == (2, 3, 5) and fm.collapse_r().shape == (2, 6, 3)
    close(fm.get_corner(2), dense[:2, :2, :2])
    close(get_corner(fm, 2), dense[:2, :2, :2])
    close(fm.unsqueeze(0).AB, dense[None])
    assert "FactoredMatrix" in repr(fm) and "(2, 6, 5)" in repr(fm)
