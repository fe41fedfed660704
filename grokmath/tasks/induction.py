"""Induction: random tokens with one subsequence repeated, as the seed notebook's generate_dataset.

A sequence of seq_len tokens: BEGIN (0) at position 0, then noise drawn uniformly from
1..vocab_size-1. The sequence after BEGIN is cut into num_repeats intervals of
(seq_len - 1) // num_repeats tokens; in each interval a subsequence of subseq_len tokens starts at
a uniform position that keeps it inside the interval, and the subsequences of intervals 1.. are
copies of interval 0's. Next-token framing: every position but the last is scored against the
next token (d_vocab = d_vocab_out = vocab_size), and `mask` [batch, seq_len-1] marks the positions
inside a copy whose next token is also in the copy, i.e. predictable from the first occurrence
(the notebook's mask; the copy's first token is not predictable and is not marked).
vocab_size must leave at least subseq_len noise tokens, so a repeat can be told from the noise.
Token names: BEGIN, then '1'..; `decode` writes them space-separated.
Metadata: `starts` [batch, num_repeats], where each interval's subsequence starts.
"""
from __future__ import annotations

import math

import torch

from .base import (Batch, Task, check_generator, check_int, decode_tokens, encode_strings,
                   unique_split)

BEGIN = 0


class InductionTask(Task):
    name = "induction"

    def __init__(self, seq_len: int = 85, subseq_len: int = 16, num_repeats: int = 3, vocab_size: int = 128):
        self.vocab_size = check_int("vocab_size", vocab_size, 2, 1_000_000)
        self.num_repeats = check_int("num_repeats", num_repeats, 2, 10_000)
        self.subseq_len = check_int("subseq_len", subseq_len, 2, 100_000)
        self.seq_len = check_int("seq_len", seq_len, 2, 1_000_000)
        if self.vocab_size - 1 < self.subseq_len:  # the repeat is predictable only if its tokens can differ
            raise ValueError(f"vocab_size {vocab_size} leaves {self.vocab_size - 1} noise token(s), too few for a "
                             f"repeated subsequence of {subseq_len} tokens that differ: use vocab_size >= "
                             f"{self.subseq_len + 1} (BEGIN and {self.subseq_len} noise tokens)")
        self.interval = (self.seq_len - 1) // self.num_repeats
        if self.interval < self.subseq_len:
            raise ValueError(f"seq_len {seq_len} is too short for {num_repeats} repeats of "
                             f"{subseq_len} tokens; use seq_len >= {num_repeats * subseq_len + 1}")
        self.n_ctx = self.seq_len
        self.d_vocab = self.d_vocab_out = self.vocab_size
        self.pred_pos = torch.arange(self.seq_len - 1)
        self.pred_labels = [f"P{i}" for i in range(self.seq_len - 1)]
        self.token_names = ["BEGIN"] + [str(t) for t in range(1, self.vocab_size)]

    has_repeats = True

    def reference_losses(self) -> dict[str, float]:
        """Guessing uniformly among the vocab_size - 1 noise tokens (the notebook's uniform loss,
        4.844), and 0, the optimum on the scored tokens, which are all predictable from the first
        copy. (The notebook's 'optimal loss' 3.114 averages over every position, which the loss
        does not.)"""
        return {"uniform, ln(vocab_size - 1)": math.log(self.vocab_size - 1), "optimal": 0.0}

    def options(self) -> dict:
        return {"seq_len": self.seq_len, "subseq_len": self.subseq_len,
                "num_repeats": self.num_repeats, "vocab_size": self.vocab_size}

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        check_int("batch_size", batch_size, 1)
        device = check_generator(generator).device
        tokens = torch.randint(1, self.vocab_size, (batch_size, self.seq_len), generator=generator, device=device)
        tokens[:, 0] = BEGIN
        span = self.interval - self.subseq_len + 1  # start positions that keep a copy in its interval
        starts = torch.stack([1 + i * self.interval + torch.randint(0, span, (batch_size,), generator=generator,
                                                                   device=device)
                              for i in range(self.num_repeats)], dim=1)  # [batch, num_repeats]
        offsets = torch.arange(self.subseq_len, device=device)
        first = tokens.gather(1, starts[:, :1] + offsets)  # [batch, subseq_len]
        mask = torch.zeros(batch_size, self.seq_len, dtype=torch.bool, device=device)
        for i in range(1, self.num_repeats):
            where = starts[:, i:i + 1] + offsets  # [batch, subseq_len]
            tokens.scatter_(1, where, first)
            mask.scatter_(1, where[:, :-1], True)
        return Batch(tokens, tokens[:, 1:], mask[:, :-1], {"starts": starts})

    def split(self, n_train: int, generator: torch.Generator, n_test: int | None = None):
        """Fixed train set and a test set (default size: n_train) with no sequence in common."""
        n_train = check_int("n_train", n_train, 1)
        n_test = n_train if n_test is None else check_int("n_test", n_test, 0)
        return unique_split(self.sample, n_train, n_test, check_generator(generator), self.n_ctx)

    def encode(self, texts: list[str]) -> torch.Tensor:
        return encode_strings(texts, {name: i for i, name in enumerate(self.token_names)}, words=True)

    def decode(self, tokens: torch.Tensor) -> list[str]:
        return decode_tokens(tokens, self.token_names, sep=" ")
