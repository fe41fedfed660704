"""A matrix kept as the product of its two factors, as TransformerLens's `FactoredMatrix`.

`FactoredMatrix(A, B)` stands for A @ B with A [..., ldim, mdim] and B [..., mdim, rdim]; the
leading dimensions broadcast (the model's `QK` and `OV` are [n_layers, n_heads, d_model,
d_model] with mdim = d_head). The product is formed only when asked (`AB`); the SVD, norm and
eigenvalues come from the factors. Conventions follow TransformerLens: `svd()` returns
(U, S, V) with A @ B = U @ diag(S) @ V.T, U [..., ldim, k], S [..., k], V [..., rdim, k],
k = min(ldim, mdim, rdim) (its third element is also available as `.V` and, under
TransformerLens's old name, `.Vh`, which is V and not V transposed); indexing picks the leading
dimensions, then the rows of A and the columns of B (an int there keeps its dimension, as in
TransformerLens); `@` with a vector returns a tensor, with a matrix or a FactoredMatrix a
FactoredMatrix. Shape errors are `ShapeError`, both a ValueError and an AssertionError (TransformerLens
asserts), so code catching either works; factors and operands may be TransformerLens's TensorLike
duck types (ndim, shape, broadcast_to, @) where TransformerLens accepts them.
"""
from __future__ import annotations

import numpy as np
import torch

from .utils import ShapeError


class FactoredMatrix:
    def __init__(self, A: torch.Tensor, B: torch.Tensor):
        if A.ndim < 2 or B.ndim < 2 or A.shape[-1] != B.shape[-2]:
            raise ShapeError(f"FactoredMatrix needs A [..., ldim, mdim] and B [..., mdim, rdim]; "
                             f"got A {tuple(A.shape)} and B {tuple(B.shape)}")
        lead = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
        self.ldim, self.mdim, self.rdim = A.shape[-2], A.shape[-1], B.shape[-1]
        self.A = A.broadcast_to(lead + A.shape[-2:])  # [..., ldim, mdim]
        self.B = B.broadcast_to(lead + B.shape[-2:])  # [..., mdim, rdim]
        self.shape = lead + (self.ldim, self.rdim)
        self.has_leading_dims = len(lead) > 0
        self._svd = None

    # ---- products ----

    @property
    def AB(self) -> torch.Tensor:
        """The full matrix [..., ldim, rdim]."""
        return self.A @ self.B

    @property
    def BA(self) -> torch.Tensor:
        """The reverse product [..., mdim, mdim]; needs ldim == rdim."""
        if self.ldim != self.rdim:
            raise ShapeError(f"BA needs a square FactoredMatrix (ldim == rdim), shape is {tuple(self.shape)}")
        return self.B @ self.A

    @property
    def T(self) -> "FactoredMatrix":
        return FactoredMatrix(self.B.transpose(-2, -1), self.A.transpose(-2, -1))

    def __matmul__(self, other):
        if isinstance(other, FactoredMatrix):
            return (self @ other.A) @ other.B
        other = _tensor_like(other)
        if other.ndim < 2:  # a vector: the result is a tensor [..., ldim]
            return (self.A @ (self.B @ other.unsqueeze(-1))).squeeze(-1)
        if other.shape[-2] != self.rdim:
            raise ShapeError(f"cannot multiply FactoredMatrix {tuple(self.shape)} by {tuple(other.shape)}")
        # keep the narrower inner dimension, as TransformerLens does
        if self.rdim > self.mdim:
            return FactoredMatrix(self.A, self.B @ other)
        return FactoredMatrix(self.AB, other)

    def __rmatmul__(self, other):
        if isinstance(other, FactoredMatrix):
            return other.A @ (other.B @ self)
        other = _tensor_like(other)
        if other.shape[-1] != self.ldim:
            raise ShapeError(f"cannot multiply {tuple(other.shape)} by FactoredMatrix {tuple(self.shape)}")
        if other.ndim < 2:  # a vector: the result is a tensor [..., rdim]
            return ((other.unsqueeze(-2) @ self.A) @ self.B).squeeze(-2)
        if self.ldim > self.mdim:
            return FactoredMatrix(other @ self.A, self.B)
        return FactoredMatrix(other, self.AB)

    def __mul__(self, scalar) -> "FactoredMatrix":
        if isinstance(scalar, torch.Tensor) and scalar.numel() != 1:
            raise ShapeError(f"FactoredMatrix * needs a scalar, got shape {tuple(scalar.shape)}: use @ for products")
        return FactoredMatrix(self.A * scalar, self.B)

    __rmul__ = __mul__

    # ---- decompositions ----

    def svd(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(U, S, V) with A @ B = U @ diag(S) @ V.T, from QR of each factor (A @ B is never formed)."""
        if self._svd is None:
            Qa, Ra = torch.linalg.qr(self.A)  # Qa [..., ldim, ka], Ra [..., ka, mdim]
            Qb, Rb = torch.linalg.qr(self.B.transpose(-2, -1))  # Qb [..., rdim, kb], Rb [..., kb, mdim]
            u, s, vh = torch.linalg.svd(Ra @ Rb.transpose(-2, -1), full_matrices=False)  # [..., ka, kb]
            self._svd = (Qa @ u, s, Qb @ vh.transpose(-2, -1))
        return self._svd

    @property
    def U(self) -> torch.Tensor:
        return self.svd()[0]

    @property
    def S(self) -> torch.Tensor:
        return self.svd()[1]

    @property
    def V(self) -> torch.Tensor:
        return self.svd()[2]

    @property
    def Vh(self) -> torch.Tensor:
        """TransformerLens's older name for V (it is V, [..., rdim, k], not V transposed)."""
        return self.svd()[2]

    @property
    def eigenvalues(self) -> torch.Tensor:
        """Eigenvalues of B @ A [..., mdim] (complex): those of A @ B less its trailing zeros."""
        BA = self.BA  # raises unless ldim == rdim
        if BA.dtype in (torch.float16, torch.bfloat16):
            BA = BA.float()
        return torch.linalg.eigvals(BA)

    def norm(self) -> torch.Tensor:
        """Frobenius norm [...]: the root of the sum of squared singular values."""
        return self.S.pow(2).sum(-1).sqrt()

    def make_even(self) -> "FactoredMatrix":
        """The same matrix as (U sqrt(S)) @ (sqrt(S) V.T): both halves carry sqrt of the singular values."""
        root = self.S.sqrt()
        return FactoredMatrix(self.U * root[..., None, :], root[..., :, None] * self.V.transpose(-2, -1))

    def collapse_l(self) -> torch.Tensor:
        """S V.T [..., k, rdim]: the matrix with its left orthogonal factor U removed."""
        return self.S[..., :, None] * self.V.transpose(-2, -1)

    def collapse_r(self) -> torch.Tensor:
        """U S [..., ldim, k]: the matrix with its right orthogonal factor removed."""
        return self.U * self.S[..., None, :]

    # ---- shape and indexing ----

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.A, self.B

    def unsqueeze(self, k: int) -> "FactoredMatrix":
        return FactoredMatrix(self.A.unsqueeze(k), self.B.unsqueeze(k))

    def get_corner(self, k: int = 3) -> torch.Tensor:
        """The top-left k x k corner of the product (and the first k of each leading dimension)."""
        corner = self.A[..., :k, :] @ self.B[..., :, :k]
        return corner[tuple(slice(k) for _ in range(corner.ndim))]

    def __getitem__(self, idx) -> "FactoredMatrix":
        """fm[layer, head] picks leading dimensions; a further index picks rows of A, then columns of B."""
        lead, row, col = self._split_index(idx if isinstance(idx, tuple) else (idx,))
        return FactoredMatrix(self.A[lead + (row, slice(None))], self.B[lead + (slice(None), col)])

    def _split_index(self, idx: tuple):
        """(leading index, row index, column index), the row and column ints turned into length-1 slices."""
        n_lead = self.ndim - 2
        if sum(i is Ellipsis for i in idx) > 1:
            raise IndexError("a FactoredMatrix index may hold at most one Ellipsis (...)")
        used = sum(_dims_consumed(i) for i in idx)
        if used > self.ndim:
            raise ShapeError(f"{idx!r} is too long an index for a FactoredMatrix with shape {tuple(self.shape)}")
        parts = []
        for i in idx:  # expand the Ellipsis into the full slices it stands for
            parts.extend([slice(None)] * (self.ndim - used) if i is Ellipsis else [_as_index(i)])
        if not any(i is Ellipsis for i in idx):
            parts.extend([slice(None)] * (self.ndim - used))
        # walk until the leading dimensions are consumed; what follows indexes rows, then columns
        lead, consumed, k = [], 0, 0
        while consumed < n_lead:
            lead.append(parts[k])
            consumed += _dims_consumed(parts[k])
            k += 1
        while k < len(parts) and parts[k] is None:  # new axes just before the matrix go with the leading dims
            lead.append(parts[k])
            k += 1
        if consumed > n_lead:
            raise IndexError(f"index {idx!r} reaches into the matrix dimensions with a mask; index them separately")
        row, col = parts[k], parts[k + 1]
        return tuple(lead), _keep_dim(row), _keep_dim(col)

    def __repr__(self):
        return f"FactoredMatrix(shape={tuple(self.shape)}, hidden dim={self.mdim})"


def _tensor_like(x):
    """x as it is when it behaves as a tensor (TransformerLens's TensorLike: ndim, shape, @), else a tensor."""
    if isinstance(x, torch.Tensor) or (not isinstance(x, np.ndarray) and hasattr(x, "ndim") and hasattr(x, "__matmul__")):
        return x
    return torch.as_tensor(x)


def _dims_consumed(i) -> int:
    """How many dimensions an index entry uses up (a boolean mask uses one per mask dimension)."""
    if i is None or i is Ellipsis:
        return 0
    if isinstance(i, (torch.Tensor, np.ndarray, list, tuple)):
        array = np.asarray(i.detach().cpu() if isinstance(i, torch.Tensor) else i)
        if array.dtype == bool:
            return max(array.ndim, 1)
    return 1


def _as_index(i):
    """Lists, tuples and arrays of indices or booleans become tensors (torch reads them as one axis each)."""
    if isinstance(i, (list, tuple, np.ndarray)):
        return torch.as_tensor(np.asarray(i))
    return i


def _keep_dim(i):
    """An int row / column index becomes a length-1 slice so the matrix stays 2-D (TransformerLens's rule)."""
    if isinstance(i, (int, np.integer)) and not isinstance(i, bool):
        i = int(i)
        return slice(i, i + 1) if i != -1 else slice(-1, None)
    if isinstance(i, torch.Tensor) and i.ndim == 0 and not i.is_floating_point() and i.dtype != torch.bool:
        return _keep_dim(int(i))
    return i
