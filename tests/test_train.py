"""The training loop, losses, schedules and Grokfast, against independent computations."""
import math
import os
import signal
import subprocess
import sys
from collections import deque
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from grokmath.training.grokfast import GradFilter
from grokmath.training.losses import accuracy, case_losses, loss_fn, per_position_loss, pred_log_probs, sequence_accuracy
from grokmath.model.transformer import Transformer
from grokmath.training.metrics import phase_change_steps
from grokmath.tasks import make_task
from grokmath.config import TrainConfig, model_config_for
from grokmath.training.train import (NonFiniteLoss, lr_factor, make_optimizer,
                            resolve_device, train)


def tiny_model(task, d_model=32, n_heads=4, n_layers=1, seed=0, **kw):
    return Transformer(model_config_for(task, d_model=d_model, n_heads=n_heads, n_layers=n_layers, seed=seed, **kw))


# ---- losses ----------------------------------------------------------------------------------

def python_log_softmax(row, index):
    """log softmax(row)[index] with Python floats (an independent truth)."""
    top = max(row)
    return row[index] - top - math.log(sum(math.exp(v - top) for v in row))


def test_pred_log_probs_is_float64_and_matches_python():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 2, 5, generator=gen) * 4
    targets = torch.randint(0, 5, (3, 2), generator=gen)
    lp = pred_log_probs(logits, targets)
    assert lp.dtype == torch.float64 and lp.shape == (3, 2)
    for b in range(3):
        for p in range(2):
            row = [float(v) for v in logits[b, p]]
            assert lp[b, p].item() == pytest.approx(python_log_softmax(row, int(targets[b, p])), abs=1e-12)


def test_float64_keeps_tiny_losses_that_float32_rounds_to_zero():
    logits = torch.tensor([[[30.0, 0.0, 0.0]]])  # p(target) = 1 - 2e-13
    loss = loss_fn(logits, torch.tensor([[0]]))
    assert loss.item() == pytest.approx(2 * math.exp(-30), rel=1e-6)
    assert F.cross_entropy(logits[0], torch.tensor([0])).item() == 0.0  # float32 loses it


def test_masked_losses_count_only_scored_entries():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 3, 6, generator=gen)
    targets = torch.randint(0, 6, (4, 3), generator=gen)
    mask = torch.tensor([[1, 0, 1], [0, 0, 1], [1, 1, 1], [0, 0, 0]], dtype=torch.bool)
    nll = -pred_log_probs(logits, targets)
    chosen = [nll[b, p].item() for b in range(4) for p in range(3) if mask[b, p]]
    assert loss_fn(logits, targets, mask).item() == pytest.approx(sum(chosen) / len(chosen))
    per_pos = per_position_loss(nll, mask)
    for p in range(3):
        vals = [nll[b, p].item() for b in range(4) if mask[b, p]]
        assert per_pos[p].item() == pytest.approx(sum(vals) / len(vals))
    # an unscored inf/NaN entry does not leak into the loss
    nll_bad = nll.clone()
    nll_bad[3, 0] = float("nan")
    assert per_position_loss(nll_bad, mask)[0].item() == pytest.approx(per_pos[0].item())


def test_accuracy_and_case_losses():
    logits = torch.zeros(2, 2, 3)
    logits[0, 0, 1] = logits[0, 1, 2] = logits[1, 0, 0] = logits[1, 1, 0] = 5.0
    targets = torch.tensor([[1, 2], [0, 1]])
    assert accuracy(logits, targets).item() == pytest.approx(0.75)
    assert sequence_accuracy(logits, targets).item() == pytest.approx(0.5)
    nll = -pred_log_probs(logits, targets)
    cases = torch.stack([torch.tensor([[True, False], [False, True]]), torch.zeros(2, 2, dtype=torch.bool)])
    out = case_losses(nll, cases)
    assert out[0].item() == pytest.approx((nll[0, 0] + nll[1, 1]).item() / 2)
    assert math.isnan(out[1].item())  # a case with no examples is NaN, not 0


# ---- schedule, device, config -----------------------------------------------------------------

def test_warmup_schedule_is_the_notebooks_lambda():
    cfg = TrainConfig(steps=100, lr=1e-3)
    assert [lr_factor(cfg, s) for s in (0, 1, 5, 10, 50)] == [min(s / 10, 1) for s in (0, 1, 5, 10, 50)]


def test_cosine_schedule_matches_torchs_sequential_lr():
    """The arithmetic notebook's LinearLR(start 0.01) + CosineAnnealingLR, stepped by torch itself."""
    steps = 50
    cfg = TrainConfig(steps=steps, lr=8e-5, schedule="cosine")
    assert cfg.warmup == steps // 5
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=8e-5)
    s1 = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.01, total_iters=cfg.warmup)
    s2 = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps - cfg.warmup)
    ref = torch.optim.lr_scheduler.SequentialLR(opt, [s1, s2], milestones=[cfg.warmup])
    model = torch.nn.Linear(1, 1)
    _, ours = make_optimizer(model, cfg)
    for _ in range(steps):
        assert ours.get_last_lr()[0] == pytest.approx(ref.get_last_lr()[0], rel=1e-9, abs=1e-15)
        opt.step()
        ref.step()
        ours.optimizer.step()
        ours.step()


@pytest.mark.parametrize("bad", [dict(steps=0), dict(steps=-5), dict(lr=0.0), dict(lr=-1e-3), dict(lr=5.0),
                                 dict(batch_size=0), dict(weight_decay=-1.0), dict(lr=float("nan")),
                                 dict(schedule="linear"), dict(data="finite"), dict(data="stream"),
                                 dict(grokfast="sma"), dict(checkpoint_every=0), dict(betas=(0.9, 1.5))])
def test_train_config_refuses_bad_values(bad):
    with pytest.raises(ValueError, match="(use|give) "):  # the message says what to do
        TrainConfig(**bad)


def test_train_config_round_trips():
    cfg = TrainConfig(steps=7, schedule="cosine", data="finite", n_train=5, grokfast="ma")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="no field"):
        TrainConfig.from_dict({"stepz": 3})


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="use 'cpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cpu"):
            resolve_device("cuda")
        assert resolve_device(None).type == "cpu"


# ---- the loop ---------------------------------------------------------------------------------

def test_same_seed_same_losses_other_seed_other_losses():
    task = make_task("addition", n_digits=2)
    runs = [train(tiny_model(task), task, TrainConfig(steps=15, lr=1e-3, seed=s), device="cpu", progress=False)
            for s in (4, 4, 5)]
    a, b, c = (r.metrics for r in runs)
    pd.testing.assert_frame_equal(a, b)
    assert not np.array_equal(a["train_loss"].to_numpy(), c["train_loss"].to_numpy())


def test_two_processes_give_the_same_run_bit_for_bit(tmp_path):
    """The same command run twice, each in a fresh process (as a user re-runs it, or `--config`):
    metrics.csv byte for byte. At the main job's sequence length with a model wide enough for ATen
    to split work over threads, the embedding's backward (then `W_E[tokens]`) used to add rows in an
    order that differed between processes: losses differed by about 1e-8 after 30 steps."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "train_addition.py"
    flags = ["--digits", "5", "--steps", "30", "--d-model", "64", "--d-mlp", "256", "--checkpoint-every", "30",
             "--device", "cpu", "--no-progress", "--no-plots", "--out", str(tmp_path)]
    two_threads = {**os.environ, "OMP_NUM_THREADS": "2"}  # what a user's run has (the tests' own runs take 1)
    for name in ("a", "b"):
        subprocess.run([sys.executable, str(script), *flags, "--run-name", name], check=True, capture_output=True,
                       env=two_threads)
    assert (tmp_path / "a" / "metrics.csv").read_bytes() == (tmp_path / "b" / "metrics.csv").read_bytes()


def test_metrics_rows_are_the_checkpoint_loss_on_that_steps_batch(tmp_path):
    """Row k of metrics.csv = loss of checkpoint k on the k-th batch of the seeded stream, recomputed
    here with F.cross_entropy in float64; case columns from carries computed with Python integers."""
    from grokmath.store.checkpoint import RunDir

    task = make_task("addition", n_digits=3)
    cfg = TrainConfig(steps=12, lr=3e-3, batch_size=16, seed=11, checkpoint_every=5)
    run = RunDir(tmp_path / "run")
    run.create({"model": {}, "task": {"name": "addition"}, "train": {}})
    model = tiny_model(task, seed=2)
    metrics = train(model, task, cfg, run.path, device="cpu", progress=False).metrics
    assert list(metrics["step"]) == list(range(12))
    assert run.model_steps() == [0, 5, 10, 12]
    gen = torch.Generator().manual_seed(cfg.seed)
    batches = [task.sample(cfg.batch_size, gen) for _ in range(11)]
    for k in (0, 5, 10):
        check = tiny_model(task, seed=2)
        check.load_state_dict(torch.load(run.model_path(k), weights_only=True))
        batch = batches[k]
        with torch.no_grad():
            logits = check(batch.tokens)[:, task.pred_pos].to(torch.float64)  # full forward, then select
        nll = F.cross_entropy(logits.transpose(1, 2), batch.targets, reduction="none")  # [batch, n_pred]
        row = metrics.iloc[k]
        assert row["train_loss"] == pytest.approx(nll.mean().item(), rel=1e-5)
        for i, label in enumerate(task.pred_labels):
            assert row[f"loss_{label}"] == pytest.approx(nll[:, i].mean().item(), rel=1e-5)
        # BaseAdd at digit A_i: no carry into place i, from the operands as Python integers
        n = task.n_digits
        xs = [int("".join(map(str, r[:n].tolist()))) for r in batch.tokens]
        ys = [int("".join(map(str, r[n + 1:2 * n + 1].tolist()))) for r in batch.tokens]
        for i, label in enumerate(task.pred_labels):
            place = n - i  # A3 is place 3 (the carry-out digit), A0 the units
            carry_in = [(x % 10 ** place) + (y % 10 ** place) >= 10 ** place for x, y in zip(xs, ys)]
            chosen = [nll[b, i].item() for b in range(len(xs)) if not carry_in[b]]
            expected = sum(chosen) / len(chosen) if chosen else float("nan")
            assert row[f"case_BaseAdd/{label}"] == pytest.approx(expected, rel=1e-5, nan_ok=True)
    assert pd.read_csv(run.metrics_path).shape == metrics.shape


def test_learning_happens_on_skip_trigrams():
    task = make_task("skip_trigram", rand_size=4, seq_len=8)
    model = tiny_model(task, d_model=32, n_heads=1, d_head=8, attn_only=True, seed=6798)
    m = train(model, task, TrainConfig(steps=150, lr=1e-2, batch_size=64, seed=1), device="cpu", progress=False).metrics
    assert m["train_loss"].iloc[-10:].mean() < 0.3 * m["train_loss"].iloc[:10].mean()
    assert [c for c in m.columns if c.startswith("case_")] == [f"case_target_{t}" for t in range(4)]


def test_finite_and_full_batch_regimes():
    task = make_task("addition", n_digits=2)
    cfg = TrainConfig(steps=6, lr=1e-3, data="finite", n_train=40, n_test=30, batch_size=None, test_every=2)
    m = train(tiny_model(task), task, cfg, device="cpu", progress=False).metrics
    assert m["test_loss"].notna().tolist() == [True, False] * 3
    assert {"test_acc", "test_loss_A0"} <= set(m.columns)
    # full batch on the fixed set: the first step's loss is the initial model's loss on that set
    train_set, test_set = task.split(40, torch.Generator().manual_seed(cfg.seed), 30)
    with torch.no_grad():
        nll = -pred_log_probs(tiny_model(task)(train_set.tokens, positions=task.pred_pos), train_set.targets)
        test_nll = -pred_log_probs(tiny_model(task)(test_set.tokens, positions=task.pred_pos), test_set.targets)
    assert m["train_loss"].iloc[0] == pytest.approx(nll.mean().item(), rel=1e-6)
    assert m["test_loss"].iloc[0] == pytest.approx(test_nll.mean().item(), rel=1e-6)

    task = make_task("modular", p=13)
    cfg = TrainConfig(steps=5, lr=1e-3, weight_decay=1.0, data="full", batch_size=None)
    m = train(tiny_model(task), task, cfg, device="cpu", progress=False).metrics
    assert ((m["train_acc"] >= 0) & (m["train_acc"] <= 1) & (m["test_acc"] >= 0) & (m["test_acc"] <= 1)).all()
    assert m["test_loss"].notna().all()


def test_minibatches_from_a_finite_set_and_masked_tasks():
    task = make_task("induction", seq_len=13, subseq_len=3, num_repeats=3, vocab_size=10)
    cfg = TrainConfig(steps=4, lr=1e-3, data="finite", n_train=20, batch_size=8)
    m = train(tiny_model(task, n_layers=2, attn_only=True), task, cfg, device="cpu", progress=False).metrics
    assert m["train_loss"].notna().all()
    # positions never inside a repeat are never scored: their per-position loss is NaN, not 0
    assert m["loss_P0"].isna().all() and m["loss_P11"].notna().all()


def nan_at(model, bad):
    """Make `model`'s logits NaN on its forward call number `bad` (0-based): a diverging step."""
    calls = [0]

    def hook(module, args, output):
        calls[0] += 1
        return output * float("nan") if calls[0] - 1 == bad else output

    model.register_forward_hook(hook)
    return model


def test_nonfinite_loss_stops_naming_the_step_or_is_skipped():
    task = make_task("addition", n_digits=2)
    with pytest.raises(NonFiniteLoss, match="at step 7"):
        train(nan_at(tiny_model(task), 7), task, TrainConfig(steps=20), device="cpu", progress=False)
    model = nan_at(tiny_model(task), 7)
    result = train(model, task, TrainConfig(steps=20, skip_nonfinite=True), device="cpu", progress=False)
    assert result.n_skipped == 1 and np.isnan(result.metrics["train_loss"].iloc[7])
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert np.isfinite(result.metrics["train_loss"].drop(index=7)).all()


def test_phase_change_steps():
    m = pd.DataFrame({"step": range(6), "loss_A1": [1, .5, .09, .2, .05, .01], "loss_A0": [1] * 6,
                      "train_loss": [0] * 6})
    assert phase_change_steps(m, 0.1) == {"A1": 2, "A0": None}
    assert phase_change_steps(m, 0.1, window=2) == {"A1": 5, "A0": None}  # (.05+.01)/2


# ---- Grokfast -----------------------------------------------------------------------------------

def paper_ema(model, grads, alpha, lamb):
    """gradfilter_ema as printed in the Grokfast paper's code (an independent reference)."""
    if grads is None:
        grads = {n: p.grad.data.detach() for n, p in model.named_parameters() if p.requires_grad}
    for n, p in model.named_parameters():
        if p.requires_grad:
            grads[n] = grads[n] * alpha + p.grad.data.detach() * (1 - alpha)
            p.grad.data = p.grad.data + grads[n] * lamb
    return grads


def paper_ma(model, grads, window, lamb):
    if grads is None:
        grads = {n: deque(maxlen=window) for n, p in model.named_parameters() if p.requires_grad}
    for n, p in model.named_parameters():
        if p.requires_grad:
            grads[n].append(p.grad.data.detach().clone())
            if len(grads[n]) == window:
                p.grad.data = p.grad.data + sum(grads[n]) / len(grads[n]) * lamb
    return grads


@pytest.mark.parametrize("kind", ["ema", "ma"])
def test_grokfast_matches_the_papers_filters(kind):
    torch.manual_seed(0)
    ours, ref = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    ref.load_state_dict(ours.state_dict())
    filt, state = GradFilter(kind, alpha=0.9, lamb=2.0, window=3), None
    for step in range(6):
        x = torch.randn(4, 3)
        for m in (ours, ref):
            m.zero_grad()
            (m(x) ** 2).sum().backward()
        filt.apply(ours)
        state = paper_ema(ref, state, 0.9, 2.0) if kind == "ema" else paper_ma(ref, state, 3, 2.0)
        for (_, a), (_, b) in zip(ours.named_parameters(), ref.named_parameters()):
            torch.testing.assert_close(a.grad, b.grad)
        with torch.no_grad():  # move the weights so later gradients differ
            for m in (ours, ref):
                for p in m.parameters():
                    p -= 0.1 * p.grad


def test_grokfast_in_the_loop_changes_training_and_is_reproducible():
    task = make_task("addition", n_digits=2)
    plain = train(tiny_model(task), task, TrainConfig(steps=12, lr=1e-3), device="cpu", progress=False).metrics
    fast = [train(tiny_model(task), task, TrainConfig(steps=12, lr=1e-3, grokfast="ema"), device="cpu",
                  progress=False).metrics for _ in range(2)]
    pd.testing.assert_frame_equal(fast[0], fast[1])
    assert fast[0]["train_loss"].iloc[0] == plain["train_loss"].iloc[0]  # same model and batch at step 0
    assert not np.array_equal(fast[0]["train_loss"].to_numpy(), plain["train_loss"].to_numpy())


def test_sigint_during_training_saves_and_says_so(tmp_path):
    """SIGINT mid-run raises TrainingInterrupted after writing a resumable state at that step."""
    from grokmath.store.checkpoint import RunDir
    from grokmath.training.train import TrainingInterrupted

    def kill_at(model, at):
        calls = [0]

        def hook(module, args):
            calls[0] += 1
            if calls[0] == at:
                os.kill(os.getpid(), signal.SIGINT)

        model.register_forward_pre_hook(hook)
        return model

    task = make_task("addition", n_digits=2)
    run = RunDir(tmp_path / "r")
    run.create({"model": {}, "task": {"name": "addition"}, "train": {}})
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted, match="SIGINT at step 6") as info:
        train(kill_at(tiny_model(task), 6), task, TrainConfig(steps=30, checkpoint_every=4), run.path,
              device="cpu", progress=False)
    assert info.value.run_dir == run.path
    assert run.state_steps() == [4, 6] and run.model_steps() == [0, 4, 6]  # the model at the stop too
    assert len(pd.read_csv(run.metrics_path)) == 6
    # the handlers in place before the call are restored (whatever they were: pytest may run with SIGINT ignored)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
