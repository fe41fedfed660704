"""Modular arithmetic mod a prime p, as the progress-measures (grokking) paper's code.

Sequences `[a, b, =]` with `=` = p (d_vocab p+1, n_ctx 3); the label (a op b) mod p is scored at
the '=' position. The output layout is the paper's: d_vocab_out = p + 1 (the unembedding has an
'=' column too, trained as in the paper's `full_loss` over all p + 1 logits), so the literature's
`logits[:, -1, :-1]` (the p answers) and `W_U[:, :-1]` run as written. Ops: add (a+b), subtract
(a-b), x2xyy2 (a^2 + a*b + b^2) and rand (a fixed table of uniform answers, drawn from
`rand_seed`).

`split` is the paper's exact split (`gen_train_test` in the progress-measures code, and ARENA's):
the pairs listed in (a, b) order, shuffled by Python's `random.seed(seed); random.shuffle(pairs)`,
the first int(frac_train * p*p) the train set and the rest the test set; `seed` is the training
seed (the generator's `initial_seed()`). `paper_split(seed)` gives the same as index lists,
`all_pairs` every pair in a-major order (row a*p + b) for analysis; `sample` draws pairs
uniformly (infinite data). Token names are '0'..'p-1' and '='; `decode` writes them
space-separated.
"""
from __future__ import annotations

import numbers
import random

import torch

from .base import Batch, Task, check_generator, check_int, decode_tokens, encode_strings
from .fourier_bases import modular_fourier_basis

OPS = ("add", "subtract", "x2xyy2", "rand")
MAX_P = 5000  # all_pairs/split hold p*p rows


def is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n ** 0.5) + 1))


class ModularTask(Task):
    name = "modular"

    def __init__(self, p: int = 113, op: str = "add", frac_train: float = 0.3, rand_seed: int = 0):
        self.p = check_int("p", p, 2, MAX_P)
        if not is_prime(self.p):
            raise ValueError(f"p must be prime, got {p}; e.g. p=113")
        if op not in OPS:
            raise ValueError(f"op must be one of {', '.join(OPS)}, got {op!r}")
        if isinstance(frac_train, bool) or not isinstance(frac_train, numbers.Real) or not 0 < frac_train < 1:
            raise ValueError(f"frac_train must be a fraction between 0 and 1, got {frac_train!r}")
        self.op, self.frac_train = op, float(frac_train)
        if not 0 < int(self.frac_train * self.p * self.p) < self.p * self.p:
            raise ValueError(f"frac_train {frac_train} leaves no train or no test pair for p={self.p} "
                             f"({self.p * self.p} pairs): use a fraction between {1 / self.p ** 2:.3g} and "
                             f"{1 - 1 / self.p ** 2:.3g}")
        self.rand_seed = check_int("rand_seed", rand_seed, 0)
        self.d_vocab, self.d_vocab_out, self.n_ctx = self.p + 1, self.p + 1, 3  # the paper's '=' logit
        self.pred_pos = torch.tensor([2])
        self.pred_labels = ["answer"]
        self.token_names = [str(i) for i in range(self.p)] + ["="]
        self.table = None
        if op == "rand":
            table_generator = torch.Generator().manual_seed(self.rand_seed)
            self.table = torch.randint(0, self.p, (self.p, self.p), generator=table_generator)  # [a, b]

    has_progress_measures = True

    def title(self) -> str:
        return f"modular {self.op} mod {self.p}"

    def fourier_basis(self) -> tuple[torch.Tensor, list[str]]:
        return modular_fourier_basis(self.p)

    def operand_grid(self, place: int = 0, n_samples: int = 32, seed: int = 0, op: str = "add"):
        """Every pair (a, b), once, answered at the '=' position (position 2); the other options do not apply."""
        return self.all_pairs(), 2, self.p

    def full_data_sizes(self) -> tuple[int, int]:
        """Every pair (a, b), split by frac_train."""
        total = self.p * self.p
        return max(1, int(self.frac_train * total)), total

    def options(self) -> dict:
        return {"p": self.p, "op": self.op, "frac_train": self.frac_train, "rand_seed": self.rand_seed}

    def answer(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        p = self.p
        if self.op == "add":
            return (a + b) % p
        if self.op == "subtract":
            return (a - b) % p  # torch's % takes the sign of p, as Python's
        if self.op == "x2xyy2":
            return (a * a + a * b + b * b) % p
        return self.table.to(a.device)[a, b]

    def from_pairs(self, a: torch.Tensor, b: torch.Tensor) -> Batch:
        tokens = torch.stack([a, b, torch.full_like(a, self.p)], dim=1)  # [batch, 3]
        return Batch(tokens, self.answer(a, b)[:, None])

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        check_int("batch_size", batch_size, 1)
        device = check_generator(generator).device
        a = torch.randint(0, self.p, (batch_size,), generator=generator, device=device)
        b = torch.randint(0, self.p, (batch_size,), generator=generator, device=device)
        return self.from_pairs(a, b)

    def all_pairs(self, device="cpu") -> Batch:
        index = torch.arange(self.p * self.p, device=device)
        return self.from_pairs(index // self.p, index % self.p)

    def paper_split(self, seed: int, n_train: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(train, test) pair indices a*p + b [n_train], [p*p - n_train], in the paper's shuffled
        order: `random.seed(seed); random.shuffle(pairs)` over the pairs in (a, b) order, then the
        first int(frac_train * p*p) (or n_train) are train."""
        total = self.p * self.p
        if n_train is None:
            n_train = int(self.frac_train * total)
        n_train = check_int("n_train", n_train, 1, total - 1)
        order = list(range(total))  # pair (a, b) is a*p + b: the paper's list order
        random.Random(check_int("seed", seed, 0)).shuffle(order)  # = random.seed(seed); random.shuffle
        order = torch.tensor(order)
        return order[:n_train], order[n_train:]

    def split(self, n_train: int | None = None, generator: torch.Generator | None = None,
              n_test: int | None = None):
        """Every pair exactly once: (train, test), the paper's split with seed generator.initial_seed()."""
        total = self.p * self.p
        if n_test is not None and n_train is not None and n_test != total - n_train:
            raise ValueError(f"the modular split puts every pair not in train in test; "
                             f"leave n_test unset (it is p*p - n_train = {total - n_train})")
        generator = check_generator(generator)
        train, test = self.paper_split(generator.initial_seed(), n_train)
        if n_test is not None and n_test != len(test):
            raise ValueError(f"the modular split puts every pair not in train in test; "
                             f"leave n_test unset (it is p*p - n_train = {len(test)})")
        pairs = lambda index: self.from_pairs(index // self.p, index % self.p).to(generator.device)  # noqa: E731
        return pairs(train), pairs(test)

    def encode(self, texts: list[str]) -> torch.Tensor:
        return encode_strings(texts, {name: i for i, name in enumerate(self.token_names)}, words=True)

    def decode(self, tokens: torch.Tensor) -> list[str]:
        return decode_tokens(tokens, self.token_names, sep=" ")
