"""The fast training path against the straightforward one, and the benchmark script."""
import pytest
import torch

from grokmath.tools.bench import bench_figures, bench_task, check_same_losses, forward_flops
from grokmath.config import model_config_for
from grokmath.tasks import make_task
from grokmath.cli import main_guard

from script_helpers import load_script


@pytest.mark.parametrize("name", ["addition", "skip_trigram", "induction", "modular", "arithmetic"])
def test_training_loop_losses_equal_plain_loop(name):
    ours, plain = check_same_losses(name, quick=True, steps=4)
    assert len(ours) == len(plain) == 4
    torch.testing.assert_close(torch.tensor(ours), torch.tensor(plain), atol=1e-5, rtol=1e-5)
    assert ours[0] != ours[-1]  # it trained


def test_bench_measures_everything():
    out = bench_task("skip_trigram", quick=True, steps=2, rounds=1, log=lambda s: None)
    for key in ("steps_per_s", "plain_steps_per_s", "speedup", "tokens_per_s", "hook_overhead_pct",
                "run_with_cache_vs_forward", "eval_vs_train", "peak_memory_mb", "step_ms", "data_ms_per_batch"):
        assert out[key] == out[key] and out[key] != 0, key  # measured: finite and nonzero


def test_bench_script_refuses_existing_csv(tmp_path, capsys):
    existing = tmp_path / "bench.csv"
    existing.write_text("keep me")
    with pytest.raises(SystemExit) as stop:
        main_guard(load_script("bench").main, ["--quick", "--tasks", "skip_trigram", "--steps", "1", "--rounds", "1",
                                               "--csv", str(existing)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "exists" in err and "Traceback" not in err
    assert existing.read_text() == "keep me"


def test_forward_flops_count_every_matmul():
    """Against a count written out by hand for a 2-layer model: 4 positions, 2 answer positions."""
    task = make_task("addition", n_digits=1)  # n_ctx 6, 2 answer positions
    cfg = model_config_for(task, n_layers=2, d_model=8, n_heads=2, d_head=3, d_mlp=5)
    heads, P, q = 6, task.n_ctx, 2

    def layer(q):
        return 2 * (2 * P * 8 * heads + q * 8 * heads + 2 * q * P * heads + q * heads * 8 + 2 * q * 8 * 5)

    assert forward_flops(cfg, P, q) == layer(P) + layer(q) + 2 * q * 8 * 10
    assert forward_flops(cfg, P) == 2 * layer(P) + 2 * P * 8 * 10


def test_bench_figures_measures_everything():
    out = bench_figures("cpu", quick=True, steps=2, rounds=1, questions=300, n_seeds=2, job_steps=3, log=lambda s: None)
    for key in ("step_ms", "eager_step_ms", "plain_step_ms", "step_vs_plain", "step_tflops", "eval_seconds",
                "eval_tflops", "stacked_model_steps_per_s", "stacked_vs_single", "job_seconds", "job_eager_seconds"):
        assert out[key] == out[key] and out[key] > 0, key
    assert out["step_path"] == "eager" and "CUDA" in out["step_path_reason"]  # on a CPU
