"""Data-parallel training (torchrun, gloo, 2 CPU processes), checked against a one-process
emulation of the same global batches. (Stacked seeds: test_multiseed.py.)"""
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch

from grokmath import Transformer
from grokmath.training.losses import pred_log_probs
from grokmath.tasks import make_task
from grokmath.config import TrainConfig, model_config_for
from grokmath.training.train import lr_factor, rank_seed

ROOT = Path(__file__).resolve().parents[1]


def test_torchrun_two_processes_equal_one_process_on_the_global_batch(tmp_path):
    steps, batch = 6, 16
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "scripts" / "train_addition.py"), "--digits", "2", "--d-model", "32", "--steps", str(steps),
           "--batch-size", str(batch), "--lr", "1e-3", "--out", str(tmp_path), "--device", "cpu",
           "--no-plots", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = list(tmp_path.iterdir())
    assert [r.name for r in runs] == ["addition_2d_s129000"]  # rank 0 alone writes
    logged = pd.read_csv(runs[0] / "metrics.csv")["train_loss"].to_numpy()

    # Emulate: one model, each step the two ranks' half batches, loss = mean of their means.
    task = make_task("addition", n_digits=2)
    model = Transformer(model_config_for(task, d_model=32, n_layers=1, n_heads=4, seed=129000,
                                         act_fn="relu", normalization=None, positional="learned"))
    cfg = TrainConfig(steps=steps, batch_size=batch, lr=1e-3, weight_decay=0.1, seed=129000)
    gens = [torch.Generator().manual_seed(rank_seed(cfg.seed, r)) for r in range(2)]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    expected = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(cfg, step)
        losses = []
        for gen in gens:
            b = task.sample(batch // 2, gen)
            losses.append(-pred_log_probs(model(b.tokens, positions=task.pred_pos), b.targets).mean())
        loss = torch.stack(losses).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        expected.append(loss.item())
    torch.testing.assert_close(torch.tensor(logged), torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=1e-6)


def test_torchrun_refuses_full_batch_runs(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "scripts" / "train_modular.py"), "--p", "13", "--steps", "2", "--out", str(tmp_path),
           "--device", "cpu", "--no-plots", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0 and "infinite data" in proc.stderr
    assert not any(tmp_path.iterdir())
    # each rank: one line and exit status 2 (or, when torchrun stopped it first as another rank failed, one
    # line saying so); then torchrun's own report (its traceback, ChildFailedError), with no frame of ours
    said = {rank: [line for line in proc.stderr.splitlines() if line.startswith(f"train_modular.py (rank {rank}): ")]
            for rank in (0, 1)}
    assert all(len(lines) == 1 for lines in said.values()), proc.stderr
    errors = [lines[0] for lines in said.values() if "error: data-parallel training needs a fresh batch" in lines[0]]
    assert errors and all("error:" in lines[0] or "stopped by SIGTERM" in lines[0] for lines in said.values())
    assert "exitcode  : 2" in proc.stderr
    assert not re.search(r'File ".*/grokmath/(analysis/|tasks/)?[a-z_]+\.py"', proc.stderr)
