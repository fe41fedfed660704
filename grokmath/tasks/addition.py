"""Addition of two n-digit numbers, in the layout of the 'non-modular addition' seed notebook.

`12345+67890=080235`: x (n digits) `+` y (n digits) `=` z (n+1 digits), most significant digit
first. Tokens 0-9 are digits, `+` = 10, `=` = 11 (d_vocab 12); answers are digits (d_vocab_out 10).
Next-token framing: the n+1 logit positions from '=' to the second-last token are scored against
the answer digits, labelled A{n} (the leading carry digit) down to A0 (units).

Metadata follows the 'addition interpretability' notebook (BaseAdd, MakeCarry1, Sum9, UseCarry1,
UseSum9). Each per-digit tensor is [batch, n_digits] with column i = the 10^i place, so column i
belongs to answer digit Ai (the notebook stores the most significant digit in column 0). `batch.meta`
is a PlaceMeta: a notebook name asked of it (`use_sum9s`, ...) is refused with a pointer to
`task.notebook_layout(batch)`, which gives the notebooks' layout.
  base_add[i]        x_i + y_i (0..18), int64
  make_carry[i]      x_i + y_i + carry_in_i >= 10: the carry out of place i, cascades included
                     (the notebook's MakeCarry1 is computed on the digit sum with the carry in)
  make_carry_base[i] x_i + y_i >= 10: a carry made by the digits alone (the paper's MC1)
  sum9[i]            x_i + y_i == 9
  use_carry[i]       make_carry[i-1] (False for the units): place i receives a carry (UseCarry1)
  use_sum9[i]        sum9[i] & use_carry[i]: a carry cascades through place i (UseSum9)
  cascade            [batch] the question's class S0..Sn: 0 when no place makes a carry from its
                     digits alone, else the longest carry chain, a place with x_i + y_i >= 10 then
                     k places above it with x + y == 9 counting 1 + k (as Quirke's question
                     complexity S0..S5, not capped).
`case_masks` splits every scored digit into exactly one of BaseAdd (no carry in), UseCarry1 (carry
in, digit sum not 9) and UseSum9 (carry in, digit sum 9), the notebook's per-digit filters. The
leading digit A{n} is treated as a place with digits 0 + 0: BaseAdd when there is no carry out of
the top place (A{n} = 0), UseCarry1 when there is (A{n} = 1), never UseSum9.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import (Batch, Task, check_generator, check_int, decode_tokens, encode_strings,
                   unique_split)
from .fourier_bases import digit_fourier_basis

PLUS, EQUALS = 10, 11
MAX_DIGITS = 40  # digit-wise sums are exact at any length; the cap only keeps n_ctx sensible


def chain_lengths(start: torch.Tensor, extend: torch.Tensor) -> torch.Tensor:
    """Length of the carry (or borrow) chain ending at each place: [batch, n] bool -> int64.

    A chain starts (length 1) at a place where `start` holds and grows by one through each next
    place where `extend` holds (place order: units first). Closed form, no loop over places: the
    chain ending at place i began at the last start at or below i, if no place in between is
    neither a start nor an extension.
    """
    place = torch.arange(start.shape[1], device=start.device)
    last_start = torch.where(start, place, -1).cummax(dim=1).values  # [batch, n]
    last_break = torch.where(~start & ~extend, place, -1).cummax(dim=1).values
    return torch.where(last_start > last_break, place - last_start + 1, 0)


class PlaceMeta(dict):
    """An addition batch's `meta`: per-digit tensors UNITS FIRST (column i is the 10^i place) and
    bool flags, where the seed notebooks hold int64 most significant digit first. A cell ported from
    a notebook that asks for a notebook name (`use_sum9s`, `base_adds`, `carries`, ...) or any name
    not here gets a KeyError that points to `task.notebook_layout(batch)`, the notebooks' layout;
    printed, it says its order. (A notebook cell fed these tensors would run and read the wrong
    digits: the order is the trap.)"""

    def __missing__(self, key):
        raise KeyError(f"{key!r}: batch.meta has {', '.join(self)}: per-digit [batch, n_digits] tensors UNITS FIRST "
                       "(column i = the 10^i place), flags bool; for the seed notebooks' names and layout (most "
                       "significant digit first, int64) use task.notebook_layout(batch)")

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {tuple(v.shape)} {str(v.dtype).removeprefix('torch.')}" for k, v in self.items())
        return (f"PlaceMeta(units first, column i = the 10^i place; the notebooks' layout is "
                f"task.notebook_layout(batch)) {{{shapes}}}")


def add_digits(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Column addition of place-order digits x, y [batch, n] (units first).

    Returns the n+1 sum digits [batch, n+1] (units first) and the per-digit metadata above.
    """
    base_add = x + y  # [batch, n]
    sum9, make_carry_base = base_add == 9, base_add >= 10
    # a place carries out exactly when a carry chain (a sum >= 10, then sums of 9) reaches it
    chains = chain_lengths(make_carry_base, sum9)  # [batch, n]
    make_carry = chains > 0
    use_carry = torch.cat([torch.zeros_like(make_carry[:, :1]), make_carry[:, :-1]], dim=1)
    digits = torch.cat([(base_add + use_carry.long()) % 10, make_carry[:, -1:].long()], dim=1)
    meta = PlaceMeta(base_add=base_add, make_carry=make_carry, make_carry_base=make_carry_base,
                     sum9=sum9, use_carry=use_carry, use_sum9=sum9 & use_carry, cascade=chains.amax(dim=1))
    return digits, meta


def enrich_digits(x, y, add, sub, per_batch: bool, generator):
    """The arithmetic notebook's enrichment of digits x, y [batch, n] (units first) of the questions
    that are additions (`add` [batch] bool) or subtractions (`sub`); tasks/arithmetic.py says the rule."""
    batch, n = x.shape
    device = x.device
    draws = 1 if per_batch else batch
    case = torch.randint(1, 6, (draws,), generator=generator, device=device).expand(batch)
    side = torch.randint(1, 3, (draws,), generator=generator, device=device).expand(batch)
    if per_batch:  # exactly 40% of the batch's digit pairs, as the notebook
        chosen = torch.zeros(batch * n, dtype=torch.bool, device=device)
        chosen[torch.randperm(batch * n, generator=generator, device=device)[:int(0.4 * batch * n)]] = True
        chosen = chosen.view(batch, n)
    else:
        chosen = torch.rand(batch, n, generator=generator, device=device) < 0.4
    enriched = case <= 3
    first, second = (side == 1)[:, None], (side == 2)[:, None]
    # addition: digit pairs that sum to 9 make carry cascades (S2, S3, ...) common
    change = chosen & (enriched & add)[:, None]
    x = torch.where(change & first, 9 - y, x)
    y = torch.where(change & second, 9 - x, y)
    # subtraction: a larger y gives more negative answers; equal digits make borrow cascades
    subtract = (enriched & sub)[:, None]
    y = y + (subtract & (case == 1)[:, None] & (y < 9)).long()
    change = chosen & subtract
    x = torch.where(change & first, y, x)
    y = torch.where(change & second, x, y)
    return x, y


def digit_grid(n_digits: int, place: int, n_samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits x, y [100 * n_samples, n_digits] (units first): every pair of digits (a, b) of `place`,
    a-major, each with the same `n_samples` random draws of the other digits (row = pair * n_samples + sample)."""
    if not 0 <= place < n_digits:
        raise ValueError(f"place must be in 0..{n_digits - 1} (0 = units), got {place}")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 10, (n_samples, n_digits), generator=gen)
    y = torch.randint(0, 10, (n_samples, n_digits), generator=gen)
    a, b = torch.arange(10).repeat_interleave(10), torch.arange(10).repeat(10)  # [100] a-major
    x = x.repeat(100, 1)
    y = y.repeat(100, 1)
    x[:, place] = a.repeat_interleave(n_samples)
    y[:, place] = b.repeat_interleave(n_samples)
    return x, y


def digit_position_names(n_digits: int, before_answer: list[str]) -> list[str]:
    """D{n-1} .. D0 OP D'{n-1} .. D'0 = (before_answer) A{n} .. A0: a name per position of a digit task."""
    first = [f"D{i}" for i in range(n_digits - 1, -1, -1)]
    second = [f"D'{i}" for i in range(n_digits - 1, -1, -1)]
    return first + ["OP"] + second + ["="] + before_answer + [f"A{i}" for i in range(n_digits, -1, -1)]


def check_layout(tokens: torch.Tensor, allowed: list[torch.Tensor], example: str) -> None:
    """Each token must be one `allowed[pos]` permits ([vocab] bool); tokens may stop early."""
    if tokens.shape[1] > len(allowed):
        raise ValueError(f"sequences are {tokens.shape[1]} tokens, longer than this task's "
                         f"{len(allowed)}; the layout is like {example}")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= len(allowed[0])):
        raise ValueError(f"tokens must be in 0..{len(allowed[0]) - 1}; the layout is like {example}")
    for pos in range(tokens.shape[1]):
        if not bool(allowed[pos].to(tokens.device)[tokens[:, pos]].all()):
            raise ValueError(f"token {pos} does not follow the layout, which is like {example}")


@dataclass(frozen=True)
class NotebookAddition:
    """One batch in the seed notebooks' layout; every tensor int64 (0/1 for the flags).

    The five per-digit tensors are [batch, n_digits] with column 0 the MOST significant digit
    (10^(n-1)) and column n-1 the units, as the 'addition interpretability' notebook's
    data_generator yields them (its loss cells read the units as `[:, -1]`):
      base_adds     x + y in that column (0..18)
      make_carry1s  x + y + carry-in >= 10: the column carries out (make_carry1s[:, 0] is the
                    answer's leading digit)
      sum9s         x + y == 9 (the notebook's name; there is no `make_sum9s`)
      use_carry1s   the column receives a carry (0 for the units)
      use_sum9s     sum9s & use_carry1s
    `carries` is the 'non-modular addition' notebook's [batch, n_digits + 1], in carry order, UNITS
    FIRST: column 0 the carry into the units (always 0), column k the carry out of the k-th digit
    from the right (column n: the answer's leading digit). `tokens` are the full rows
    [batch, 3n+3], the same layout in grokmath and both notebooks.
    """

    tokens: torch.Tensor  # [batch, 3n+3]
    base_adds: torch.Tensor  # [batch, n], most significant first
    make_carry1s: torch.Tensor
    sum9s: torch.Tensor
    use_carry1s: torch.Tensor
    use_sum9s: torch.Tensor
    carries: torch.Tensor  # [batch, n+1], units first, leading carry-in column of zeros

    def analysis_notebook(self) -> tuple[torch.Tensor, ...]:
        """(tokens, base_adds, make_carry1s, sum9s, use_carry1s, use_sum9s): what
        `next(data_generator(...))` returns in the 'addition interpretability' notebook."""
        return self.tokens, self.base_adds, self.make_carry1s, self.sum9s, self.use_carry1s, self.use_sum9s

    def grokking_notebook(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens, carries): what `next(data_generator(...))` returns in the 'non-modular addition
        grokking tasks' notebook."""
        return self.tokens, self.carries


class AdditionTask(Task):
    name = "addition"

    def __init__(self, n_digits: int = 5):
        self.n_digits = n = check_int("n_digits", n_digits, 1, MAX_DIGITS)
        self.d_vocab, self.d_vocab_out = 12, 10
        self.n_question = 2 * n + 2  # x + y =
        self.n_answer = n + 1
        self.n_ctx = self.n_question + self.n_answer
        self.pred_pos = torch.arange(self.n_question - 1, self.n_ctx - 1)
        self.pred_labels = [f"A{i}" for i in range(n, -1, -1)]
        self.token_names = [str(d) for d in range(10)] + ["+", "="]
        digit = torch.arange(12) < 10
        self._layout = [digit] * n + [torch.arange(12) == PLUS] + [digit] * n \
            + [torch.arange(12) == EQUALS] + [digit] * (n + 1)
        x, y = ("1234567890" * 4)[:n], ("6789012345" * 4)[:n]
        self.example = f"{x}+{y}={str(int(x) + int(y)).zfill(n + 1)}"

    def options(self) -> dict:
        return {"n_digits": self.n_digits}

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        return self.from_digits(*self.draw(batch_size, generator))

    def draw(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The random part of `sample`: the operands' digits x, y [batch, n_digits] (units first);
        sample(n, gen) is from_digits(*draw(n, gen))."""
        check_int("batch_size", batch_size, 1)
        device = check_generator(generator).device
        shape = (batch_size, self.n_digits)
        x = torch.randint(0, 10, shape, generator=generator, device=device)
        y = torch.randint(0, 10, shape, generator=generator, device=device)
        return x, y

    has_ground_truth = True
    has_numeric_answers = True
    draws_apart = True
    truth_ops = ("add",)
    position_word = "digit"

    def title(self) -> str:
        return f"{self.n_digits} digit addition"

    def position_names(self) -> list[str]:
        """D4 .. D0 OP D'4 .. D'0 = A5 .. A0 for 5-digit addition."""
        return digit_position_names(self.n_digits, [])

    def op_mask(self, op: str, op_tokens: torch.Tensor) -> torch.Tensor:
        """The questions [batch] bool that ask `op` (one of truth_ops): every one."""
        return torch.ones(len(op_tokens), dtype=torch.bool)

    def variable_prefix(self, op: str) -> str:
        """What the names of `op`'s ground-truth variables start with: nothing, addition has one op."""
        return ""

    def question_sampler(self, enrich: bool | None = None):
        """This task, or with enrich=True its questions enriched as the arithmetic notebook enriches
        additions (EnrichedAddition): the hard cases, long carry cascades."""
        return EnrichedAddition(self) if enrich else self

    def fourier_basis(self) -> tuple[torch.Tensor, list[str]]:
        return digit_fourier_basis(10)

    def operand_grid(self, place: int = 0, n_samples: int = 32, seed: int = 0, op: str = "add"):
        """The digits of `place` (0 = units) over every pair (see Task.operand_grid); `op` is always add."""
        batch = self.from_digits(*digit_grid(self.n_digits, place, n_samples, seed))
        return batch, int(self.pred_pos[len(self.pred_labels) - 1 - place]), 10

    def from_digits(self, x: torch.Tensor, y: torch.Tensor) -> Batch:
        """The batch for place-order digits x, y [batch, n_digits] (units first)."""
        digits, meta = add_digits(x, y)
        batch = x.shape[0]
        tokens = torch.cat([x.flip(1), torch.full((batch, 1), PLUS, device=x.device), y.flip(1),
                            torch.full((batch, 1), EQUALS, device=x.device), digits.flip(1)], dim=1)
        return Batch(tokens, tokens[:, self.pred_pos_on(x.device) + 1], None, meta)

    def from_questions(self, tokens: torch.Tensor) -> Batch:
        """Complete questions (the first n_question tokens of each row) with answers and metadata."""
        check_layout(tokens, self._layout, self.example)
        if tokens.shape[1] < self.n_question:
            raise ValueError(f"questions need {self.n_question} tokens, like "
                             f"{self.example[:self.n_question]}")
        n = self.n_digits
        return self.from_digits(tokens[:, :n].flip(1), tokens[:, n + 1:2 * n + 1].flip(1))

    def split(self, n_train: int, generator: torch.Generator, n_test: int | None = None):
        """Fixed train set and a test set (default size: n_train) sharing no question."""
        n_train = check_int("n_train", n_train, 1)
        n_test = n_train if n_test is None else check_int("n_test", n_test, 0)
        return unique_split(self.sample, n_train, n_test, check_generator(generator),
                            self.n_question, n_distinct=100 ** self.n_digits)

    def notebook_layout(self, batch: Batch) -> NotebookAddition:
        """The batch's per-digit metadata in the seed notebooks' layout (see NotebookAddition:
        per-digit tensors most significant digit first, `carries` units first).

        Computed from the questions in `batch.tokens` (full rows of this task); the tokens are
        returned as given. Use `task.from_questions(tokens)` first for questions alone.
        """
        if batch.tokens.dim() != 2 or batch.tokens.shape[1] != self.n_ctx:
            raise ValueError(f"notebook_layout needs full rows of {self.n_ctx} tokens like {self.example}, "
                             f"got shape {tuple(batch.tokens.shape)}; complete questions with from_questions")
        place = self.from_questions(batch.tokens).meta  # units first, bool
        msd_first = {key: place[key].flip(1).long() for key in ("base_add", "make_carry", "sum9",
                                                                  "use_carry", "use_sum9")}
        no_carry_in = torch.zeros_like(msd_first["make_carry"][:, :1])
        return NotebookAddition(
            tokens=batch.tokens, base_adds=msd_first["base_add"], make_carry1s=msd_first["make_carry"],
            sum9s=msd_first["sum9"], use_carry1s=msd_first["use_carry"], use_sum9s=msd_first["use_sum9"],
            carries=torch.cat([no_carry_in, place["make_carry"].long()], dim=1))

    def case_masks(self, batch: Batch) -> dict[str, torch.Tensor]:
        """BaseAdd / UseCarry1 / UseSum9 bool masks [batch, n_pred] that partition the answer digits."""
        meta = batch.meta
        carry_in = torch.cat([meta["make_carry"][:, -1:], meta["use_carry"].flip(1)], dim=1)
        sum9 = torch.cat([torch.zeros_like(carry_in[:, :1]), meta["sum9"].flip(1)], dim=1)
        return {"BaseAdd": ~carry_in, "UseCarry1": carry_in & ~sum9, "UseSum9": carry_in & sum9}

    def answer_from_tokens(self, tokens: torch.Tensor) -> list[int | None]:
        """The answers as Python ints from full rows or answer tokens alone; None where malformed."""
        answers = tokens[:, -self.n_answer:].tolist()
        return [int("".join(map(str, row))) if max(row) < 10 else None for row in answers]

    def encode(self, texts: list[str]) -> torch.Tensor:
        tokens = encode_strings(texts, {name: i for i, name in enumerate(self.token_names)})
        check_layout(tokens, self._layout, self.example)
        return tokens

    def decode(self, tokens: torch.Tensor) -> list[str]:
        return decode_tokens(tokens, self.token_names)


class EnrichedAddition:
    """Addition questions with the arithmetic notebook's enrichment of addition digits: 3 questions
    in 5 have 40% of their digit pairs made to sum to 9, so carries cascade far more often."""

    def __init__(self, task: AdditionTask):
        self.task = task

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        x, y = self.task.draw(batch_size, generator)  # units first
        add = torch.ones(batch_size, dtype=torch.bool, device=x.device)  # every question is an addition
        x, y = enrich_digits(x, y, add, ~add, per_batch=False, generator=generator)
        return self.task.from_digits(x, y)
