"""The benchmark behind scripts/bench.py: our training loop against a straightforward one.

For a task's seed set-up (grokmath/experiments.py, as the training scripts use it) it times, interleaved in one process so that both see the same
machine state:
- steps per second of the real training loop (`grokmath.train.train`, no run folder) against a
  seed-notebook-style loop over `PlainTransformer` (full sequence, separate Q/K/V einsums, a
  `.item()` and a per-token copy to the host every step), same weights, same batches;
- a training step with idle hook points against the same model with hook points bypassed;
- `run_with_cache` against a plain forward;
- evaluation (no backward, answer positions only) examples per second against training's.
Timings are medians over rounds; peak memory is the GPU's peak allocation (CUDA) or the
process's peak resident set (CPU).
"""
from __future__ import annotations

import resource
import statistics
import time
from dataclasses import replace

import torch

from .baseline import PlainTransformer
from .config import TrainConfig
from .experiments import EXPERIMENTS, experiment_configs
from .hooks import hook_points_bypassed
from .losses import masked_mean, pred_log_probs
from .model import Transformer
from .train import make_optimizer, train, train_seeds

TASKS = tuple(EXPERIMENTS)


def build(name: str, quick: bool = False, steps: int = 20):
    """(task, ModelConfig, TrainConfig) of a seed set-up (grokmath/experiments.py); quick: its quick
    scale. `steps` steps, no checkpoints: nothing is written."""
    task, model_cfg, train_cfg = experiment_configs(name, "quick" if quick else "full")
    return task, model_cfg, replace(train_cfg, steps=steps, checkpoint_every=10**8)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def plain_training(model: PlainTransformer, task, cfg: TrainConfig, device, steps: int, gen: torch.Generator,
                   data=None, test=None):
    """The seed notebooks' loop: full-sequence forward, slice, float64 loss, host copies every step,
    and (full-batch data) the test loss every epoch, as the grokking notebooks do."""
    optimizer, scheduler = make_optimizer(model, cfg)
    pred_pos = task.pred_pos.to(device)
    losses, losses_test, per_token = [], [], []
    for _ in range(steps):
        batch = data if data is not None else task.sample(cfg.batch_size, gen).to(device)
        logits = model(batch.tokens)[:, pred_pos]  # [batch, n_pred, d_vocab_out]
        nll = -pred_log_probs(logits, batch.targets)
        loss = masked_mean(nll, batch.mask)
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        if test is not None:
            with torch.no_grad():
                test_nll = -pred_log_probs(model(test.tokens)[:, pred_pos], test.targets)
                losses_test.append(test_nll.mean().item())
        per_token.append(masked_mean(nll.detach(), batch.mask, dim=0).cpu().numpy())
    return losses


def _peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_task(name: str, quick: bool = False, device="cpu", steps: int = 20, rounds: int = 3,
               eval_batch: int | None = None, log=print) -> dict:
    """Time one task's set-up; returns a flat dict of the measurements and ratios."""
    device = torch.device(device)
    if eval_batch is None:  # CPU caches favour modest batches; a GPU wants large ones
        eval_batch = 65536 if device.type == "cuda" else 512
    task, model_cfg, cfg = build(name, quick, steps)
    ours = Transformer(model_cfg).to(device)
    plain = PlainTransformer(model_cfg, ours.state_dict()).to(device)
    gen = torch.Generator().manual_seed(0)
    full_data = test_data = None
    if cfg.data == "full":
        full_data, test_data = (b.to(device) for b in task.split(None, torch.Generator().manual_seed(0)))
    batch_size = len(full_data) if full_data is not None else cfg.batch_size

    def ours_loop():
        train(ours, task, cfg, device=device, progress=False)

    def plain_loop():
        plain_training(plain, task, cfg, device, steps, gen, full_data, test_data)

    batch = full_data if full_data is not None else task.sample(cfg.batch_size, gen).to(device)
    pred_pos = task.pred_pos.to(device)

    def step_fn(model):
        def run():
            for _ in range(steps):
                loss = masked_mean(-pred_log_probs(model(batch.tokens, positions=pred_pos), batch.targets), batch.mask)
                loss.backward()
                model.zero_grad(set_to_none=True)
        return run

    def bypassed():
        with hook_points_bypassed(ours):
            step_fn(ours)()

    def forward():
        with torch.no_grad():
            for _ in range(steps):
                ours(batch.tokens)

    def cached():
        for _ in range(steps):
            ours.run_with_cache(batch.tokens)

    eval_tokens = task.sample(eval_batch, gen).tokens.to(device) if full_data is None else full_data.tokens

    def evaluation():
        with torch.inference_mode():
            for _ in range(max(1, steps // 4)):
                ours(eval_tokens, positions=pred_pos).argmax(-1)

    def sampling():  # the data alone: a fresh batch per step, as the infinite-data loop draws it
        for _ in range(steps):
            task.sample(batch_size, gen)

    timers = {"ours": ours_loop, "plain": plain_loop, "hooks_idle": step_fn(ours), "hooks_bypassed": bypassed,
              "forward": forward, "run_with_cache": cached, "eval": evaluation, "data": sampling}
    for fn in timers.values():  # warm-up: allocator, kernels, lazy inits
        fn()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = {k: [] for k in timers}
    for _ in range(rounds):  # interleaved, so both sides see the same machine state
        for key, fn in timers.items():
            times[key].append(_time(fn, device))
    t = {k: statistics.median(v) for k, v in times.items()}
    n_eval = eval_tokens.shape[0] * max(1, steps // 4)
    out = {
        "task": name, "quick": quick, "device": str(device), "batch": batch_size, "n_ctx": task.n_ctx,
        "steps_per_s": steps / t["ours"], "plain_steps_per_s": steps / t["plain"],
        "speedup": t["plain"] / t["ours"],
        "tokens_per_s": steps * batch_size * task.n_ctx / t["ours"],
        "hook_overhead_pct": 100 * (t["hooks_idle"] / t["hooks_bypassed"] - 1),
        "run_with_cache_vs_forward": t["run_with_cache"] / t["forward"],
        "train_examples_per_s": steps * batch_size / t["ours"],
        "eval_examples_per_s": n_eval / t["eval"],
        "peak_memory_mb": _peak_memory_mb(device),
        "step_ms": 1000 * t["ours"] / steps, "data_ms_per_batch": 1000 * t["data"] / steps,
    }
    out["eval_vs_train"] = out["eval_examples_per_s"] / out["train_examples_per_s"]
    log(f"{name:13s} ours {out['steps_per_s']:8.1f} steps/s  plain {out['plain_steps_per_s']:8.1f}  "
        f"x{out['speedup']:.2f}  hooks idle {out['hook_overhead_pct']:+.1f}%  "
        f"cache/forward {out['run_with_cache_vs_forward']:.2f}  eval/train {out['eval_vs_train']:.1f}x  "
        f"peak {out['peak_memory_mb']:.0f} MB  step {out['step_ms']:.1f} ms (data {out['data_ms_per_batch']:.2f} ms)")
    return out


def check_same_losses(name: str, quick: bool = True, steps: int = 5, device="cpu") -> tuple[list, list]:
    """Per-step losses of our loop and of the plain loop from the same weights and data seed."""
    device = torch.device(device)
    task, model_cfg, cfg = build(name, quick, steps)
    ours = Transformer(model_cfg).to(device)
    plain = PlainTransformer(model_cfg, ours.state_dict()).to(device)
    result = train(ours, task, cfg, device=device, progress=False)
    full = None
    if cfg.data == "full":
        full = task.split(None, torch.Generator().manual_seed(cfg.seed))[0].to(device)
    plain_losses = plain_training(plain, task, cfg, device, steps, torch.Generator().manual_seed(cfg.seed), full)
    return result.metrics["train_loss"].tolist(), plain_losses


def bench_seeds(name: str, n_seeds: int = 8, steps: int = 200, quick: bool = False, device="cpu", log=print) -> dict:
    """Seconds per model of training n_seeds models stacked in one process against one alone."""
    device = torch.device(device)
    task, model_cfg, cfg = build(name, quick, steps)
    seeds = list(range(1, n_seeds + 1))
    train_seeds(model_cfg, task, replace(cfg, steps=5), seeds[:2], device=device, progress=False)  # warm-up
    train(Transformer(model_cfg), task, replace(cfg, steps=5), device=device, progress=False)
    stacked = _time(lambda: train_seeds(model_cfg, task, cfg, seeds, device=device, progress=False), device)
    single = _time(lambda: train(Transformer(model_cfg), task, cfg, device=device, progress=False), device)
    out = {"task": name, "device": str(device), "n_seeds": n_seeds, "steps": steps,
           "seconds_per_model_stacked": stacked / n_seeds, "seconds_single": single,
           "per_model_speedup": single / (stacked / n_seeds)}
    log(f"{name:13s} {n_seeds} seeds stacked: {out['seconds_per_model_stacked']:.2f} s/model, "
        f"one alone: {single:.2f} s, x{out['per_model_speedup']:.2f} per model")
    return out
