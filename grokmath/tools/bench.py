"""The benchmark behind scripts/bench.py: our training loop against a straightforward one.

For a task's seed set-up (grokmath/experiments.py, as the training scripts use it) it times, interleaved in one process so that both see the same
machine state:
- steps per second of the real training loop (`grokmath.training.train.train`, no run folder; on a GPU
  in the steady state, see `steady_step_seconds`, so the captured step's one-time capture is left
  out) against a seed-notebook-style loop over `PlainTransformer` (full sequence, separate Q/K/V einsums, a
  `.item()` and a per-token copy to the host every step), same weights, same batches;
- a training step with idle hook points against the same model with hook points bypassed;
- `run_with_cache` against a plain forward;
- evaluation (no backward, answer positions only) examples per second against training's.
Timings are medians over rounds; peak memory is the GPU's peak allocation (CUDA) or the
process's peak resident set (CPU).

`bench_figures` measures issue 15's figures, each with the achieved FLOP/s beside it against the
GPU's fp32 peak (its datasheet figure, and a large fp32 matmul timed on the spot): the 5-digit
job's wall time (the loop in this process, captured and eager), the steady-state step time of our
loop (captured on a GPU) against the straightforward one, a 1M-question evaluation, and K stacked
seeds' model-steps per second against one model alone. FLOPs are counted from the config
(`forward_flops`): the matmul FLOPs of the forward on the positions each layer computes (every
position below the last layer; in the last, keys and values at every position, queries,
attention output, MLP and unembedding at the answer positions only), 2 per multiply-add; a
training step is 3x its forward (the backward is about twice the forward). Elementwise work,
softmax, the float64 loss and AdamW are not counted, so these are lower bounds on the work done.
"""
from __future__ import annotations

import resource
import statistics
import tempfile
import time
from dataclasses import replace

import torch

from .baseline import PlainTransformer
from ..config import TrainConfig
from ..experiments import EXPERIMENTS, experiment_configs
from ..model.hooks import hook_points_bypassed
from ..training.losses import masked_mean, pred_log_probs
from ..model.transformer import Transformer
from ..training.train import make_optimizer, train, train_seeds
from ..analysis.evaluate import evaluate
from ..training.run import start_run

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
    if device.type == "cuda":  # the captured step's one-time capture and self-check would swamp a few steps
        t["ours"] = steps * steady_step_seconds(
            lambda n: train(ours, task, replace(cfg, steps=n), device=device, progress=False), steps, rounds, device)
        t["plain"] = steps * steady_step_seconds(
            lambda n: plain_training(plain, task, cfg, device, n, gen, full_data, test_data), steps, rounds, device)
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


# ---- issue 15's figures: FLOPs, the fp32 peak, and the captured step on a GPU ---------------------

# dense fp32 (non-tensor-core) TFLOP/s from the vendors' datasheets, by a name torch reports
FP32_PEAK_TFLOPS = {"H100 SXM": 67.0, "H100 80GB HBM3": 67.0, "H100 PCIe": 51.0, "H100 NVL": 60.0, "H200": 67.0,
                    "GH200": 67.0, "A100": 19.5, "L40S": 91.6, "L4": 30.3, "A10G": 31.2, "V100": 15.7}


def forward_flops(model_cfg, n_ctx: int, n_pred: int | None = None) -> int:
    """Matmul FLOPs of one example's forward (2 per multiply-add). n_pred: the last layer computes
    queries, attention output, MLP and unembedding at n_pred positions only (grokmath's forward
    with positions=); None: every layer at every position (the straightforward model)."""
    c = model_cfg
    heads = c.n_heads * c.d_head
    total = 0
    for layer in range(c.n_layers):
        q = n_pred if (n_pred is not None and layer == c.n_layers - 1) else n_ctx
        total += 2 * n_ctx * c.d_model * heads * 2  # keys and values at every position
        total += 2 * q * c.d_model * heads  # queries
        total += 2 * q * n_ctx * heads * 2  # scores and pattern @ values (the causal half not subtracted)
        total += 2 * q * heads * c.d_model  # attention output
        if not c.attn_only:
            total += 2 * q * c.d_model * c.d_mlp * 2  # MLP in and out
    return total + 2 * (n_ctx if n_pred is None else n_pred) * c.d_model * c.d_vocab_out  # unembedding


def fp32_peak_tflops(device) -> float | None:
    """The GPU's datasheet fp32 TFLOP/s (None: not a GPU this table knows)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    matches = [k for k in FP32_PEAK_TFLOPS if k in name]
    return FP32_PEAK_TFLOPS[max(matches, key=len)] if matches else None


def matmul_tflops(device, n: int = 8192, repeats: int = 10) -> float:
    """Measured fp32 TFLOP/s of an n x n x n matmul on random data (TF32 off): the ceiling in practice."""
    device = torch.device(device)
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        gen = torch.Generator(device=device).manual_seed(0)
        a, b = (torch.randn(n, n, generator=gen, device=device) for _ in range(2))
        for _ in range(2):
            a @ b
        seconds = _time(lambda: [a @ b for _ in range(repeats)], device) / repeats
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    return 2 * n**3 / seconds / 1e12


def rate(flops: float, seconds: float, peak: float | None, measured: float | None) -> str:
    """'12.3 TFLOP/s (18% of fp32 peak 67, 23% of measured 53)'."""
    achieved = flops / seconds / 1e12
    parts = [f"{achieved:.2f} TFLOP/s"]
    if peak:
        parts.append(f"{100 * achieved / peak:.0f}% of the fp32 peak {peak:g}")
    if measured:
        parts.append(f"{100 * achieved / measured:.0f}% of a measured fp32 matmul's {measured:.1f}")
    return parts[0] + (f" ({', '.join(parts[1:])})" if len(parts) > 1 else "")


def steady_step_seconds(run, steps: int, rounds: int, device) -> float:
    """Seconds per step of run(n_steps), setup excluded: the median over rounds of
    (time(2 * steps) - time(steps)) / steps, so a capture's one-time cost does not count."""
    run(2)  # warm-up
    diffs = []
    for _ in range(rounds):
        short, long = _time(lambda: run(steps), device), _time(lambda: run(2 * steps), device)
        diffs.append((long - short) / steps)
    return statistics.median(diffs)


def bench_figures(device="cuda", quick: bool = False, steps: int = 200, rounds: int = 3, questions: int = 1_000_000,
                  n_seeds: int = 64, main_job: bool = True, job_steps: int | None = None, log=print) -> dict:
    """Issue 15's figures for the 5-digit addition set-up (quick: its quick scale) on `device`, each
    with its achieved FLOP/s; returns them as a flat dict. job_steps: the job's length (default: the
    set-up's 3000)."""
    device = torch.device(device)
    task, model_cfg, cfg = build("addition", quick, steps)
    n_pred = len(task.pred_labels)
    step_flops = 3 * cfg.batch_size * forward_flops(model_cfg, task.n_ctx, n_pred)
    plain_flops = 3 * cfg.batch_size * forward_flops(model_cfg, task.n_ctx)
    peak = fp32_peak_tflops(device)
    measured = matmul_tflops(device, 1024 if quick else 8192) if device.type == "cuda" else None
    out = {"device": str(device), "quick": quick, "step_gflop": step_flops / 1e9, "plain_step_gflop": plain_flops / 1e9,
           "fp32_peak_tflops": peak, "measured_fp32_matmul_tflops": measured}
    log(f"machine: {device}; a 5-digit step is {step_flops / 1e9:.2f} GFLOP of matmuls ({plain_flops / 1e9:.2f} in "
        f"the straightforward full-sequence model); fp32 peak {peak} TFLOP/s (datasheet), "
        f"measured fp32 matmul {measured and round(measured, 1)} TFLOP/s")

    # the steady-state step: ours (auto: captured on a GPU), ours eager, the straightforward loop
    ours, ours_eager = Transformer(model_cfg).to(device), Transformer(model_cfg).to(device)
    plain = PlainTransformer(model_cfg, ours.state_dict()).to(device)
    gen = torch.Generator().manual_seed(0)
    no_writes = replace(cfg, checkpoint_every=10**8)
    paths = {}

    def ours_run(n, path="auto", model=ours):
        result = train(model, task, replace(no_writes, steps=n), device=device, progress=False, step_path=path)
        paths[path] = (result.step_path, result.step_path_reason)

    t_ours = steady_step_seconds(ours_run, steps, rounds, device)
    t_eager = steady_step_seconds(lambda n: ours_run(n, "eager", ours_eager), steps, rounds, device)
    t_plain = steady_step_seconds(lambda n: plain_training(plain, task, no_writes, device, n, gen), steps, rounds, device)
    out.update(step_path=paths["auto"][0], step_path_reason=paths["auto"][1], step_ms=1e3 * t_ours,
               eager_step_ms=1e3 * t_eager, plain_step_ms=1e3 * t_plain, step_vs_plain=t_plain / t_ours,
               step_vs_eager=t_eager / t_ours, step_tflops=step_flops / t_ours / 1e12)
    log(f"5-digit step ({paths['auto'][0]}): {1e3 * t_ours:.3f} ms, {rate(step_flops, t_ours, peak, measured)}; "
        f"eager {1e3 * t_eager:.3f} ms; straightforward {1e3 * t_plain:.3f} ms "
        f"({rate(plain_flops, t_plain, peak, measured)}); ours / straightforward x{t_plain / t_ours:.2f}, "
        f"ours / eager x{t_eager / t_ours:.2f}" + ("" if paths["auto"][1] is None else f" [{paths['auto'][1]}]"))

    # the 1M-question evaluation of the full-size model (random weights: the work is the same)
    model = Transformer(model_cfg).to(device)
    eval_flops = questions * forward_flops(model_cfg, task.n_ctx, n_pred)
    batch = 65536 if device.type == "cuda" else 8192
    evaluate(model, task, min(questions, 2 * batch), batch_size=batch, progress=False)  # warm-up
    for path in ("auto", "eager"):
        _sync(device)
        report = evaluate(model, task, questions, batch_size=batch, progress=False, step_path=path)
        _sync(device)
        key = "eval" if path == "auto" else "eval_eager"
        out.update({f"{key}_seconds": report["seconds"], f"{key}_path": report["path"],
                    f"{key}_tflops": eval_flops / report["seconds"] / 1e12})
        log(f"{questions:,}-question evaluation ({report['path']}, batch {batch}): {report['seconds']:.2f} s, "
            f"{rate(eval_flops, report['seconds'], peak, measured)}")

    # K stacked seeds against one model alone, model-steps per second (steady state)
    seeds = list(range(1, n_seeds + 1))
    t_stacked = steady_step_seconds(lambda n: train_seeds(model_cfg, task, replace(no_writes, steps=n), seeds,
                                                          device=device, progress=False), steps, 1, device)
    out.update(n_seeds=n_seeds, stacked_step_ms=1e3 * t_stacked, stacked_model_steps_per_s=n_seeds / t_stacked,
               single_model_steps_per_s=1 / t_ours, stacked_vs_single=n_seeds * t_ours / t_stacked,
               stacked_vs_single_eager=n_seeds * t_eager / t_stacked,
               stacked_tflops=n_seeds * step_flops / t_stacked / 1e12)
    log(f"{n_seeds} stacked seeds: {n_seeds / t_stacked:.0f} model-steps/s "
        f"({rate(n_seeds * step_flops, t_stacked, peak, measured)}); one alone {1 / t_ours:.0f} "
        f"({paths['auto'][0]}), {1 / t_eager:.0f} (eager): x{n_seeds * t_ours / t_stacked:.1f} per model against the "
        f"{paths['auto'][0]} one, x{n_seeds * t_eager / t_stacked:.1f} against the eager one")

    if main_job:  # the whole 5-digit job through start_run, as train_addition.py runs it, plots aside
        job = replace(cfg, steps=job_steps or experiment_configs("addition", "quick" if quick else "full")[2].steps)
        for path in ("auto", "eager"):
            with tempfile.TemporaryDirectory() as folder:
                _sync(device)
                started = time.perf_counter()
                result = start_run(model_cfg, task, job, f"{folder}/run", device=device, progress=False, plots=False,
                                   step_path=path)
                _sync(device)
                wall = time.perf_counter() - started
            key = "job" if path == "auto" else "job_eager"
            out.update({f"{key}_seconds": wall, f"{key}_path": result.step_path})
            log(f"5-digit job, {job.steps} steps ({result.step_path}), in-process wall: {wall:.2f} s, "
                f"{rate(job.steps * step_flops, wall, peak, measured)}")
    return out
