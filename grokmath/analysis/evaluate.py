"""Accuracy of an addition or arithmetic model over many random questions, counted in nines.

`evaluate(model, task, n_questions)` draws questions in batches from a seeded generator and runs
one teacher-forced forward per batch at the answer positions (inference mode, no hooks). That pass
gives the per-digit accuracy, and also the question accuracy of greedy generation: the model
generates the whole answer right exactly when every teacher-forced arg-max is right, because while
the prefix it has generated is correct, greedy generation and teacher forcing feed the model the
same tokens (by induction over the answer positions). So greedy generation is run only on the
failing questions, to list the answer the model actually writes.

Nines: with `wrong` of `n` questions wrong, `nines` is the largest k with wrong * 10**k <= n
(floor(-log10(wrong / n)), in exact integer arithmetic): 1 wrong in 1,000,000 is 6 ('Six9s', at
most one wrong in a million), 10 wrong is 5 (accuracy 0.99999). With none wrong it is the largest
k with 10**k <= n, a lower bound, written '>= k' in `nines_text`.

Case classes are the task's own (`task.question_classes`): addition S0..Sn (the carry-cascade
class); arithmetic 'add S<k>', 'sub M<k>' (borrow class, answer >= 0), 'sub N<k>' (negative
answers) and 'mul'.
"""
from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from ..config import check_whole
from ..losses import correct
from ..memory import check_fits, forward_bytes
from .common import model_device, question_sampler


def count_nines(wrong: int, n: int) -> tuple[int, bool]:
    """(k, lower_bound): the largest k with wrong * 10**k <= n; with wrong == 0, the largest k with
    10**k <= n, flagged as a lower bound."""
    if n <= 0:
        raise ValueError("count_nines needs at least one question")
    k = 0
    if wrong == 0:
        while 10 ** (k + 1) <= n:
            k += 1
        return k, True
    while wrong * 10 ** (k + 1) <= n:
        k += 1
    return k, False


def _check_task(task):
    if not all(hasattr(task, attr) for attr in ("n_question", "n_answer", "answer_from_tokens")):
        raise ValueError(f"evaluate works on the addition and arithmetic tasks, not {task.name!r}")


@torch.inference_mode()
def greedy_answers(model, task, questions: torch.Tensor) -> torch.Tensor:
    """Greedy generation: tokens [batch, n_question] -> the generated answer tokens [batch, n_answer]."""
    tokens = questions
    for _ in range(task.n_answer):
        next_token = model(tokens)[:, -1].argmax(-1)  # [batch]
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
    return tokens[:, task.n_question:]


def case_names(task, meta: dict) -> list[str]:
    """The case class of each question of a batch (the task's question_classes, see the module doc)."""
    classes = task.question_classes(meta)
    names = list(classes)
    index = torch.stack(list(classes.values())).to(torch.int64).argmax(0)  # [batch] the one class each is in
    return [names[i] for i in index.tolist()]


def evaluate(model, task, n_questions: int = 1_000_000, batch_size: int = 8192, seed: int = 0,
             generator: torch.Generator | None = None, device=None, max_failures: int = 100,
             progress: bool = True) -> dict:
    """Per-digit and question accuracy over `n_questions` random questions (see the module doc).

    Returns a JSON-serialisable dict: n_questions, per_digit {label: {accuracy, wrong}},
    digit_accuracy, question_accuracy, wrong, nines, nines_lower_bound, nines_text, cases
    {name: {n, wrong, accuracy}}, failures (up to `max_failures`: question, expected,
    model_answer, model_answer_tokens, wrong_digits), seconds.
    """
    _check_task(task)
    check_whole("n_questions", n_questions, 1)
    check_whole("batch_size", batch_size, 1)
    device = model_device(model) if device is None else torch.device(device)
    rows = min(batch_size, n_questions)
    check_fits(forward_bytes(model.cfg, rows, len(task.pred_labels), training=False), device,
               f"evaluating {rows} questions per forward pass", "lower --batch-size")
    model = model.to(device)
    was_training = model.training
    model.eval()
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(seed)
    else:
        seed = None  # the caller's generator decides the questions
    sampler = question_sampler(task)
    pred_pos = task.pred_pos.to(device)
    n_pred = len(task.pred_labels)
    digit_wrong = torch.zeros(n_pred, dtype=torch.int64)
    wrong = 0
    cases: dict[str, list[int]] = {}  # class -> [questions, wrong], in the task's order of classes
    failures = []
    start = time.perf_counter()
    bar = tqdm(total=n_questions, unit="q", unit_scale=True, disable=not progress, desc="evaluate")
    try:
        done = 0
        while done < n_questions:
            size = min(batch_size, n_questions - done)
            batch = sampler.sample(size, generator).to(device)
            with torch.inference_mode():
                logits = model(batch.tokens, positions=pred_pos)  # [batch, n_pred, vocab]
            right = correct(logits, batch.targets)  # [batch, n_pred]
            question_right = right.all(-1)  # [batch]
            digit_wrong += (~right).sum(0).cpu()
            wrong += int((~question_right).sum())
            classes = task.question_classes(batch.meta)  # name -> [batch] bool
            members = torch.stack(list(classes.values()))  # [n_classes, batch]
            counts = torch.stack([members.sum(1), (members & ~question_right).sum(1)], 1).tolist()
            for name, (n, n_wrong) in zip(classes, counts):
                total = cases.setdefault(name, [0, 0])
                total[0] += n
                total[1] += n_wrong
            if len(failures) < max_failures and not bool(question_right.all()):
                failing = (~question_right).nonzero()[:, 0][:max_failures - len(failures)]
                failures.extend(_describe_failures(model, task, batch, failing, right))
            done += size
            bar.update(size)
    finally:
        bar.close()
        model.train(was_training)
    nines, lower = count_nines(wrong, n_questions)
    per_digit = {label: {"accuracy": 1 - int(w) / n_questions, "wrong": int(w)}
                 for label, w in zip(task.pred_labels, digit_wrong.tolist())}
    return {
        "task": task.name, "task_options": task.options(), "n_questions": n_questions, "seed": seed,
        "per_digit": per_digit,
        "digit_accuracy": 1 - int(digit_wrong.sum()) / (n_questions * n_pred),
        "question_accuracy": 1 - wrong / n_questions, "wrong": wrong,
        "nines": nines, "nines_lower_bound": lower, "nines_text": f"{'>= ' if lower else ''}{nines}",
        "cases": {name: {"n": n, "wrong": w, "accuracy": 1 - w / n} for name, (n, w) in cases.items() if n},
        "failures": failures, "failures_listed": len(failures),
        "seconds": time.perf_counter() - start,
    }


def _describe_failures(model, task, batch, rows: torch.Tensor, right: torch.Tensor) -> list[dict]:
    questions = batch.tokens[rows, :task.n_question]
    generated = greedy_answers(model, task, questions)  # [n_failing, n_answer]
    expected = task.answer_from_tokens(batch.tokens[rows])
    model_answers = task.answer_from_tokens(generated)
    texts = task.decode(questions)
    answer_texts = task.decode(generated)
    out = []
    for i in range(len(rows)):
        out.append({"question": texts[i], "expected": expected[i], "model_answer": model_answers[i],
                     "model_answer_tokens": answer_texts[i],
                     "wrong_digits": [label for label, ok in zip(task.pred_labels, right[rows[i]].tolist()) if not ok]})
    return out


def format_report(report: dict) -> str:
    """The report as a few lines of text."""
    n = report["n_questions"]
    lines = [f"{report['task']} {report['task_options']}: {n:,} questions",
             f"question accuracy {report['question_accuracy']:.7f} ({report['wrong']:,} wrong), "
             f"nines: {report['nines_text']}",
             "per digit: " + "  ".join(f"{label} {d['accuracy']:.7f} ({d['wrong']})"
                                       for label, d in report["per_digit"].items()),
             "cases: " + "  ".join(f"{name} {c['accuracy']:.6f} ({c['wrong']}/{c['n']})"
                                   for name, c in report["cases"].items())]
    if report["failures"]:
        lines.append(f"first {report['failures_listed']} failing questions (question, expected, model answer):")
        lines.extend(f"  {f['question']}  {f['expected']}  {f['model_answer']}  [{f['model_answer_tokens']}]"
                     for f in report["failures"][:20])
    return "\n".join(lines)
