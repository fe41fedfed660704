"""The captured training step (grokmath/training/capture.py) and the captured evaluation, against the eager ones.

On a CPU the static-buffer step runs uncaptured (step_path='static') and must equal today's eager
loop bit for bit: metrics rows, weights, checkpoints and resume, for every data regime, Grokfast,
the cosine schedule and K stacked seeds. Fake capturers test the self-check that guards a real
capture: a faithful one is kept, corrupting ones make the run fall back to the eager step, which
then equals the eager run, with the reason in summary.json. The tests marked `cuda` at the end run
the real CUDA-graph capture against the eager step and are skipped without a GPU
(scripts/gpu_check.sh runs them where one is lent).
"""
import json
import os
import signal
from dataclasses import replace

import pandas as pd
import pytest
import torch

from grokmath.analysis.common import question_sampler
from grokmath.analysis.evaluate import evaluate
from grokmath.training.capture import CHECK_STEPS, CapturedStepError, choose_step_path
from grokmath.store.checkpoint import RunDir
from grokmath.config import TrainConfig, model_config_for
from grokmath.training.grokfast import GradFilter, StaticGradFilter
from grokmath.model.transformer import Transformer
from grokmath.training.schedule import device_lr_factor, lr_factor
from grokmath.tasks import make_task
from grokmath.training.train import TrainingInterrupted, train, train_seeds

from analysis_helpers import trained_addition
from script_helpers import load_script
from test_train import paper_ema, paper_ma

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_check.sh)")


def tiny(task, seed=0, **settings):
    return Transformer(model_config_for(task, **{"d_model": 16, "n_heads": 2, "seed": seed, **settings}))


INDUCTION = {"seq_len": 13, "subseq_len": 3, "num_repeats": 3, "vocab_size": 10}
SETUPS = {  # name: (task, task options, model settings, TrainConfig settings)
    "addition": ("addition", {"n_digits": 2}, {}, dict(batch_size=16)),
    "finite-with-test": ("addition", {"n_digits": 2}, {},
                         dict(data="finite", n_train=40, n_test=30, batch_size=None, test_every=3)),
    "finite-minibatch": ("addition", {"n_digits": 2}, {}, dict(data="finite", n_train=40, n_test=20, batch_size=8)),
    "modular-full": ("modular", {"p": 7}, {}, dict(data="full", batch_size=None, weight_decay=1.0)),
    "grokfast-ema": ("addition", {"n_digits": 2}, {}, dict(batch_size=16, grokfast="ema")),
    "grokfast-ma": ("addition", {"n_digits": 2}, {}, dict(batch_size=16, grokfast="ma", grokfast_window=5)),
    "arithmetic-cosine": ("arithmetic", {"n_digits": 2}, {"normalization": "LN", "attn_bias": True},
                          dict(batch_size=16, schedule="cosine")),
    "induction-mask": ("induction", INDUCTION, {"n_layers": 2, "attn_only": True}, dict(batch_size=8)),
}


def setup(name, steps=60, **changes):
    task_name, options, model, train_settings = SETUPS[name]
    task = make_task(task_name, **options)
    return task, model, TrainConfig(**{"steps": steps, "lr": 3e-3, "checkpoint_every": 10**6, **train_settings,
                                       **changes})


def assert_same_weights(a, b):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def assert_same_tree(a, b, where="state"):
    """Checkpoint contents equal: tensors bit for bit (dtype too), everything else by ==."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), (where, a.keys(), b.keys())
        for key in a:
            assert_same_tree(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


class Fake:
    """A capturer for tests: `make(fn)` returns the 'replay'."""

    def __init__(self, name, make):
        self.name, self.make = name, make

    def __call__(self, fn):
        return self.make(fn)


# ---- the device schedule ------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [TrainConfig(steps=50), TrainConfig(steps=50, warmup=0), TrainConfig(steps=30, warmup=45),
                                 TrainConfig(steps=53, schedule="cosine"), TrainConfig(steps=40, schedule="cosine", warmup=0),
                                 TrainConfig(steps=9, schedule="cosine", warmup=9)])
def test_device_schedule_equals_lr_factor_at_every_step(cfg):
    for step in range(cfg.steps + 3):  # past the end too: a resumed run may be extended
        assert device_lr_factor(cfg, torch.tensor(step)).item() == lr_factor(cfg, step), step


@pytest.mark.parametrize("kind", ["ema", "ma"])
def test_static_grokfast_filter_matches_the_papers_filters_and_keeps_their_state_format(kind):
    """StaticGradFilter against the Grokfast paper's code (test_train's references) and, bit for bit,
    the eager GradFilter, past a full MA window; its state passes through the eager filter's format
    and back mid-way."""
    torch.manual_seed(0)
    ours, eager_model, ref = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    eager_model.load_state_dict(ours.state_dict())
    ref.load_state_dict(ours.state_dict())
    filt, state = StaticGradFilter(kind, ours.named_parameters(), alpha=0.9, lamb=2.0, window=3), None
    eager = GradFilter(kind, alpha=0.9, lamb=2.0, window=3)
    for step in range(7):
        x = torch.randn(4, 3)
        for m in (ours, eager_model, ref):
            m.zero_grad()
            (m(x) ** 2).sum().backward()
        filt.apply(ours)
        eager.apply(eager_model)
        state = paper_ema(ref, state, 0.9, 2.0) if kind == "ema" else paper_ma(ref, state, 3, 2.0)
        for a, b, c in zip(ours.parameters(), eager_model.parameters(), ref.parameters()):
            assert torch.equal(a.grad, b.grad)
            torch.testing.assert_close(a.grad, c.grad)
        if step == 3:  # through the eager filter's format and back
            assert_same_tree(filt.state_dict(), eager.state_dict())
            middle = GradFilter(kind, alpha=0.9, lamb=2.0, window=3)
            middle.load_state_dict(filt.state_dict())
            filt = StaticGradFilter(kind, ours.named_parameters(), alpha=0.9, lamb=2.0, window=3)
            filt.load_state_dict(middle.state_dict())
        with torch.no_grad():
            for m in (ours, eager_model, ref):
                for p in m.parameters():
                    p -= 0.1 * p.grad


# ---- the static step equals the eager loop, bit for bit -------------------------------------------

@pytest.mark.parametrize("name", list(SETUPS))
def test_static_step_equals_the_eager_loop_bit_for_bit(name):
    task, model, cfg = setup(name)
    eager_model, static_model = tiny(task, **model), tiny(task, **model)
    eager = train(eager_model, task, cfg, device="cpu", progress=False)
    static = train(static_model, task, cfg, device="cpu", progress=False, step_path="static")
    assert (eager.step_path, static.step_path, static.step_path_reason) == ("eager", "static", None)
    pd.testing.assert_frame_equal(static.metrics, eager.metrics, check_exact=True)
    assert_same_weights(static_model, eager_model)
    assert eager.metrics["train_loss"].iloc[-1] < eager.metrics["train_loss"].iloc[0]  # it trained


def test_stacked_seeds_static_step_equals_the_eager_loop():
    task = make_task("addition", n_digits=2)
    model_cfg = model_config_for(task, d_model=16, n_heads=2, seed=0)
    cfg = TrainConfig(steps=30, lr=3e-3, batch_size=16, grokfast="ma", grokfast_window=4, schedule="cosine")
    eager = train_seeds(model_cfg, task, cfg, [3, 5, 7], device="cpu", progress=False)
    static = train_seeds(model_cfg, task, cfg, [3, 5, 7], device="cpu", progress=False, step_path="static")
    for a, b in zip(eager, static):
        assert b.step_path == "static"
        pd.testing.assert_frame_equal(b.metrics, a.metrics, check_exact=True)
    assert eager[0].metrics["train_loss"].iloc[-1] != eager[1].metrics["train_loss"].iloc[-1]


def make_run(path):
    run = RunDir(path)
    run.create({"model": {}, "task": {"name": "x"}, "train": {}})
    return run.path


@pytest.mark.parametrize("name", ["grokfast-ema", "grokfast-ma", "finite-with-test"])
def test_static_checkpoints_equal_the_eager_loops(tmp_path, name):
    """Every part of a resumable state: weights, AdamW state and hyperparameters, the scheduler, the
    generators and the Grokfast filter, so either step can resume the other's run."""
    task, model, cfg = setup(name, steps=16, checkpoint_every=8, schedule="cosine")
    train(tiny(task, **model), task, cfg, make_run(tmp_path / "eager"), device="cpu", progress=False)
    train(tiny(task, **model), task, cfg, make_run(tmp_path / "static"), device="cpu", progress=False, step_path="static")
    for step in (8, 16):
        eager, static = (RunDir(tmp_path / kind).load_state(step) for kind in ("eager", "static"))
        assert_same_tree(static, eager)
    eager_csv, static_csv = ((tmp_path / kind / "metrics.csv").read_text() for kind in ("eager", "static"))
    assert static_csv == eager_csv


def interrupt_at(stop_step):
    def after_step(step):
        if step == stop_step:
            os.kill(os.getpid(), signal.SIGINT)  # the loop saves and stops at the next step
    return after_step


@pytest.mark.parametrize("first, second", [("static", "static"), ("eager", "static"), ("static", "eager")])
def test_static_step_resumes_bit_identically(tmp_path, first, second):
    task, model, cfg = setup("grokfast-ema", steps=24, checkpoint_every=8, schedule="cosine")
    reference_model = tiny(task, **model)
    reference = train(reference_model, task, cfg, device="cpu", progress=False)
    path = make_run(tmp_path / "run")
    with pytest.raises(TrainingInterrupted, match="at step 14"):
        train(tiny(task, **model), task, cfg, path, device="cpu", progress=False, step_path=first, after_step=interrupt_at(13))
    assert RunDir(path).state_steps() == [8, 14]
    resumed_model = tiny(task, **model)
    resumed = train(resumed_model, task, cfg, path, resume=True, device="cpu", progress=False, step_path=second)
    assert resumed.step_path == second
    pd.testing.assert_frame_equal(resumed.metrics, reference.metrics, check_exact=True)
    assert_same_weights(resumed_model, reference_model)


# ---- the self-check and the fallback --------------------------------------------------------------

def nudged(model):
    """A 'replay' that runs the step, then moves one weight by a relative 1e-5 (a slightly wrong graph)."""
    def make(fn):
        def replay():
            fn()
            with torch.no_grad():
                next(model.parameters()).mul_(1 + 1e-5)
        return replay
    return make


def raises(fn):
    raise RuntimeError("operation not permitted when stream is capturing\nsecond line")


@pytest.mark.parametrize("fake, fragment", [
    ("noop", "failed its self-check against the eager step (embed.W_E: differs"),
    ("twice", "failed its self-check against the eager step (embed.W_E: differs"),
    ("nudged", "failed its self-check against the eager step (embed.W_E: differs"),
    ("raises", "capturing the step failed (RuntimeError: operation not permitted when stream is capturing)"),
])
def test_a_corrupting_capture_falls_back_to_the_eager_step_and_says_why(tmp_path, fake, fragment):
    task, model, cfg = setup("finite-with-test", steps=20)
    reference = train(tiny(task, **model), task, cfg, device="cpu", progress=False)
    m = tiny(task, **model)
    make = {"noop": lambda fn: (lambda: None), "twice": lambda fn: (lambda: (fn(), fn())),
            "nudged": nudged(m), "raises": raises}[fake]
    warnings = []
    result = train(m, task, cfg, make_run(tmp_path / "run"), device="cpu", progress=False, step_path="static",
                   capturer=Fake("fake_graph", make), warn=warnings.append)
    assert result.step_path == "eager" and fragment in result.step_path_reason
    assert warnings and fragment in warnings[0]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["step_path"] == "eager" and fragment in summary["step_path_reason"]
    pd.testing.assert_frame_equal(result.metrics, reference.metrics, check_exact=True)  # the fallback is exact


def test_a_faithful_capture_passes_the_self_check_and_is_used(tmp_path):
    task, model, cfg = setup("grokfast-ma", steps=20)
    reference = train(tiny(task, **model), task, cfg, device="cpu", progress=False)
    replays = [0]

    def make(fn):
        def replay():
            replays[0] += 1
            fn()
        return replay

    result = train(tiny(task, **model), task, cfg, make_run(tmp_path / "run"), device="cpu", progress=False, step_path="static",
                   capturer=Fake("fake_graph", make))
    assert (result.step_path, result.step_path_reason) == ("fake_graph", None)
    assert replays[0] == CHECK_STEPS + cfg.steps  # the self-check's replays, then one per step
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["step_path"], summary["step_path_reason"], summary["tf32"]) == ("fake_graph", None, False)
    pd.testing.assert_frame_equal(result.metrics, reference.metrics, check_exact=True)


@pytest.mark.parametrize("fault", ["stops", "doubles"])
def test_a_replay_that_goes_wrong_after_the_self_check_stops_the_run(fault):
    """The flush compares every row's step and learning rate with the loop's count: a graph that stops
    writing rows, or runs twice, after passing its self-check cannot pass silently."""
    task, model, cfg = setup("addition", steps=60)

    def make(fn):
        calls = [0]

        def replay():
            calls[0] += 1
            if calls[0] <= CHECK_STEPS + 10:
                fn()
            elif fault == "doubles":
                fn()
                fn()
        return replay

    with pytest.raises(CapturedStepError, match="rerun with --no-capture"):
        train(tiny(task, **model), task, cfg, device="cpu", progress=False, step_path="static", capturer=Fake("fake_graph", make))


def test_the_eager_step_runs_where_a_capture_cannot_and_says_why(tmp_path):
    task, model, cfg = setup("addition", steps=3)
    cpu = torch.device("cpu")
    m = tiny(task, **model)
    assert choose_step_path("auto", cpu, [m], cfg, 1) == \
        ("eager", "the captured step needs a CUDA GPU; this run is on cpu")
    assert choose_step_path("eager", cpu, [m], cfg, 1)[1] == "the eager step was asked for (--no-capture)"
    assert "DistributedDataParallel" in choose_step_path("static", cpu, [m], cfg, 2)[1]
    assert "--skip-nonfinite" in choose_step_path("static", cpu, [m], replace(cfg, skip_nonfinite=True), 1)[1]
    assert choose_step_path("static", cpu, [m], cfg, 1) == ("static", None)
    with pytest.raises(ValueError, match="use one of"):
        choose_step_path("graph", cpu, [m], cfg, 1)
    m.add_hook("blocks.0.hook_resid_pre", lambda x, hook: None)  # a grokmath hook ...
    result = train(m, task, cfg, make_run(tmp_path / "a"), device="cpu", progress=False, step_path="static")
    assert result.step_path == "eager" and "hooks are attached" in result.step_path_reason
    m.reset_hooks()
    m2 = tiny(task, **model)
    handle = m2.blocks[0].register_forward_hook(lambda *args: None)  # ... or a torch one
    assert "hooks are attached" in choose_step_path("static", cpu, [m2], cfg, 1)[1]
    handle.remove()
    assert choose_step_path("static", cpu, [m2], cfg, 1) == ("static", None)
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["step_path"] == "eager" and "hooks" in summary["step_path_reason"]


def test_tf32_and_no_capture_flags_reach_config_and_summary(tmp_path):
    common = ["--digits", "2", "--d-model", "16", "--steps", "3", "--device", "cpu", "--no-progress", "--no-plots"]
    load_script("train_addition").main([*common, "--out", str(tmp_path / "a"), "--tf32", "--no-capture"])
    load_script("train_addition").main([*common, "--out", str(tmp_path / "b")])
    (a,), (b,) = (list((tmp_path / x).iterdir()) for x in "ab")
    assert json.loads((a / "config.json").read_text())["train"]["tf32"] is True
    assert json.loads((b / "config.json").read_text())["train"]["tf32"] is False
    sa, sb = (json.loads((p / "summary.json").read_text()) for p in (a, b))
    assert (sa["tf32"], sa["step_path"], sa["step_path_reason"]) == (True, "eager", "the eager step was asked for (--no-capture)")
    assert (sb["tf32"], sb["step_path"]) == (False, "eager") and "CUDA GPU" in sb["step_path_reason"]
    with pytest.raises(ValueError, match="tf32"):
        TrainConfig(tf32="yes")


# ---- evaluation -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained():
    return trained_addition(n_digits=2, steps=150)


def without_path(report):
    return {k: v for k, v in report.items() if k not in ("seconds", "path", "path_reason")}


@pytest.mark.parametrize("enrich", [False, True])
def test_static_evaluation_equals_the_eager_one(trained, enrich):
    model, task = trained
    kwargs = dict(n_questions=1000, batch_size=96, seed=3, max_failures=40, progress=False, enrich=enrich)
    eager = evaluate(model, task, **kwargs)
    static = evaluate(model, task, step_path="static", **kwargs)
    faithful = evaluate(model, task, step_path="static", capturer=Fake("fake_graph", lambda fn: fn), **kwargs)
    assert (eager["path"], static["path"], faithful["path"]) == ("eager", "static", "fake_graph")
    assert without_path(static) == without_path(eager) == without_path(faithful)
    assert 0 < eager["wrong"] < 1000 and eager["failures_listed"] == 40
    assert eager["distribution"] == ("enriched" if enrich else "uniform")


def test_a_corrupting_evaluation_capture_falls_back(trained):
    model, task = trained
    kwargs = dict(n_questions=300, batch_size=128, seed=4, progress=False)
    eager = evaluate(model, task, **kwargs)
    for make, fragment in ((lambda fn: (lambda: None), "failed its self-check"), (raises, "capturing the forward failed")):
        report = evaluate(model, task, step_path="static", capturer=Fake("fake_graph", make), **kwargs)
        assert report["path"] == "eager" and fragment in report["path_reason"]
        assert without_path(report) == without_path(eager)


def test_a_captured_evaluation_that_goes_wrong_after_its_self_check_is_caught(trained):
    model, task = trained

    def make(fn):
        calls = [0]

        def replay():  # right for the self-check, then silently skips batches
            calls[0] += 1
            if calls[0] == 1 or calls[0] % 3:
                fn()
        return replay

    with pytest.raises(RuntimeError, match="counted .* questions of 1,000 .*rerun with --no-capture"):
        evaluate(model, task, 1000, batch_size=100, progress=False, step_path="static", capturer=Fake("g", make))


def test_arithmetic_static_evaluation_equals_eager():
    task = make_task("arithmetic", n_digits=2, ops={"add": 30, "sub": 50, "mul": 20})
    model = tiny(task, n_layers=1).eval()
    kwargs = dict(n_questions=200, batch_size=64, seed=2, max_failures=64, progress=False, enrich=True)
    assert without_path(evaluate(model, task, step_path="static", **kwargs)) == without_path(evaluate(model, task, **kwargs))


def python_answer(task, text):
    x, op, y = (text[:task.n_digits], text[task.n_digits], text[task.n_digits + 1:2 * task.n_digits + 1])
    return {"+": int(x) + int(y), "-": int(x) - int(y), "*": int(x) * int(y)}[op]


@pytest.mark.parametrize("name, options", [("addition", {"n_digits": 5}),
                                           ("arithmetic", {"n_digits": 5, "ops": {"add": 50, "sub": 50}})])
def test_enriched_questions_have_long_cascades_and_right_answers(name, options):
    task = make_task(name, **options)
    n = 20000
    enriched = question_sampler(task, enrich=True).sample(n, torch.Generator().manual_seed(0))
    uniform = question_sampler(task).sample(n, torch.Generator().manual_seed(0))
    for batch in (enriched.index(slice(0, 300)),):  # answers are the arithmetic's, by Python integers
        texts = task.decode(batch.tokens[:, :task.n_question])
        assert task.answer_from_tokens(batch.tokens) == [python_answer(task, t) for t in texts]
    long_enriched = int((enriched.meta["cascade"] >= 3).sum())
    long_uniform = int((uniform.meta["cascade"] >= 3).sum())
    assert long_enriched > 4 * max(long_uniform, 1)  # carry (and borrow) chains of 3+ places
    with pytest.raises(ValueError, match="addition and arithmetic"):
        question_sampler(make_task("modular", p=5), enrich=True)


def test_evaluate_script_enrich_writes_its_own_report(tmp_path, capsys):
    common = ["--digits", "2", "--d-model", "16", "--steps", "3", "--device", "cpu", "--no-progress", "--no-plots"]
    load_script("train_addition").main([*common, "--out", str(tmp_path)])
    (run,) = list(tmp_path.iterdir())
    for extra in ([], ["--enrich"]):
        load_script("evaluate").main([str(run), "--questions", "500", "--no-progress", "--device", "cpu", *extra])
    names = sorted(p.name for p in (run / "analysis").iterdir())
    assert names == ["evaluate_step000003_n500_seed0.json", "evaluate_step000003_n500_seed0_enriched.json"]
    reports = [json.loads((run / "analysis" / name).read_text()) for name in names]
    assert [r["distribution"] for r in reports] == ["uniform", "enriched"]
    assert reports[1]["cases"]["S2"]["n"] > reports[0]["cases"]["S2"]["n"]
    capsys.readouterr()


# ---- on a GPU: the real capture against the eager step (skipped without one) -------------------------

def close_frames(a, b, rtol=1e-4):
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=rtol, atol=1e-7)


@cuda
@pytest.mark.parametrize("name", list(SETUPS))
def test_cuda_graph_step_matches_the_eager_step(name):
    task, model, cfg = setup(name, steps=60)
    eager_model, graph_model = tiny(task, **model), tiny(task, **model)
    eager = train(eager_model, task, cfg, device="cuda", progress=False, step_path="eager")
    graph = train(graph_model, task, cfg, device="cuda", progress=False)
    assert (graph.step_path, graph.step_path_reason) == ("cuda_graph", None)
    close_frames(graph.metrics, eager.metrics)
    for x, y in zip(graph_model.state_dict().values(), eager_model.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)


@cuda
def test_cuda_graph_stacked_seeds_and_resume(tmp_path):
    task = make_task("addition", n_digits=2)
    model_cfg = model_config_for(task, d_model=16, n_heads=2, seed=0)
    cfg = TrainConfig(steps=60, lr=3e-3, batch_size=16, grokfast="ema", schedule="cosine", checkpoint_every=20)
    eager = train_seeds(model_cfg, task, cfg, [3, 5, 7], device="cuda", progress=False, step_path="eager")
    graph = train_seeds(model_cfg, task, cfg, [3, 5, 7], device="cuda", progress=False)
    for a, b in zip(eager, graph):
        assert b.step_path == "cuda_graph"
        close_frames(b.metrics, a.metrics)
    task, model, cfg = setup("grokfast-ema", steps=24, checkpoint_every=8, schedule="cosine")
    reference = train(tiny(task, **model), task, cfg, device="cuda", progress=False)
    path = make_run(tmp_path / "run")
    with pytest.raises(TrainingInterrupted, match="at step 14"):
        train(tiny(task, **model), task, cfg, path, device="cuda", progress=False, after_step=interrupt_at(13))
    resumed = train(tiny(task, **model), task, cfg, path, device="cuda", resume=True, progress=False)
    assert resumed.step_path == "cuda_graph"
    close_frames(resumed.metrics, reference.metrics)


@cuda
def test_cuda_graph_evaluation_counts_equal_the_eager_ones():
    task = make_task("addition", n_digits=5)
    model = Transformer(model_config_for(task, d_model=64, n_heads=4, seed=1)).cuda().eval()
    kwargs = dict(n_questions=20000, batch_size=4096, seed=5, max_failures=30, progress=False)
    for enrich in (False, True):
        eager = evaluate(model, task, step_path="eager", enrich=enrich, **kwargs)
        graph = evaluate(model, task, enrich=enrich, **kwargs)
        assert (graph["path"], graph["path_reason"]) == ("cuda_graph", None)
        assert without_path(graph) == without_path(eager)
