"""evaluate: agrees with generating every answer one question at a time and checking it with Python
integers; the teacher-forced shortcut is exact; nines are counted as documented."""
import json

import pytest
import torch

from grokmath.analysis.evaluate import case_names, count_nines, evaluate, format_report, greedy_answers
from grokmath.tasks import make_task

from analysis_helpers import tiny_model, trained_addition


@pytest.fixture(scope="module")
def trained():
    return trained_addition(n_digits=2, steps=150)


def loop_answer(model, task, question: torch.Tensor) -> int | None:
    """Greedy generation of one question, token by token, read as a Python integer."""
    tokens = question[None]
    with torch.no_grad():
        for _ in range(task.n_answer):
            tokens = torch.cat([tokens, model(tokens)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return task.answer_from_tokens(tokens)[0]


def python_truth(task, question_text: str) -> int:
    """The right answer from the question text, with Python integers."""
    text = question_text.rstrip("=")
    for op, fn in (("+", lambda a, b: a + b), ("-", lambda a, b: a - b), ("*", lambda a, b: a * b)):
        if op in text:
            x, y = text.split(op)
            return fn(int(x), int(y))
    raise AssertionError(text)


def test_evaluate_agrees_with_a_per_question_loop(trained):
    model, task = trained
    n = 300
    report = evaluate(model, task, n_questions=n, batch_size=128, seed=5, max_failures=n, progress=False)
    # the same questions, drawn again, answered one at a time
    generator = torch.Generator().manual_seed(5)
    questions = torch.cat([task.sample(size, generator).tokens for size in (128, 128, 44)])[:, :task.n_question]
    texts = task.decode(questions)
    wrong = []
    for question, text in zip(questions, texts):
        answer = loop_answer(model, task, question)
        if answer != python_truth(task, text):
            wrong.append((text, python_truth(task, text), answer))
    assert 0 < len(wrong) < n, "the fixture should get some questions right and some wrong"
    assert report["wrong"] == len(wrong)
    assert report["question_accuracy"] == pytest.approx(1 - len(wrong) / n)
    assert [(f["question"], f["expected"], f["model_answer"]) for f in report["failures"]] == wrong
    assert sum(c["n"] for c in report["cases"].values()) == n
    assert sum(c["wrong"] for c in report["cases"].values()) == len(wrong)
    json.dumps(report)  # JSON-serialisable
    assert "question accuracy" in format_report(report)


def test_seed_batch_size_and_device_fix_the_questions(trained):
    """The report records what fixes its questions; the same three give the same report, and another
    batch size draws other questions (so it must be recorded)."""
    model, task = trained
    run = lambda bs, seed=3: evaluate(model, task, n_questions=400, batch_size=bs, seed=seed,  # noqa: E731
                                      max_failures=400, progress=False)
    a, b, c = run(100), run(100), run(400)
    assert (a["seed"], a["batch_size"], a["generator_device"]) == (3, 100, "cpu")
    assert c["batch_size"] == 400
    assert evaluate(model, task, n_questions=10, seed=3, progress=False)["batch_size"] == 1024  # a CPU's default
    assert a["failures"] == b["failures"] and a["wrong"] == b["wrong"]
    generator = torch.Generator().manual_seed(3)
    by_100 = torch.cat([task.sample(100, generator).tokens for _ in range(4)])
    assert not torch.equal(by_100, task.sample(400, torch.Generator().manual_seed(3)).tokens)
    assert [f["question"] for f in a["failures"]] != [f["question"] for f in c["failures"]]


def test_greedy_is_right_exactly_when_every_teacher_forced_digit_is(trained):
    model, task = trained
    batch = task.sample(400, torch.Generator().manual_seed(9))
    with torch.no_grad():
        forced_right = (model(batch.tokens)[:, task.pred_pos].argmax(-1) == batch.targets).all(-1)
    generated = greedy_answers(model, task, batch.tokens[:, :task.n_question])
    greedy_right = (generated == batch.tokens[:, task.n_question:]).all(-1)
    assert forced_right.any() and (~forced_right).any()
    assert torch.equal(forced_right, greedy_right)


def test_per_digit_accuracy_matches_teacher_forcing(trained):
    model, task = trained
    report = evaluate(model, task, n_questions=256, batch_size=100, seed=1, progress=False)
    generator = torch.Generator().manual_seed(1)
    batch = task.sample(100, generator), task.sample(100, generator), task.sample(56, generator)
    tokens = torch.cat([b.tokens for b in batch])
    targets = torch.cat([b.targets for b in batch])
    with torch.no_grad():
        wrong = (model(tokens)[:, task.pred_pos].argmax(-1) != targets).sum(0).tolist()
    assert [report["per_digit"][label]["wrong"] for label in task.pred_labels] == wrong


def test_uniform_evaluation_of_an_enriched_task_is_uniform():
    """A model trained with --enrich is still evaluated on uniformly random questions unless --enrich
    asks for the hard cases (a regression: 'uniform' reports once drew the training task's enrichment)."""
    from grokmath.analysis.common import question_sampler

    enriched_task = make_task("arithmetic", n_digits=6, ops={"add": 100}, enrich=True)
    plain_task = make_task("arithmetic", n_digits=6, ops={"add": 100})

    def nines_pairs(sampler):  # share of digit pairs summing to 9: 1/10 uniformly, far more enriched
        x, y, _ = sampler.draw(20000, torch.Generator().manual_seed(0))
        return ((x + y) == 9).double().mean().item()

    assert nines_pairs(question_sampler(enriched_task, False)) == pytest.approx(0.1, abs=0.01)
    assert nines_pairs(question_sampler(enriched_task, True)) > 0.25
    assert nines_pairs(question_sampler(enriched_task)) > 0.25  # analyses: the task's own distribution
    model = tiny_model(enriched_task, n_layers=1)
    run = lambda task, enrich: evaluate(model, task, n_questions=300, seed=4, max_failures=300,  # noqa: E731
                                        progress=False, enrich=enrich)
    uniform, plain, hard = run(enriched_task, False), run(plain_task, False), run(enriched_task, True)
    assert uniform["distribution"] == "uniform" and hard["distribution"] == "enriched"
    assert uniform["failures"] == plain["failures"]  # the same uniformly drawn questions
    assert uniform["failures"] != hard["failures"]


def test_arithmetic_cases_and_loop_agree_on_an_untrained_model():
    task = make_task("arithmetic", n_digits=2, ops={"add": 30, "sub": 50, "mul": 20})
    model = tiny_model(task, n_layers=1)
    report = evaluate(model, task, n_questions=64, batch_size=64, seed=2, max_failures=64, progress=False)
    assert report["wrong"] == len(report["failures"])
    generator = torch.Generator().manual_seed(2)
    sampler = make_task("arithmetic", **{**task.options(), "op_per_batch": False})
    batch = sampler.sample(64, generator)
    texts = task.decode(batch.tokens[:, :task.n_question])
    wrong = sum(loop_answer(model, task, q) != python_truth(task, t)
                for q, t in zip(batch.tokens[:, :task.n_question], texts))
    assert report["wrong"] == wrong
    names = case_names(task, batch.meta)
    for name, text in zip(names, texts):
        value = python_truth(task, text)
        if name.startswith("sub N"):
            assert value < 0
        elif name.startswith("sub M"):
            assert value >= 0
        assert name.split()[0] == {"+": "add", "-": "sub", "*": "mul"}[next(c for c in text if c in "+-*")]
    assert {n.split()[0] for n in report["cases"]} <= {"add", "sub", "mul"}


@pytest.mark.parametrize("wrong,n,nines,lower", [(1, 1_000_000, 6, False), (10, 1_000_000, 5, False),
                                                 (11, 1_000_000, 4, False), (0, 1_000_000, 6, True),
                                                 (0, 999_999, 5, True), (3, 3, 0, False), (1, 10, 1, False)])
def test_count_nines(wrong, n, nines, lower):
    assert count_nines(wrong, n) == (nines, lower)


def test_evaluate_refuses_other_tasks_and_bad_counts():
    task = make_task("modular", p=5)
    with pytest.raises(ValueError, match="addition and arithmetic"):
        evaluate(tiny_model(task, n_layers=1), task, 10, progress=False)
    task = make_task("addition", n_digits=1)
    with pytest.raises(ValueError, match="n_questions"):
        evaluate(tiny_model(task, n_layers=1), task, 0, progress=False)
