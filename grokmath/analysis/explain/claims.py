"""Claims: "ablating node X changes exactly the questions where ground-truth variable Y holds".

A claim is one line: a node, then a role and a digit in the papers' words, or a variable, a digit
and a value (default 1):
    P10L0H2 MakeCarry 1      digit 1 makes a carry: the questions with a carry into A2 change
    P14L0H1 UseSum9 2        a carry cascades through digit 2 (sum 9 there, a carry coming in)
    P12L0H0 BaseAdd 4        every question (A4 always needs its digits' sum)
    P15L0MLP use_carry A1 0  the questions with no carry into A1
Roles: BaseAdd, MakeCarry, MakeSum9, UseCarry, UseSum9 (addition); BaseSub, MakeBorrow, UseBorrow,
Sign (subtraction). A claim names the set of questions its ablation should change; `test_claims`
ablates the node and scores the set it really changes (questions right before, wrong after)
against it: precision (of the changed questions, the share the claim predicted) and recall (of
the predicted, the share that changed). It holds when both reach 0.8, partly when precision does.
An algorithm is a set of claims. `propose_claims` explains each useful node's failures by the
variable that predicts them best (on the questions that proposed it; test them on fresh ones).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch

from ...store.files import atomic_write_text
from .nodes import parse_node
from .truth import Variable

# role -> (variable, digit offset, value); BaseAdd / BaseSub predict every question of their op
ROLES = {"BaseAdd": ("all", None, 1), "MakeCarry": ("use_carry", 1, 1), "MakeSum9": ("sum9", 0, 1),
         "UseCarry": ("use_carry", 0, 1), "UseSum9": ("use_sum9", 0, 1),
         "BaseSub": ("all", None, 1), "MakeBorrow": ("use_borrow", 1, 1), "UseBorrow": ("use_borrow", 0, 1),
         "Sign": ("sign", None, 1)}
HOLDS, PARTLY = 0.8, 0.8


@dataclass
class Claim:
    node: str
    variable: str  # a truth variable name, e.g. 'use_carry A2' or 'add.use_carry A2'
    value: int
    text: str

    def predicted(self, truth: dict[str, Variable]) -> torch.Tensor:
        """[batch] bool: the questions this claim says the ablation changes."""
        if self.variable not in truth:
            raise ValueError(f"claim {self.text!r}: this task has no variable {self.variable!r}; "
                             f"known: {', '.join(sorted(truth)[:12])} ...")
        var = truth[self.variable]
        return var.valid & (var.values == self.value)


def parse_claim(text: str, truth: dict[str, Variable] | None = None, prefix: str = "") -> Claim:
    """One claim line (module doc). `prefix` ('add.' / 'sub.') qualifies variables on a mixed task."""
    parts = text.split()
    if len(parts) < 2:
        raise ValueError(f"claim {text!r}: write NODE ROLE DIGIT (e.g. P10L0H2 MakeCarry 1) or NODE VARIABLE A<digit> [VALUE]")
    node = parse_node(parts[0]).name
    if parts[1] in ROLES:
        variable, offset, value = ROLES[parts[1]]
        if parts[1] in ("BaseSub", "MakeBorrow", "UseBorrow", "Sign") and prefix == "add.":
            prefix = "sub."
        if offset is None:  # BaseAdd 3 / Sign: the digit does not change which questions
            return Claim(node, f"{prefix}{variable}", value, text)
        if len(parts) != 3 or not parts[2].isdigit():
            raise ValueError(f"claim {text!r}: a role takes one digit, e.g. {parts[0]} {parts[1]} 2")
        return Claim(node, f"{prefix}{variable} A{int(parts[2]) + offset}", value, text)
    if len(parts) not in (3, 4) or not parts[2].startswith("A"):
        raise ValueError(f"claim {text!r}: unknown role {parts[1]!r} (roles: {', '.join(ROLES)}); "
                         "or write NODE VARIABLE A<digit> [VALUE], e.g. P14L0H1 use_carry A3 1")
    value = int(parts[3]) if len(parts) == 4 else 1
    name = parts[1] if "." in parts[1] or not prefix else prefix + parts[1]
    return Claim(node, f"{name} {parts[2]}", value, text)


def precision_recall(changed: torch.Tensor, predicted: torch.Tensor, right: torch.Tensor) -> tuple[float, float]:
    """Over the questions `right` before: precision = |changed & predicted| / |changed|, recall =
    |changed & predicted| / |predicted| (NaN when the denominator is empty)."""
    changed, predicted = changed & right, predicted & right
    both = (changed & predicted).sum().item()
    p = both / changed.sum().item() if changed.any() else float("nan")
    r = both / predicted.sum().item() if predicted.any() else float("nan")
    return p, r


def verdict(precision: float, recall: float) -> str:
    if precision != precision:  # NaN: nothing changed
        return "fails (no question changes)"
    if precision >= HOLDS and recall >= HOLDS:
        return "holds"
    return "partly (precise, incomplete)" if precision >= PARTLY else "fails"


def explain_failures(failed: torch.Tensor, right: torch.Tensor, truth: dict[str, Variable],
                     top: int = 3) -> list[dict]:
    """The variables (and values) whose questions best match `failed` [batch] bool, by F1 of
    predicting the failures, best first: [{'variable', 'value', 'precision', 'recall', 'f1'}]."""
    found = []
    if not (failed & right).any():
        return found
    for name, var in truth.items():
        if name.split(".")[-1].startswith(("answer", "base_add", "base_diff")):
            continue  # digit-valued; 'every question' is the variable 'all'
        choices = [1] if name.split(".")[-1] == "all" else list(range(var.n_classes))
        for value in choices:
            predicted = var.valid if value is None else var.valid & (var.values == value)
            p, r = precision_recall(failed, predicted, right)
            if p == p and r == r and p + r > 0:
                found.append(dict(variable=name, value=value, precision=p, recall=r, f1=2 * p * r / (p + r)))
    # equal sets (e.g. the units' carry out is A1's carry in): the papers' role words first
    order = ("all", "use_carry", "use_sum9", "sum9", "use_borrow", "sign", "make_carry", "make_borrow")
    rank = lambda d: next((i for i, w in enumerate(order) if d["variable"].split(".")[-1].startswith(w)), 99)  # noqa: E731
    found.sort(key=lambda d: (-round(d["f1"], 12), rank(d)))
    return found[:top]


def claim_text(node: str, variable: str, value, digit_hint: int | None = None) -> str:
    """The role form of (variable, value) where one exists, else the variable form; `digit_hint`
    is the digit of an every-question (BaseAdd) claim."""
    prefix, _, base = variable.rpartition(".")
    prefix = prefix + "." if prefix else ""
    name, _, digit = base.partition(" ")
    k = int(digit[1:]) if digit.startswith("A") else None
    if name == "all":  # every question: the digit is the one the node's ablation changes
        return f"{node} {'BaseSub' if prefix == 'sub.' else 'BaseAdd'} {digit_hint}"
    roles = {("use_carry", 1): ("MakeCarry", -1), ("sum9", 1): ("MakeSum9", 0), ("use_sum9", 1): ("UseSum9", 0),
             ("use_borrow", 1): ("MakeBorrow", -1)}
    if (name, value) in roles and k is not None:
        role, shift = roles[(name, value)]
        return f"{node} {role} {k + shift}"
    if name == "sign" and value == 1:
        return f"{node} Sign"
    return f"{node} {prefix}{base} {value}"


def save_claims(path, results: list[dict]) -> None:
    atomic_write_text(path, json.dumps(results, indent=1, default=_plain) + "\n")


def _plain(x):
    if hasattr(x, "item"):
        return x.item()
    if hasattr(x, "__dataclass_fields__"):
        return asdict(x)
    raise TypeError(type(x))


def failures(answers: torch.Tensor, targets: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """[node, batch] bool: questions right before and wrong with the node ablated. answers
    [node, batch, n_pred], targets [batch, n_pred], right [batch]."""
    return right & (answers != targets).any(-1)


def test_claims(model, task, batch, claims: list[Claim], truth: dict[str, Variable], kind: str = "mean",
                reference=None, generator=None) -> list[dict]:
    """Ablate each claim's node on `batch` and score the claim: one dict per claim (module doc)."""
    from .nodes import ablate_nodes
    if not claims:
        return []
    names = list(dict.fromkeys(c.node for c in claims))
    answers, _ = ablate_nodes(model, task, batch.tokens, [parse_node(n) for n in names], kind, reference, generator)
    device = answers.device
    targets = batch.targets.to(device)
    with torch.no_grad():
        clean = model(batch.tokens.to(device))[:, task.pred_pos.to(device)].argmax(-1)
    right = (clean == targets).all(-1).cpu()
    failed = failures(answers, targets, right.to(device)).cpu()
    results = []
    for claim in claims:
        changed = failed[names.index(claim.node)]
        p, r = precision_recall(changed, claim.predicted(truth), right)
        results.append(dict(claim=claim.text, node=claim.node, variable=claim.variable, value=claim.value,
                            precision=p, recall=r, changed=int(changed.sum()),
                            predicted=int((claim.predicted(truth) & right).sum()), verdict=verdict(p, r)))
    return results
