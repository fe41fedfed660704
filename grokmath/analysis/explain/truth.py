"""What the arithmetic tasks know about every question: the ground truth the explain tools score against.

`variables(task, batch)` returns, per question, the values of the quantities an addition or
subtraction algorithm must compute, named as in Quirke & Barez 2023 / Quirke et al. 2024 and keyed
by the answer digit they belong to (A0 = units). Each is a `Variable`: values [batch] int64, the
number of classes, and a `valid` mask [batch] (on a mixed add/sub task an addition variable is
valid on addition questions only; those names start with 'add.' or 'sub.'). Per place i
(x_i, y_i the operands' digits, units first):
  base_add Ai   (x_i + y_i) % 10                 (BaseAdd; 10 classes)
  make_carry Ai x_i + y_i >= 10                  (MakeCarry1: the digits alone make a carry)
  sum9 Ai       x_i + y_i == 9                   (MakeSum9)
  tricase Ai    x_i + y_i below 9, 9, above 9: 0, 1, 2 (Quirke et al. 2024's ST: ST8, ST9, ST10)
  use_carry Ai  a carry comes into place i       (UseCarry1; cascades included; A{n} too)
  use_sum9 Ai   sum9 and use_carry at place i    (UseSum9: a carry cascades through place i)
  answer Ai     the answer digit                 (10 classes)
  all           1 on every question (what a BaseAdd claim predicts: every answer changes)
Subtraction works on the magnitude |x - y| = a - b with a >= b the larger operand:
  base_diff Ai  (a_i - b_i) % 10; make_borrow Ai a_i < b_i; equal Ai a_i == b_i;
  use_borrow Ai a borrow comes into place i; tricase Ai the sign of x_i - y_i (0 <, 1 =, 2 >;
  Quirke's ST); sign  the answer is negative.
Everything is computed here from the question tokens with Python-integer-exact tensor arithmetic,
independently of the task's own metadata (tests check the two agree).

`position_names(task)` names the token positions as the papers do: D4..D0 the first operand, OP,
D'4..D'0 the second, '=', then the answer tokens (sign, A5..A0). `predicts(task)` maps a
position to the answer digit whose logit it emits.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...tasks.base import Batch
from ..common import question_sampler

@dataclass
class Variable:
    values: torch.Tensor  # [batch] int64
    n_classes: int
    valid: torch.Tensor  # [batch] bool


def is_arithmetic(task) -> bool:
    """Whether the task's ground-truth variables are known (addition, arithmetic: task.has_ground_truth)."""
    return task.has_ground_truth


def position_names(task) -> list[str]:
    """A name per token position, e.g. D4 .. D0 OP D'4 .. D'0 = A5 .. A0 for 5-digit addition."""
    return task.position_names()


def predicts(task) -> dict[int, str]:
    """{position: the answer label its logits are scored against}, e.g. {11: 'A5', ...}."""
    return {int(p): label for p, label in zip(task.pred_pos.tolist(), task.pred_labels)}


def operand_digits(task, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x, y [batch, n] place-order digits (units first) and the op token [batch] of full rows."""
    n = task.n_digits
    return tokens[:, :n].flip(1), tokens[:, n + 1:2 * n + 1].flip(1), tokens[:, n]


def _carries(x, y):
    """Carry into each place 0..n of x + y ([batch, n+1] bool), by walking the places."""
    carry = [torch.zeros_like(x[:, 0], dtype=torch.bool)]
    for i in range(x.shape[1]):
        carry.append(x[:, i] + y[:, i] + carry[-1].long() >= 10)
    return torch.stack(carry, dim=1)


def _borrows(a, b):
    """Borrow into each place 0..n of a - b (a >= b) ([batch, n+1] bool)."""
    borrow = [torch.zeros_like(a[:, 0], dtype=torch.bool)]
    for i in range(a.shape[1]):
        borrow.append(a[:, i] - b[:, i] - borrow[-1].long() < 0)
    return torch.stack(borrow, dim=1)


def variables(task, batch) -> dict[str, Variable]:
    """The ground-truth variables of every question in `batch` (see the module doc)."""
    if not is_arithmetic(task):
        return {}
    tokens = batch.tokens.cpu()
    x, y, op = operand_digits(task, tokens)
    n = task.n_digits
    out: dict[str, Variable] = {}
    everyone = torch.ones(len(tokens), dtype=torch.bool)
    # the answer digits as the sequence writes them, most significant first -> place order
    answer = tokens[:, -(n + 1):].flip(1)  # [batch, n+1]
    for name in task.truth_ops:
        prefix = task.variable_prefix(name)
        valid = task.op_mask(name, op)

        def put(var, place, values, classes=2):
            out[f"{prefix}{var} A{place}"] = Variable(values.long(), classes, valid)

        out[f"{prefix}all"] = Variable(torch.ones(len(tokens), dtype=torch.long), 1, valid)  # every question
        if name == "add":
            carry = _carries(x, y)
            for i in range(n):
                s = x[:, i] + y[:, i]
                put("base_add", i, s % 10, 10)
                put("make_carry", i, s >= 10)
                put("sum9", i, s == 9)
                put("tricase", i, (s >= 9).long() + (s >= 10).long(), 3)
                put("use_sum9", i, (s == 9) & carry[:, i])
            for i in range(1, n + 1):
                put("use_carry", i, carry[:, i])
        elif name == "sub":
            negative = _value(x) < _value(y)
            a = torch.where(negative[:, None], y, x)
            b = torch.where(negative[:, None], x, y)
            borrow = _borrows(a, b)
            for i in range(n):
                put("base_diff", i, (a[:, i] - b[:, i]) % 10, 10)
                put("make_borrow", i, a[:, i] < b[:, i])
                put("equal", i, a[:, i] == b[:, i])
                put("tricase", i, torch.sign(x[:, i] - y[:, i]) + 1, 3)
            for i in range(1, n + 1):
                put("use_borrow", i, borrow[:, i])
            out[f"{prefix}sign"] = Variable(negative.long(), 2, valid)
        for i in range(n + 1):
            if name in ("add", "sub"):
                put("answer", i, answer[:, i], 10)
    return out


def _value(digits: torch.Tensor) -> torch.Tensor:
    powers = 10 ** torch.arange(digits.shape[1])
    return (digits * powers).sum(1)


def question_set(task, per_class: int, generator: torch.Generator, pool: int | None = None):
    """Questions drawn per case class: up to `per_class` of each of task.question_classes (S0..Sn for
    addition; per op for arithmetic), from a pool of uniform questions, then enriched ones where a
    class has too few (long cascades are rare otherwise). Tasks without classes: `per_class` plain questions.
    Returns (Batch, class name per question)."""
    plain = question_sampler(task, enrich=False) if is_arithmetic(task) else task
    if not task.question_classes(plain.sample(1, generator).meta):
        batch = plain.sample(per_class, generator)
        return batch, ["all"] * len(batch)
    pool = pool or 50 * per_class
    # uniform questions first, so a class takes enriched ones only where uniform ones run out
    batch = Batch.cat([plain.sample(pool, generator), question_sampler(task, enrich=True).sample(pool, generator)])
    classes = task.question_classes(batch.meta)
    keep, names = [], []
    for name, mask in classes.items():
        rows = mask.nonzero()[:, 0][:per_class]
        keep.append(rows)
        names += [name] * len(rows)
    return batch.index(torch.cat(keep)), names
