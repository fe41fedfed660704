"""Run folders: atomic writes, checksums, safe loading, shape checks, replacing and locking, load_run."""
import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch

from grokmath.store.checkpoint import (REPLACED, REPLACING, CheckpointError, RunDir, UnsafeCheckpoint, abandon_runs,
                                 atomic_torch_save, atomic_write_text, load_run, load_state_dict_checked,
                                 prepare_runs, safe_load)

from grokmath.model.transformer import Transformer
from grokmath.tasks import make_task
from grokmath.config import ModelConfig, TrainConfig, model_config_for
from grokmath.training.run import start_run


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A 12-step 2-digit addition run with checkpoints every 5 steps."""
    task = make_task("addition", n_digits=2)
    model_cfg = model_config_for(task, d_model=32, n_heads=4, seed=5)
    path = tmp_path_factory.mktemp("runs") / "add2"
    result = start_run(model_cfg, task, TrainConfig(steps=12, lr=1e-3, checkpoint_every=5), path,
                       device="cpu", progress=False, plots=False)
    return path, model_cfg, result


def test_run_folder_layout_and_config(small_run):
    path, model_cfg, result = small_run
    run = RunDir(path)
    config = json.loads((path / "config.json").read_text())
    assert config["model"] == model_cfg.to_dict()
    assert config["task"] == {"name": "addition", "n_digits": 2}
    assert config["train"]["steps"] == 12 and config["train"]["betas"] == [0.9, 0.98]
    assert run.model_steps() == [0, 5, 10, 12]
    assert run.state_steps() == [10, 12]  # the newest two resumable states
    metrics = pd.read_csv(path / "metrics.csv")  # one call, no options
    assert list(metrics["step"]) == list(range(12))
    assert {"step", "lr", "train_loss", "test_loss", "loss_A2", "case_UseCarry1/A1"} <= set(metrics.columns)
    summary = json.loads((path / "summary.json").read_text())
    assert summary["final_train_loss"] == pytest.approx(metrics["train_loss"].iloc[-1])
    assert not [p for p in path.rglob("*") if p.name.endswith(".tmp")]


def test_load_run_gives_configs_metrics_and_a_ready_model(small_run):
    path, model_cfg, result = small_run
    run = load_run(path)
    assert run.model_cfg == model_cfg and run.train_cfg.steps == 12 and run.task.n_digits == 2
    assert run.step == 12 and run.steps == [0, 5, 10, 12]
    pd.testing.assert_frame_equal(run.metrics, result.metrics)  # float64 values round-trip exactly
    saved = torch.load(path / "checkpoints" / "model_000012.pt", weights_only=True)
    for name, tensor in run.model.state_dict().items():
        assert torch.equal(tensor, saved[name])
    at_zero = load_run(path, step=0).model
    assert all(torch.equal(a, b) for a, b in zip(at_zero.state_dict().values(),
                                                  Transformer(model_cfg).state_dict().values()))
    with pytest.raises(ValueError, match="no checkpoint at step 3"):
        load_run(path, step=3)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "m.pt"
    atomic_torch_save({"w": torch.ones(3)}, target)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_torch_save({"w": torch.zeros(3), "x": Boom()}, target)
    assert torch.equal(safe_load(target)["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["m.pt"]  # no temporary file left behind
    atomic_write_text(tmp_path / "a.txt", "hello")
    assert (tmp_path / "a.txt").read_text() == "hello"


def test_shape_mismatch_names_the_tensors():
    task = make_task("addition", n_digits=2)
    small = Transformer(model_config_for(task, d_model=32, n_heads=4))
    big = Transformer(model_config_for(task, d_model=64, n_heads=4))
    with pytest.raises(CheckpointError) as info:
        load_state_dict_checked(big, small.state_dict(), "model_000005.pt")
    message = str(info.value)
    assert "embed.W_E is [12, 32] in the file but [12, 64] in the model" in message
    assert "blocks.0.attn.W_Q" in message and "model_000005.pt" in message
    state = small.state_dict()
    state.pop("unembed.W_U")
    with pytest.raises(CheckpointError, match="missing unembed.W_U"):
        load_state_dict_checked(small, state)


def test_missing_and_foreign_folders(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_run(tmp_path / "nope")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a grokmath run folder"):
        load_run(tmp_path / "foreign")
    with pytest.raises(ValueError, match="not a grokmath run folder"):
        RunDir(tmp_path / "foreign").create({"model": {}, "task": {"name": "x"}, "train": {}}, overwrite=True)
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"


def test_existing_run_is_replaced_only_with_overwrite(small_run, tmp_path):
    run = RunDir(tmp_path / "r")
    run.create({"model": {}, "task": {"name": "a"}, "train": {}})
    (run.path / "metrics.csv").write_text("step\n0\n")
    with pytest.raises(ValueError, match="already exists: pass --overwrite"):
        run.create({"model": {}, "task": {"name": "b"}, "train": {}})
    assert json.loads(run.config_path.read_text())["task"]["name"] == "a"
    run.create({"model": {}, "task": {"name": "b"}, "train": {}}, overwrite=True)
    assert json.loads(run.config_path.read_text())["task"]["name"] == "b"
    assert not (run.path / "metrics.csv").exists()


def test_a_run_folder_in_the_format_of_the_first_release_loads_and_resumes(tmp_path):
    """A run folder written file by file here, as grokmath wrote them before the loop was shared by
    stacked seeds (config.json, metrics.csv, checkpoints/model_*.pt and state_*.pt with their keys),
    by a plain AdamW loop: load_run reads it, and --resume continues it as the plain loop does."""
    import torch.nn.functional as F

    from grokmath.training.run import resume_run

    path = tmp_path / "addition_2d_s3"
    (path / "checkpoints").mkdir(parents=True)
    config = {
        "model": {"n_layers": 1, "d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 64, "d_vocab": 12,
                  "d_vocab_out": 10, "n_ctx": 9, "act_fn": "relu", "normalization": None, "attn_only": False,
                  "positional": "learned", "attn_bias": False, "mlp_bias": True, "unembed_bias": False,
                  "ln_eps": 1e-05, "seed": 3},
        "task": {"name": "addition", "n_digits": 2},
        "train": {"steps": 20, "batch_size": 16, "lr": 0.003, "weight_decay": 0.1, "betas": [0.9, 0.98],
                  "schedule": "warmup", "warmup": 10, "data": "infinite", "n_train": None, "n_test": None,
                  "test_every": 1, "checkpoint_every": 10, "seed": 3, "grokfast": None, "grokfast_alpha": 0.98,
                  "grokfast_lamb": None, "grokfast_window": 100, "skip_nonfinite": False}}
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    task = make_task("addition", n_digits=2)
    model = Transformer(ModelConfig.from_dict(config["model"]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.003, weight_decay=0.1, betas=(0.9, 0.98), fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(step / 10, 1.0))
    gen = torch.Generator().manual_seed(3)
    rows = []

    def plain_step(step):
        batch = task.sample(16, gen)
        lr = scheduler.get_last_lr()[0]
        logits = model(batch.tokens, positions=task.pred_pos).to(torch.float64)  # [batch, n_pred, vocab]
        nll = F.cross_entropy(logits.transpose(1, 2), batch.targets, reduction="none")  # [batch, n_pred]
        nll.mean().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        return [step, lr, nll.mean().item()]

    torch.save({k: v.clone() for k, v in model.state_dict().items()}, path / "checkpoints" / "model_000000.pt")
    rows = [plain_step(step) for step in range(10)]
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, path / "checkpoints" / "model_000010.pt")
    torch.save({"format": 1, "step": 10, "n_skipped": 0, "metrics_rows": 10,
                "model": {k: v.clone() for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "generator": gen.get_state(), "torch_rng": torch.get_rng_state(), "grad_filter": {}},
               path / "checkpoints" / "state_000010.pt")
    columns = ["step", "lr", "train_loss", "test_loss", "train_acc", "loss_A2", "loss_A1", "loss_A0",
               "case_BaseAdd", "case_UseCarry1", "case_UseSum9"]
    columns += [f"case_{c}/{d}" for c in ("BaseAdd", "UseCarry1", "UseSum9") for d in ("A2", "A1", "A0")]
    table = pd.DataFrame([r + [float("nan"), 0.5] + [1.0] * (len(columns) - 5) for r in rows], columns=columns)
    table.to_csv(path / "metrics.csv", index=False)

    run = load_run(path)
    assert run.step == 10 and run.steps == [0, 10] and run.train_cfg.steps == 20 and run.task.n_digits == 2
    assert all(torch.equal(run.model.state_dict()[k], v) for k, v in model.state_dict().items())
    result = resume_run(path, device="cpu", progress=False, plots=False)
    rows += [plain_step(step) for step in range(10, 20)]  # the plain loop, continued
    metrics = pd.read_csv(path / "metrics.csv")
    assert list(metrics.columns) == columns and list(metrics["step"]) == list(range(20))
    pd.testing.assert_frame_equal(metrics.iloc[:10], table, check_dtype=False)  # the old rows are kept
    assert metrics["lr"].tolist() == pytest.approx([r[1] for r in rows], rel=1e-12)
    assert metrics["train_loss"].tolist() == pytest.approx([r[2] for r in rows], rel=1e-5)
    final = load_run(path).model
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(final.state_dict()[name], tensor)
    assert result.run_dir == path


# ---- checksums: damage is reported as damage, never as pickled code, never loaded ------------------------

def tiny_state():
    return {"format": 1, "step": 3, "n_skipped": 0, "model": {"w": torch.arange(4.0)}, "optimizer": {}}


def test_every_single_byte_flip_of_a_checkpoint_is_reported_as_damage(tmp_path):
    path = tmp_path / "state_000003.pt"
    atomic_torch_save(tiny_state(), path)
    good = path.read_bytes()
    assert torch.equal(torch.load(path, weights_only=True)["model"]["w"], torch.arange(4.0))  # a plain torch file
    for i in range(len(good)):
        path.write_bytes(good[:i] + bytes([good[i] ^ 0x5A]) + good[i + 1:])
        with pytest.raises(CheckpointError, match="damaged or truncated") as info:
            safe_load(path)
        assert not isinstance(info.value, UnsafeCheckpoint), i
    for cut in (len(good) - 1, len(good) // 2, 10):
        path.write_bytes(good[:cut])
        with pytest.raises(CheckpointError, match="damaged or truncated"):
            safe_load(path)


def test_random_bytes_are_damage_and_intact_pickled_code_is_refused(tmp_path):
    path = tmp_path / "model_000000.pt"
    path.write_bytes(os.urandom(5000))
    with pytest.raises(CheckpointError, match="damaged or truncated") as info:
        safe_load(path)
    assert not isinstance(info.value, UnsafeCheckpoint)

    class Payload:
        def __reduce__(self):
            return (os.system, ("true",))

    atomic_torch_save({"w": Payload()}, path)  # a checksum that holds, over pickled code
    with pytest.raises(UnsafeCheckpoint, match="refusing to load .*pickled code"):
        safe_load(path)


def test_checkpoints_from_before_checksums_load_and_their_damage_shows(tmp_path):
    """Files written before checkpoints carried checksums (e.g. a long run started then): they load as
    before; a damaged one is caught by the CRC-32 zip keeps of each member."""
    path = tmp_path / "model_000010.pt"
    torch.save({"w": torch.arange(1000.0)}, path)
    assert torch.equal(safe_load(path)["w"], torch.arange(1000.0))
    data = bytearray(path.read_bytes())
    data[data.index(torch.arange(1000.0).numpy().tobytes()[400:408]) + 2] ^= 1  # inside the tensor's bytes
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="CRC-32"):
        safe_load(path)


# ---- replacing, locking, leftovers ---------------------------------------------------------------------

CONFIG = {"model": {}, "task": {"name": "addition"}, "train": {"seed": 0}}


def test_a_replaced_run_is_kept_aside_until_the_new_runs_first_state(small_run, tmp_path):
    path = tmp_path / "r"
    shutil.copytree(small_run[0], path)
    old = {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file() and p.name != ".lock"}
    [run] = prepare_runs([path], [CONFIG], overwrite=True)
    aside = {p.relative_to(path / REPLACED): p.read_bytes() for p in (path / REPLACED).rglob("*") if p.is_file()}
    assert aside == old and run.state_steps() == []
    run.save_model_state(0, {"w": torch.zeros(1)})
    assert (path / REPLACED).is_dir()  # a model file is not yet a resumable state
    run.save_state(0, {"step": 0})
    assert not (path / REPLACED).exists()
    run.unlock()
    # abandon_runs: a replacement that failed before its first state gives the folder back
    [run] = prepare_runs([path], [CONFIG], overwrite=True)
    (path / REPLACED / "config.json").write_text("the old run's")
    assert abandon_runs([run]) is False
    assert (path / "config.json").read_text() == "the old run's" and not (path / REPLACED).exists()


def test_a_kill_while_the_old_run_was_being_moved_aside_is_undone(tmp_path):
    path = tmp_path / "r"
    (path / "checkpoints").mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / REPLACING).mkdir()
    (path / REPLACING / "checkpoints").mkdir()
    (path / REPLACING / "checkpoints" / "state_000005.pt").write_bytes(b"old")
    shutil.rmtree(path / "checkpoints")  # checkpoints/ had moved, config.json had not
    run = RunDir(path)
    assert run.check_replaceable(overwrite=True) == "run"
    with pytest.raises(ValueError, match="pass --overwrite"):
        run.check_replaceable(overwrite=False)
    run.lock()
    run.recover()
    run.unlock()
    assert (path / "config.json").read_text() == "{}" and run.state_steps() == [5] and not (path / REPLACING).exists()


def test_stale_temporary_files_of_dead_writers_are_removed(tmp_path):
    target = tmp_path / "metrics.csv"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".metrics.csv.{dead.stdout.strip()}.abc123.tmp"
    live = tmp_path / f".metrics.csv.{os.getppid()}.def456.tmp"  # a process that is alive: maybe writing it now
    other = tmp_path / f".summary.json.{dead.stdout.strip()}.x.tmp"
    for path in (stale, live, other):
        path.write_text("half")
    atomic_write_text(target, "step\n")
    assert not stale.exists() and live.exists() and other.exists()


def test_a_lock_held_by_another_process_is_named_and_this_process_may_take_its_own_twice(tmp_path):
    run = RunDir(tmp_path / "r")
    run.lock()
    run.lock()  # the same process: no deadlock with itself
    run.check_not_in_use()
    # another process, taking the lock as RunDir.lock does (an flock on .lock, which holds the holder's pid)
    script = ("import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR)\ntry:\n"
              "    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n    print('free')\n"
              "except BlockingIOError:\n    print('held by', os.read(fd, 32).decode().strip())")
    other = subprocess.run([sys.executable, "-c", script, str(run.path / ".lock")], capture_output=True, text=True)
    assert other.stdout.strip() == f"held by {os.getpid()}", other.stderr
    run.unlock()
    other = subprocess.run([sys.executable, "-c", script, str(run.path / ".lock")], capture_output=True, text=True)
    assert other.stdout.strip() == "free", other.stderr
