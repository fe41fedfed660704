"""Accuracy of an addition or arithmetic model over many random questions, counted in nines.

`evaluate(model, task, n_questions)` draws questions in batches from a seeded generator and runs
one teacher-forced forward per batch at the answer positions (inference mode, no hooks). That pass
gives the per-digit accuracy, and also the question accuracy of greedy generation: the model
generates the whole answer right exactly when every teacher-forced arg-max is right, because while
the prefix it has generated is correct, greedy generation and teacher forcing feed the model the
same tokens (by induction over the answer positions). So greedy generation is run only on the
failing questions, to list the answer the model actually writes.

The questions are fixed by the seed, the batch size and the generator's device (a CPU and a CUDA
generator, or batches of other sizes, draw other questions of the same distribution); the report
records all three, and the same three give the same questions.

Nines: with `wrong` of `n` questions wrong, `nines` is the largest k with wrong * 10**k <= n
(floor(-log10(wrong / n)), in exact integer arithmetic): 1 wrong in 1,000,000 is 6 ('Six9s', at
most one wrong in a million), 10 wrong is 5 (accuracy 0.99999). With none wrong it is the largest
k with 10**k <= n, a lower bound, written '>= k' in `nines_text`.

On a GPU the counting runs over a static batch (`StaticEvaluation`): each batch is drawn as before,
copied into fixed input buffers, and a captured CUDA graph of the forward adds to per-digit,
per-class and failure counters kept on the device; only the counters and the failing rows (at most
`max_failures`) reach the host, once, at the end. The capture is used only after one replay has
given exactly the counts of the same step run eagerly; otherwise, and on a CPU, the eager loop
runs (the report's 'path' and 'path_reason' say which). `enrich=True` draws the questions from the
enriched distribution (long carry and borrow cascades; analysis.common.question_sampler).

Case classes are the task's own (`task.question_classes`): addition S0..Sn (the carry-cascade
class); arithmetic 'add S<k>', 'sub M<k>' (borrow class, answer >= 0), 'sub N<k>' (negative
answers) and 'mul'.
"""
from __future__ import annotations

import time
from contextlib import nullcontext

import torch
from tqdm.auto import tqdm

from ..training.capture import CUDAGraphCapture, choose_step_path, self_checked
from ..config import check_whole
from ..training.losses import correct
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
    if not task.has_numeric_answers:
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


def default_batch_size(device) -> int:
    """Questions per forward pass: 8192 on a GPU; 1024 on a CPU, where larger batches spend their time
    allocating (a 6-digit arithmetic model evaluated about 20% faster at 1024 than at 8192)."""
    return 8192 if torch.device(device).type == "cuda" else 1024


def default_questions(device) -> int:
    """Questions to score by default: a million on a GPU (seconds), 100,000 on a CPU, where a
    million takes from ten minutes to hours (a 5-digit model: 100,000 took 150 s on a loaded 2-core
    machine). 100,000 without a failure already shows five nines."""
    return 1_000_000 if torch.device(device).type == "cuda" else 100_000


def evaluate(model, task, n_questions: int = 1_000_000, batch_size: int | None = None, seed: int = 0,
             generator: torch.Generator | None = None, device=None, max_failures: int = 100,
             progress: bool = True, enrich: bool = False, step_path: str = "auto", capturer=None) -> dict:
    """Per-digit and question accuracy over `n_questions` random questions (see the module doc).

    enrich: draw from the task's enriched distribution (long carry and borrow cascades;
    analysis.common.question_sampler) instead of uniformly. batch_size: see `default_batch_size`.
    step_path: 'auto' (the captured forward on a GPU, see `static_counts`, else eager), 'eager' or
    'static' (the static batch on any device, captured by `capturer` if given); the report says
    which ran ('path', 'path_reason').

    Returns a JSON-serialisable dict: n_questions, per_digit {label: {accuracy, wrong}},
    digit_accuracy, question_accuracy, wrong, nines, nines_lower_bound, nines_text, cases
    {name: {n, wrong, accuracy}}, failures (up to `max_failures`: question, expected,
    model_answer, model_answer_tokens, wrong_digits), seconds.
    """
    _check_task(task)
    check_whole("n_questions", n_questions, 1)
    device = model_device(model) if device is None else torch.device(device)
    batch_size = default_batch_size(device) if batch_size is None else batch_size
    check_whole("batch_size", batch_size, 1)
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
    sampler = question_sampler(task, enrich)
    path, reason = choose_step_path(step_path, device, [model], capturer=capturer)  # cfg None: a forward
    start = time.perf_counter()
    bar = tqdm(total=n_questions, unit="q", unit_scale=True, disable=not progress, desc="evaluate")
    try:
        counts = None
        if path != "eager":
            with torch.cuda.device(device) if device.type == "cuda" else nullcontext():  # its streams and graph
                counts, why_not = static_counts(model, task, sampler, generator, n_questions, batch_size, device,
                                                max_failures, bar,
                                                None if path == "static" else capturer or CUDAGraphCapture())
            if counts is None:
                path, reason = "eager", why_not
        if counts is None:
            counts = eager_counts(model, task, sampler, generator, n_questions, batch_size, device, max_failures, bar)
        digit_wrong, wrong, cases, fail_tokens, fail_right = counts
        failures = _describe_failures(model, task, fail_tokens, fail_right) if len(fail_tokens) else []
    finally:
        bar.close()
        model.train(was_training)
    nines, lower = count_nines(wrong, n_questions)
    per_digit = {label: {"accuracy": 1 - int(w) / n_questions, "wrong": int(w)}
                 for label, w in zip(task.pred_labels, digit_wrong)}
    return {
        "task": task.name, "task_options": task.options(), "n_questions": n_questions, "seed": seed,
        "batch_size": batch_size, "generator_device": generator.device.type,  # with the seed, they fix the questions
        "distribution": "enriched" if enrich else "uniform",
        "per_digit": per_digit,
        "digit_accuracy": 1 - int(sum(digit_wrong)) / (n_questions * len(task.pred_labels)),
        "question_accuracy": 1 - wrong / n_questions, "wrong": wrong,
        "nines": nines, "nines_lower_bound": lower, "nines_text": f"{'>= ' if lower else ''}{nines}",
        "cases": {name: {"n": n, "wrong": w, "accuracy": 1 - w / n} for name, (n, w) in cases.items() if n},
        "failures": failures, "failures_listed": len(failures),
        "path": path, "path_reason": reason,
        "seconds": time.perf_counter() - start,
    }


def eager_counts(model, task, sampler, generator, n_questions, batch_size, device, max_failures, bar):
    """Per batch: one forward, counts read to the host. Returns (digit wrong [n_pred], wrong, cases
    {name: [n, wrong]}, failing rows' tokens [n_fail, n_ctx], their per-digit right [n_fail, n_pred])."""
    pred_pos = task.pred_pos.to(device)
    digit_wrong = torch.zeros(len(task.pred_labels), dtype=torch.int64)
    wrong = 0
    cases: dict[str, list[int]] = {}  # class -> [questions, wrong], in the task's order of classes
    fail_tokens, fail_right, listed = [], [], 0
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
        if listed < max_failures and not bool(question_right.all()):
            failing = (~question_right).nonzero()[:, 0][:max_failures - listed]
            fail_tokens.append(batch.tokens[failing])
            fail_right.append(right[failing])
            listed += len(failing)
        done += size
        bar.update(size)
    cat = (lambda parts: torch.cat(parts)) if fail_tokens else (lambda parts: torch.zeros(0))  # noqa: E731
    return digit_wrong.tolist(), wrong, cases, cat(fail_tokens), cat(fail_right)


class StaticEvaluation:
    """Evaluation's counts kept on the device, for a batch read from static input buffers (tokens,
    targets and class membership, filled by copy) so that its forward can be captured: per-digit
    wrong counts, per-class question and wrong counts, and the first `max_failures` failing rows
    (tokens and per-digit right), appended in order at a device index; one host read at the end."""

    def __init__(self, task, class_names: list[str], max_failures: int, device):
        n_pred, n_ctx = len(task.pred_labels), task.n_ctx
        self.class_names, self.max_failures = class_names, max_failures
        self.digit_wrong = torch.zeros(n_pred, dtype=torch.int64, device=device)
        self.class_counts = torch.zeros(len(class_names), 2, dtype=torch.int64, device=device)  # [n, wrong]
        self.wrong = torch.zeros((), dtype=torch.int64, device=device)
        # one spare row at the end takes the rows not kept (a fixed-shape scatter needs somewhere to put them)
        self.fail_tokens = torch.zeros(max_failures + 1, n_ctx, dtype=torch.int64, device=device)
        self.fail_right = torch.ones(max_failures + 1, n_pred, dtype=torch.bool, device=device)
        self.fail_count = torch.zeros((), dtype=torch.int64, device=device)

    def tensors(self) -> list[torch.Tensor]:
        return [self.digit_wrong, self.class_counts, self.wrong, self.fail_tokens, self.fail_right, self.fail_count]

    def step_fn(self, model, pred_pos, tokens, targets, members):
        """The counting step over these input buffers (tokens [batch, n_ctx], targets [batch, n_pred],
        members [n_classes, batch] bool), as a function of no arguments."""
        @torch.no_grad()
        def step():
            logits = model(tokens, positions=pred_pos)  # [batch, n_pred, vocab]
            right = correct(logits, targets)  # [batch, n_pred]
            failing = ~right.all(-1)  # [batch]
            self.digit_wrong.add_((~right).sum(0))
            self.wrong.add_(failing.sum())
            self.class_counts.add_(torch.stack([members.sum(1), (members & failing).sum(1)], 1))
            if self.max_failures:  # the first failing rows, in order, to slots fail_count, fail_count + 1, ...
                first = torch.sort((~failing).to(torch.int8), stable=True).indices[:self.max_failures]  # [m]
                slot = self.fail_count + torch.arange(len(first), device=first.device)
                slot = torch.where(failing[first] & (slot < self.max_failures), slot, self.max_failures)
                self.fail_tokens.index_copy_(0, slot, tokens[first])
                self.fail_right.index_copy_(0, slot, right[first])
            self.fail_count.add_(failing.sum())
        return step

    def result(self):
        listed = min(int(self.fail_count), self.max_failures)
        cases = {name: [int(n), int(w)] for name, (n, w) in zip(self.class_names, self.class_counts.tolist())}
        return (self.digit_wrong.tolist(), int(self.wrong), cases, self.fail_tokens[:listed].clone(),
                self.fail_right[:listed].clone())


def static_counts(model, task, sampler, generator, n_questions, batch_size, device, max_failures, bar, capturer):
    """eager_counts' numbers with the forward over a static batch, captured by `capturer` (None: run as
    it is) once it has passed a self-check against the same step run eagerly. Returns (counts, None),
    or (None, why) when the capture failed or disagreed (nothing counted yet: the caller runs eager)."""
    pred_pos = task.pred_pos.to(device)
    size = min(batch_size, n_questions)
    probe = sampler.sample(size, torch.Generator(device=generator.device).manual_seed(1))  # shapes and names
    class_names = list(task.question_classes(probe.meta))
    counts = StaticEvaluation(task, class_names, max_failures, device)
    tokens, targets = probe.tokens.to(device), probe.targets.to(device)
    members = torch.stack(list(task.question_classes(probe.meta).values())).to(device)
    step = replay = counts.step_fn(model, pred_pos, tokens, targets, members)
    if capturer is not None:
        replay, why_not = checked_replay(step, counts.tensors(), capturer)
        if replay is None:
            return None, why_not
    done = 0
    while done < n_questions:
        part = min(size, n_questions - done)
        batch = sampler.sample(part, generator).to(device)
        classes = torch.stack(list(task.question_classes(batch.meta).values()))  # [n_classes, part]
        if part == size:
            tokens.copy_(batch.tokens)
            targets.copy_(batch.targets)
            members.copy_(classes)
            replay()
        else:  # the last, smaller batch: the same step on buffers of its own size, uncaptured
            counts.step_fn(model, pred_pos, batch.tokens, batch.targets, classes)()
        done += part
        bar.update(part)
    result = counts.result()
    digit_wrong, wrong, cases, _, _ = result
    counted = sum(n for n, _ in cases.values())
    if counted != n_questions or sum(w for _, w in cases.values()) != wrong or max(digit_wrong, default=0) > wrong:
        raise RuntimeError(f"the captured evaluation counted {counted:,} questions of {n_questions:,} (a bug): "
                           "rerun with --no-capture")
    return result, None


def checked_replay(step, state: list[torch.Tensor], capturer):
    """(replay, None) if `capturer`'s replay of `step` changes `state` exactly as step run eagerly does,
    else (None, why); `state` is left as it was (the training step's self-check, capture.self_checked)."""
    def snapshot():
        return [t.clone() for t in state]

    def restore(saved):
        for t, b in zip(state, saved):
            t.copy_(b)

    def differ(reference, replayed):
        return None if all(torch.equal(r, t) for r, t in zip(reference, replayed)) else "counts differ"

    return self_checked(lambda: capturer(step), step, lambda replay: replay(), snapshot, restore, snapshot(), differ,
                        ("capturing the forward", "the eager forward of the self-check",
                         "replaying the captured forward"),
                        "the captured forward failed its self-check against the eager forward ({})")


def _describe_failures(model, task, tokens: torch.Tensor, right: torch.Tensor) -> list[dict]:
    """The failing questions (full rows `tokens`, `right` [n, n_pred] per digit) with the answer greedy
    generation writes."""
    questions = tokens[:, :task.n_question]
    generated = greedy_answers(model, task, questions)  # [n_failing, n_answer]
    expected = task.answer_from_tokens(tokens)
    model_answers = task.answer_from_tokens(generated)
    texts = task.decode(questions)
    answer_texts = task.decode(generated)
    expected_texts = task.decode(tokens[:, task.n_question:])  # as the model must write it: leading zeros, sign
    out = []
    for i in range(len(tokens)):
        out.append({"question": texts[i], "expected": expected[i], "model_answer": model_answers[i],
                     "expected_tokens": expected_texts[i], "model_answer_tokens": answer_texts[i],
                     "wrong_digits": [label for label, ok in zip(task.pred_labels, right[i].tolist()) if not ok]})
    return out


def format_report(report: dict) -> str:
    """The report as a few lines of text."""
    n = report["n_questions"]
    lines = [f"{report['task']} {report['task_options']}: {n:,} {report['distribution']} questions",
             f"question accuracy {report['question_accuracy']:.7f} ({report['wrong']:,} wrong), "
             f"nines: {report['nines_text']}",
             "per digit: " + "  ".join(f"{label} {d['accuracy']:.7f} ({d['wrong']})"
                                       for label, d in report["per_digit"].items()),
             "cases: " + "  ".join(f"{name} {c['accuracy']:.6f} ({c['wrong']}/{c['n']})"
                                   for name, c in report["cases"].items())]
    if report["failures"]:
        shown = min(20, len(report["failures"]))
        lines.append(f"failing questions ({shown} of the {report['failures_listed']} in the report): the question, "
                     "the right answer and the model's greedy answer, both written as the model writes answers "
                     "(every digit: leading zeros, sign), and the answer digits it gets wrong when given the right "
                     "digits before each (teacher-forced)")
        width = max(len(f["question"]) for f in report["failures"][:shown])
        for f in report["failures"][:shown]:
            expected = f.get("expected_tokens", f["expected"])  # reports written before expected_tokens
            lines.append(f"  {f['question']:<{width}}  right {expected}  model {f['model_answer_tokens']}  "
                         f"wrong: {' '.join(f['wrong_digits'])}")
    return "\n".join(lines)
