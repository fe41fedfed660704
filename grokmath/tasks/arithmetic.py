"""Signed addition, subtraction and multiplication, the layout of the 'accurate integer maths' notebook.

`133357+182243=+0315600`, `123450-345670=-0222220`, `000345*000823=+0283935`: x (n digits), the
operator, y (n digits), `=`, then the answer as a sign and n+1 digits, most significant first.
Tokens: 0-9, `+`=10, `-`=11, `=`=12, `*`=13, `/`=14 (division is in the vocabulary but never
generated); d_vocab = d_vocab_out = 15 as the published models. The n+2 logit positions from '='
to the second-last token are scored (labels 'sign', A{n} .. A0). Zero is written with a `+`.

`ops` gives the mix as percentages summing to 100, e.g. {'sub': 80, 'add': 20} (the notebook's
default, used when ops is None). As in the notebook, `sample` draws one op per batch
(op_per_batch=True); op_per_batch=False draws one per question. `split` always mixes per question.
Multiplication zeroes the top n//2 digits of both operands so the product fits n+1 digits.

enrich=True applies the notebook's enrichment to addition and subtraction: 3 times in 5 the
questions are enriched, then 40% of the digit pairs are changed: for addition one operand's digit
becomes 9 minus the other's (more carry cascades); for subtraction the digits are made equal (more
borrow cascades) after, 1 time in 5, every digit of y below 9 is raised by one (more negative
answers). The notebook makes these choices once per batch and changes exactly 40% of the batch's
digits; with op_per_batch=True we do the same, otherwise each question makes its own choices and
changes each digit with probability 0.4. The notebook always enriches; the default here is off.

Metadata, each [batch]: `op` (the operator token: 10 add, 11 sub, 13 mul), `negative` (the answer
is < 0) and `cascade`: for addition the carry class S0..Sn (see addition.py); for subtraction the
borrow class, as Quirke's question complexity M0..Mn (answer >= 0) or N1..Nn (`negative`): 0 when
no place has x_i < y_i, else the longest chain of a place with x_i < y_i followed by places with
x_i == y_i, ignoring places above the highest non-zero digit of either operand; -1 for
multiplication. `case_masks` gives one mask per op in the mix, True on every scored position of the
questions with that op.
"""
from __future__ import annotations

import numbers

import torch

from .addition import chain_lengths, check_layout, digit_grid, digit_position_names, enrich_digits
from .base import (Batch, Task, check_generator, check_int, decode_tokens, encode_strings,
                   unique_split)
from .fourier_bases import digit_fourier_basis

PLUS, MINUS, EQUALS, MULT, DIV = 10, 11, 12, 13, 14
OP_TOKENS = {"add": PLUS, "sub": MINUS, "mul": MULT}
MAX_DIGITS = 18  # keeps x+y, x-y and the product of the operands exact in int64


def check_ops(ops) -> dict[str, float]:
    """The op mix as {op: percentage} in the order add, sub, mul, zero shares dropped."""
    if isinstance(ops, str):
        ops = {ops: 100}
    if not isinstance(ops, dict) or not ops:
        raise ValueError(f"ops must be a dict of percentages like {{'sub': 80, 'add': 20}}, got {ops!r}")
    for op, share in ops.items():
        if op not in OP_TOKENS:
            raise ValueError(f"unknown op {op!r} in ops; choose from add, sub, mul")
        if isinstance(share, bool) or not isinstance(share, numbers.Real) or not 0 <= share <= 100:
            raise ValueError(f"ops[{op!r}] must be a percentage from 0 to 100, got {share!r}")
    total = sum(ops.values())
    if abs(total - 100) > 1e-9:
        raise ValueError(f"ops percentages must sum to 100, got {total} from {ops}; "
                         f"e.g. ops={{'sub': 80, 'add': 20}}")
    return {op: ops[op] for op in OP_TOKENS if ops.get(op, 0) > 0}


class ArithmeticTask(Task):
    name = "arithmetic"
    op_names = {PLUS: "add", MINUS: "sub", MULT: "mul"}

    def __init__(self, n_digits: int = 6, ops: dict | str | None = None, enrich: bool = False,
                 op_per_batch: bool = True):
        self.n_digits = n = check_int("n_digits", n_digits, 1, MAX_DIGITS)
        self.ops = check_ops({"sub": 80, "add": 20} if ops is None else ops)
        for flag, value in (("enrich", enrich), ("op_per_batch", op_per_batch)):
            if not isinstance(value, bool):
                raise ValueError(f"{flag} must be True or False, got {value!r}")
        self.enrich, self.op_per_batch = enrich, op_per_batch
        self.d_vocab = self.d_vocab_out = 15
        self.n_question = 2 * n + 2  # x op y =
        self.n_answer = n + 2  # sign and n+1 digits
        self.n_ctx = self.n_question + self.n_answer
        self.pred_pos = torch.arange(self.n_question - 1, self.n_ctx - 1)
        self.pred_labels = ["sign"] + [f"A{i}" for i in range(n, -1, -1)]
        self.token_names = [str(d) for d in range(10)] + ["+", "-", "=", "*", "/"]
        self._op_tokens = torch.tensor([OP_TOKENS[op] for op in self.ops])
        self._op_probs = torch.tensor([float(share) for share in self.ops.values()], dtype=torch.float64)
        vocab = torch.arange(15)
        digit, sign = vocab < 10, (vocab == PLUS) | (vocab == MINUS)
        self._layout = [digit] * n + [(vocab >= PLUS) & (vocab != EQUALS)] + [digit] * n \
            + [vocab == EQUALS, sign] + [digit] * (n + 1)
        x, y = ("1234567890" * 2)[:n], ("3456789012" * 2)[:n]
        self.example = f"{x}-{y}={'-' if int(x) < int(y) else '+'}{str(abs(int(x) - int(y))).zfill(n + 1)}"

    def options(self) -> dict:
        return {"n_digits": self.n_digits, "ops": dict(self.ops), "enrich": self.enrich,
                "op_per_batch": self.op_per_batch}

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        return self._sample(check_int("batch_size", batch_size, 1), check_generator(generator),
                            self.op_per_batch)

    has_ground_truth = True
    has_numeric_answers = True
    draws_apart = True
    position_word = "digit"

    def title(self) -> str:
        return f"{self.n_digits} digit arithmetic"

    @property
    def truth_ops(self) -> tuple[str, ...]:
        """The ops in the mix, whose ground-truth variables analysis.explain.truth computes."""
        return tuple(self.ops)

    def position_names(self) -> list[str]:
        """D5 .. D0 OP D'5 .. D'0 = sign A6 .. A0 for 6-digit arithmetic."""
        return digit_position_names(self.n_digits, ["sign"])

    def op_mask(self, op: str, op_tokens: torch.Tensor) -> torch.Tensor:
        """The questions [batch] bool that ask `op` (one of truth_ops)."""
        return op_tokens == OP_TOKENS[op]

    def variable_prefix(self, op: str) -> str:
        """What the names of `op`'s ground-truth variables start with, e.g. 'sub.'."""
        return f"{op}."

    def question_sampler(self, enrich: bool | None = None) -> "ArithmeticTask":
        """This task drawing each question's op on its own (op_per_batch=False), so one large
        analysis batch holds the op mix; enriched as the task (None), never (False) or always (True)."""
        options = {**self.options(), "op_per_batch": False}
        if enrich is not None:
            options["enrich"] = enrich
        return ArithmeticTask(**options)

    def draw(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """The random part of `sample`: digits x, y [batch, n_digits] (units first, enriched if the
        task enriches) and op tokens [batch]; sample(n, gen) is from_digits(*draw(n, gen))."""
        return self._draw(check_int("batch_size", batch_size, 1), check_generator(generator), self.op_per_batch)

    def _sample(self, batch_size: int, generator: torch.Generator, per_batch: bool) -> Batch:
        return self.from_digits(*self._draw(batch_size, generator, per_batch))

    def _draw(self, batch_size: int, generator: torch.Generator, per_batch: bool):
        device, n = generator.device, self.n_digits
        draws = 1 if per_batch else batch_size
        pick = torch.multinomial(self._op_probs.to(device), draws, replacement=True, generator=generator)
        op = self._op_tokens.to(device)[pick].expand(batch_size).clone()  # [batch]
        x = torch.randint(0, 10, (batch_size, n), generator=generator, device=device)
        y = torch.randint(0, 10, (batch_size, n), generator=generator, device=device)
        # multiplication: zero the top n//2 places, 000NNN*000NNN, so the product fits n+1 digits
        top = (torch.arange(n, device=device) >= n - n // 2) & (op == MULT)[:, None]
        x, y = x.masked_fill(top, 0), y.masked_fill(top, 0)
        if self.enrich:
            x, y = enrich_digits(x, y, op == PLUS, op == MINUS, per_batch, generator)
        return x, y, op

    def fourier_basis(self) -> tuple[torch.Tensor, list[str]]:
        return digit_fourier_basis(10)

    def operand_grid(self, place: int = 0, n_samples: int = 32, seed: int = 0, op: str = "add"):
        """The digits of `place` (0 = units) over every pair with operator `op` (see Task.operand_grid)."""
        x, y = digit_grid(self.n_digits, place, n_samples, seed)
        batch = self.from_digits(x, y, torch.full((x.shape[0],), OP_TOKENS[op]))
        return batch, int(self.pred_pos[len(self.pred_labels) - 1 - place]), 10

    def from_digits(self, x: torch.Tensor, y: torch.Tensor, op: torch.Tensor) -> Batch:
        """The batch for place-order digits x, y [batch, n_digits] (units first) and op tokens [batch]."""
        batch, n = x.shape
        powers = 10 ** torch.arange(n, device=x.device)
        x_value, y_value = (x * powers).sum(1), (y * powers).sum(1)  # [batch] exact in int64
        is_mul = (op == MULT).long()
        value = torch.where(op == PLUS, x_value + y_value, torch.where(
            op == MINUS, x_value - y_value, (x_value * is_mul) * (y_value * is_mul)))
        negative = value < 0
        answer_powers = 10 ** torch.arange(n + 1, device=x.device)  # 10**18 still fits int64
        magnitude = value.abs()[:, None]
        if not (x.is_cuda and torch.cuda.is_current_stream_capturing()):  # a captured step cannot read it back
            assert bool((magnitude // answer_powers[-1] < 10).all()), "an answer does not fit n_digits + 1 digits"
        digits = magnitude // answer_powers % 10  # [batch, n+1] units first
        sign = torch.where(negative, MINUS, PLUS)
        column = lambda tok: tok.reshape(batch, 1).to(x.device)  # noqa: E731
        tokens = torch.cat([x.flip(1), column(op), y.flip(1), column(torch.full((batch,), EQUALS, device=x.device)),
                            column(sign), digits.flip(1)], dim=1)
        meta = {"op": op, "negative": negative, "cascade": self._cascade(x, y, op)}
        return Batch(tokens, tokens[:, self.pred_pos_on(x.device) + 1], None, meta)

    @staticmethod
    def _cascade(x, y, op):
        carry = chain_lengths(x + y >= 10, x + y == 9).amax(dim=1)
        nonzero = ((x > 0) | (y > 0)).long()
        in_question = nonzero.flip(1).cumsum(dim=1).flip(1) > 0  # at or below the top non-zero digit
        borrow = chain_lengths(x < y, (x == y) & in_question).amax(dim=1)
        return torch.where(op == PLUS, carry, torch.where(op == MINUS, borrow, -1))

    def from_questions(self, tokens: torch.Tensor) -> Batch:
        """Complete questions (the first n_question tokens of each row) with answers and metadata."""
        check_layout(tokens, self._layout, self.example)
        n = self.n_digits
        if tokens.shape[1] < self.n_question:
            raise ValueError(f"questions need {self.n_question} tokens, like "
                             f"{self.example[:self.n_question]}")
        x, op, y = tokens[:, :n].flip(1), tokens[:, n], tokens[:, n + 1:2 * n + 1].flip(1)
        if bool((op == DIV).any()):
            raise ValueError("division questions are not supported; use +, - or *")
        top = (op == MULT)[:, None] & (torch.arange(n, device=x.device) >= n - n // 2)
        if bool(((x > 0) & top).any() or ((y > 0) & top).any()):
            raise ValueError(f"multiplication operands need their top {n // 2} digits zero so the "
                             f"product fits {n + 1} digits, like {'0' * (n // 2)}{'3' * (n - n // 2)}*...")
        return self.from_digits(x, y, op)

    def split(self, n_train: int, generator: torch.Generator, n_test: int | None = None):
        """Fixed train set and a test set (default size: n_train) sharing no question; ops mixed per question."""
        n_train = check_int("n_train", n_train, 1)
        n_test = n_train if n_test is None else check_int("n_test", n_test, 0)
        keep = self.n_digits - self.n_digits // 2
        n_distinct = sum(100 ** (keep if op == "mul" else self.n_digits) for op in self.ops)
        sample = lambda size, gen: self._sample(size, gen, per_batch=False)  # noqa: E731
        return unique_split(sample, n_train, n_test, check_generator(generator), self.n_question,
                            n_distinct=n_distinct)

    def case_masks(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One mask [batch, n_pred] per op in the mix: every scored position of that op's questions."""
        n_pred = len(self.pred_labels)
        return {op: (batch.meta["op"] == OP_TOKENS[op])[:, None].expand(-1, n_pred) for op in self.ops}

    def question_classes(self, meta: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each question's class, per op in the mix: 'add S<k>' (carry class), 'sub M<k>' (borrow
        class, answer >= 0), 'sub N<k>' (borrow class, answer < 0) and 'mul'; masks [batch] bool."""
        op, cascade, negative = meta["op"], meta["cascade"], meta["negative"]
        classes = {}
        for name in self.ops:
            picked = op == OP_TOKENS[name]
            if name == "add":
                classes.update({f"add S{k}": picked & (cascade == k) for k in range(self.n_digits + 1)})
            elif name == "sub":
                for sign, kind in (("M", ~negative), ("N", negative)):
                    classes.update({f"sub {sign}{k}": picked & kind & (cascade == k)
                                    for k in range(self.n_digits + 1)})
            else:
                classes[name] = picked
        return classes

    def answer_from_tokens(self, tokens: torch.Tensor) -> list[int | None]:
        """The signed answers as Python ints from full rows or answer tokens alone; None where malformed."""
        answers = []
        for sign, *digits in tokens[:, -self.n_answer:].tolist():
            ok = sign in (PLUS, MINUS) and max(digits) < 10
            value = int("".join(map(str, digits))) if ok else None
            answers.append(None if value is None else -value if sign == MINUS else value)
        return answers

    def encode(self, texts: list[str]) -> torch.Tensor:
        vocab = {name: i for i, name in enumerate(self.token_names)} | {"\\": DIV}  # the notebook's '\'
        tokens = encode_strings(texts, vocab)
        check_layout(tokens, self._layout, self.example)
        return tokens

    def decode(self, tokens: torch.Tensor) -> list[str]:
        return decode_tokens(tokens, self.token_names)
