"""The fast training path against the straightforward one, and the benchmark script."""
import pytest
import torch

from grokmath.bench import bench_task, check_same_losses
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
