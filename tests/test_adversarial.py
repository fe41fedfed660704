"""What an unlucky user meets, driven through the real scripts (issue 14): replacing a run with
--overwrite (every check before any removal, the old run kept aside until the new one's first
checkpoint), folders that are not runs and names that leave --out, runs stopped before their first
checkpoint, damaged run folders given to every script, bad flags, sizes that cannot fit in memory,
and signals outside the training loop. Each case checks the exit status, the one line on stderr
and that nothing the user had is gone. (Locks held by another process, signals to real processes
and torchrun: test_adversarial_processes.py.)"""
import json
import os
import shlex
import shutil
import signal
import warnings

import pytest
import torch

from grokmath import cli
from grokmath.store.checkpoint import REPLACED, RunDir, atomic_torch_save, prepare_runs, run_config

from script_helpers import load_script, run_guarded

TINY = ["--digits", "2", "--d-model", "16", "--n-heads", "2", "--steps", "6", "--checkpoint-every", "3",
        "--device", "cpu", "--no-progress", "--no-plots"]
TINY_MODULAR = ["--p", "5", "--d-model", "8", "--n-heads", "2", "--steps", "6", "--checkpoint-every", "3",
                "--device", "cpu", "--no-progress", "--no-plots"]



def expect_error(capsys, script, argv, *fragments, code=2):
    """Exit status `code`, one line on stderr (no traceback) holding every fragment; returns it."""
    status, _, err = run_guarded(capsys, script, argv)
    assert status == code, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def snapshot(folder) -> dict:
    """Every file under folder (hidden ones too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def user_files(folder) -> dict:
    """The files a user has in a run folder (the lock file's content, the last writer's pid, aside)."""
    return {k: v for k, v in snapshot(folder).items() if k != ".lock"}


@pytest.fixture(scope="module")
def base_runs(tmp_path_factory):
    """A finished tiny addition run and a tiny modular run, copied by each test that damages one."""
    out = tmp_path_factory.mktemp("base")
    load_script("train_addition").main([*TINY, "--out", str(out), "--run-name", "add"])
    load_script("train_modular").main([*TINY_MODULAR, "--out", str(out), "--run-name", "mod"])
    return out


def copy_run(base_runs, name, tmp_path):
    target = tmp_path / "runs" / name
    shutil.copytree(base_runs / name, target)
    return target


# ---- --overwrite: every check first; the old run kept aside until the new one's first checkpoint --------

def test_overwrite_whose_settings_fail_leaves_the_old_run_whole(capsys, tmp_path):
    out = ["--out", str(tmp_path)]
    load_script("train_modular").main([*TINY_MODULAR, "--p", "3", *out])
    run = tmp_path / "modular_add_p3_s0"
    before = user_files(run)
    expect_error(capsys, "train_modular", [*TINY_MODULAR, "--p", "3", "--frac-train", "0.01", "--overwrite", *out],
                 "frac_train 0.01 leaves no train or no test pair")
    assert user_files(run) == before

    load_script("train_modular").main([*TINY_MODULAR, "--seeds", "1", *out])
    single = tmp_path / "modular_add_p5_s1"
    before = user_files(single)
    expect_error(capsys, "train_modular", [*TINY_MODULAR, "--seeds", "1", "1", "--overwrite", *out], "repeat")
    assert user_files(single) == before


def test_overwrite_of_a_seeds_group_replaces_every_member(capsys, tmp_path):
    out = ["--out", str(tmp_path)]
    load_script("train_modular").main([*TINY_MODULAR, "--seeds", "7", "8", *out])
    code, _, err = run_guarded(capsys, "train_modular", [*TINY_MODULAR, "--seeds", "7", "8", "--grokfast", "ema",
                                                        "--overwrite", *out])
    assert code == 0, err
    for seed in (7, 8):
        run = tmp_path / f"modular_add_p5_s{seed}"
        assert json.loads((run / "config.json").read_text())["train"]["grokfast"] == "ema"
        assert RunDir(run).state_steps() == [3, 6] and not (run / REPLACED).exists()


@pytest.fixture
def fail_before_first_checkpoint(monkeypatch):
    """Make the training loop fail while it sets up its data (after the run folders were made)."""
    import grokmath.training.train

    def boom(*args, **kwargs):
        raise ValueError("the data could not be made (injected)")

    monkeypatch.setattr(grokmath.training.train, "TrainData", boom)


def test_a_replacement_that_fails_before_its_first_checkpoint_puts_the_old_run_back(
        capsys, tmp_path, base_runs, fail_before_first_checkpoint):
    run = copy_run(base_runs, "add", tmp_path)
    before = user_files(run)
    expect_error(capsys, "train_addition", [*TINY, "--steps", "9", "--out", str(run.parent), "--run-name", "add",
                                            "--overwrite"], "injected")
    assert user_files(run) == before
    # a fresh run that fails leaves no folder behind
    expect_error(capsys, "train_addition", [*TINY, "--out", str(tmp_path), "--run-name", "fresh"], "injected")
    assert not (tmp_path / "fresh").exists()


def test_sigterm_before_the_first_checkpoint_says_so_and_keeps_the_old_run(capsys, tmp_path, base_runs,
                                                                            monkeypatch):
    """main_guard's handler: a SIGTERM while the loop sets up (it has no handler of its own yet)."""
    import grokmath.training.train
    real = grokmath.training.train.TrainData

    def data_then_signal(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(grokmath.training.train, "TrainData", data_then_signal)
    run = copy_run(base_runs, "add", tmp_path)
    before = user_files(run)
    err = expect_error(capsys, "train_addition", [*TINY, "--steps", "9", "--out", str(run.parent), "--run-name",
                                                  "add", "--overwrite"],
                       "stopped by SIGTERM before the run's first checkpoint", "is back in place",
                       "run the same command again", code=128 + signal.SIGTERM)
    assert "resume" not in err
    assert user_files(run) == before


def test_a_replacement_killed_before_its_first_checkpoint(capsys, tmp_path, base_runs):
    """What a SIGKILL right after --overwrite moved the old run aside leaves: readers are told, the
    same command (or --resume) sorts it out, nothing is lost."""
    run = copy_run(base_runs, "add", tmp_path)
    before = user_files(run)
    config = json.loads((run / "config.json").read_text())
    for r in prepare_runs([run], [{**config, "train": {**config["train"], "steps": 9}}], overwrite=True):
        r.unlock()  # the kill: the lock goes with the process
    assert (run / REPLACED / "config.json").read_bytes() == before["config.json"]
    expect_error(capsys, "evaluate", [str(run), "--questions", "10", "--no-progress"], "is being replaced",
                 "--resume")
    # --resume puts the old run back (which had finished) and says so
    expect_error(capsys, "train_addition", ["--resume", str(run)], "already finished its 6 steps")
    assert user_files(run) == before
    # the same --overwrite again: the new run takes the folder, the old one goes at its first checkpoint
    prepare_runs([run], [config], overwrite=True)[0].unlock()
    code, _, err = run_guarded(capsys, "train_addition", [*TINY, "--steps", "9", "--out", str(run.parent),
                                                         "--run-name", "add", "--overwrite"])
    assert code == 0, err
    assert not (run / REPLACED).exists() and RunDir(run).state_steps() == [6, 9]


def test_overwrite_never_replaces_what_is_not_a_run(capsys, tmp_path):
    out = tmp_path / "runs"
    (out / "notes").mkdir(parents=True)
    (out / "notes" / "mine.txt").write_text("keep me")
    (out / "afile").write_text("keep me too")
    for name, fragment in (("notes", "not a grokmath run folder"), ("afile", "is not a folder")):
        expect_error(capsys, "train_addition", [*TINY, "--out", str(out), "--run-name", name, "--overwrite"], fragment)
    assert (out / "notes" / "mine.txt").read_text() == "keep me" and (out / "afile").read_text() == "keep me too"
    assert sorted(p.name for p in (out / "notes").iterdir()) == ["mine.txt"]  # not even a lock file


@pytest.mark.parametrize("name", [".", "..", "a/b", "", " ", "../escape"])
def test_a_run_name_is_one_plain_folder_name(capsys, tmp_path, base_runs, name):
    run = copy_run(base_runs, "add", tmp_path)
    outside = snapshot(tmp_path)
    expect_error(capsys, "train_addition", [*TINY, "--out", str(run), "--run-name", name, "--overwrite"],
                 "plain folder name")
    assert snapshot(tmp_path) == outside


# ---- runs stopped before their first checkpoint: the same command just works ----------------------------

def test_an_unstarted_run_is_started_again_by_the_same_command(capsys, tmp_path):
    argv = [*TINY, "--out", str(tmp_path), "--run-name", "r"]
    run = tmp_path / "r"
    task, model_cfg, train_cfg = cli.training_configs(cli.parse(load_script("train_addition").build_parser(), argv),
                                                      {"n_digits": 2})
    prepare_runs([run], [run_config(model_cfg, task, train_cfg)])[0].unlock()  # and then the start was killed
    (run / "metrics.csv").write_text("step,lr,train_loss\n")
    stale = [run / ".metrics.csv.999999999.abcdefgh.tmp", run / ".config.json.k2j3h4g5.tmp",
             run / "checkpoints" / ".state_000000.pt.999999999.zz.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    expect_error(capsys, "train_addition", ["--resume", str(run)], "stopped before its first one",
                 "run the command that started it again")
    code, _, err = run_guarded(capsys, "train_addition", argv)  # no --overwrite needed
    assert code == 0, err
    assert RunDir(run).state_steps() == [3, 6] and not any(p.exists() for p in stale)
    # once it has a checkpoint it is a run like any other: the same command now needs --overwrite
    expect_error(capsys, "train_addition", argv, "already exists: pass --overwrite")


def test_a_start_killed_before_config_json_does_not_block_the_command(capsys, tmp_path):
    run = tmp_path / "r"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".config.json.999999999.q1w2e3r4.tmp").write_text('{"mod')  # disk full while writing config.json
    code, _, err = run_guarded(capsys, "train_addition", [*TINY, "--out", str(tmp_path), "--run-name", "r"])
    assert code == 0, err
    assert sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp")) == []


# ---- damaged run folders: every script names the file and what is wrong ---------------------------------

def config_damage(change):
    def damage(run):
        config = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(change(config))
    return damage


def drop_tensor(run):
    path = run / "checkpoints" / "model_000006.pt"
    state = torch.load(path, weights_only=True)
    del state["unembed.W_U"]
    atomic_torch_save(state, path)


DAMAGE = {  # name -> (damage, file named, what is said)
    "config null": (config_damage(lambda c: "null"), "config.json", "holds a NoneType"),
    "config a list": (config_damage(lambda c: "[1, 2]"), "config.json", "holds a list"),
    "config task a string": (config_damage(lambda c: json.dumps({**c, "task": "addition"})), "config.json",
                             "'task' is a str"),
    "config wrong shape": (config_damage(lambda c: json.dumps({**c, "model": {**c["model"], "d_model": [16]}})),
                           "config.json", "d_model=[16]"),
    "config cut": (config_damage(lambda c: json.dumps(c)[:40]), "config.json", "not valid JSON"),
    "config model misfits task": (config_damage(lambda c: json.dumps({**c, "model": {**c["model"], "d_vocab": 5}})),
                                  "config.json", "does not fit its task"),
    "metrics empty": (lambda run: (run / "metrics.csv").write_bytes(b""), "metrics.csv", "is empty"),
    "metrics cut": (lambda run: (run / "metrics.csv").write_bytes((run / "metrics.csv").read_bytes()[:-25]),
                    "metrics.csv", "truncated"),
    "metrics lacks a column": (lambda run: (run / "metrics.csv").write_text("step,lr\n0,0.1\n"), "metrics.csv",
                               "lacks the column(s) train_loss"),
    "metrics binary": (lambda run: (run / "metrics.csv").write_bytes(bytes(range(256)) * 2), "metrics.csv",
                       "not text"),
    "model zero bytes": (lambda run: (run / "checkpoints" / "model_000006.pt").write_bytes(b""),
                         "model_000006.pt", "empty, 0 bytes"),
    "model cut": (lambda run: (run / "checkpoints" / "model_000006.pt").write_bytes(
        (run / "checkpoints" / "model_000006.pt").read_bytes()[:600]), "model_000006.pt", "damaged or truncated"),
    "model not a dict": (lambda run: atomic_torch_save(torch.zeros(3), run / "checkpoints" / "model_000006.pt"),
                         "model_000006.pt", "not a model state dict"),
    "model a folder": (lambda run: (run / "checkpoints" / "model_000009.pt").mkdir(), "model_000009.pt",
                       "not a file"),
    "model lacks a tensor": (drop_tensor, "model_000006.pt", "missing unembed.W_U"),
}
# the scripts, each on a copy of the tiny addition run (progress_measures: the modular one)
SCRIPTS = {
    "evaluate": ("evaluate", lambda run: [str(run), "--questions", "20", "--no-progress"]),
    "ablate": ("ablate", lambda run: [str(run), "--questions", "8"]),
    "attention": ("attention", lambda run: [str(run), "--questions", "1"]),
    "plot_run": ("plot_run", lambda run: [str(run)]),
    "compare_runs": ("compare_runs", lambda run: [str(run), "--out", str(run.parent / "compare.png")]),
    "train_sae": ("train_sae", lambda run: [str(run), "--n-batches", "2", "--eval-batches", "1", "--epochs", "1",
                                            "--d-sae", "8", "--no-progress"]),
    "progress_measures": ("progress_measures", lambda run: [str(run), "--no-progress"]),
    "resume": ("train_addition", lambda run: ["--resume", str(run), "--steps", "9", "--no-progress", "--no-plots"]),
}
NEEDS_MODEL = {"evaluate", "ablate", "attention", "train_sae", "progress_measures"}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_run_folder_gets_one_line_from_every_script(capsys, tmp_path, base_runs, damage):
    make_damage, file_named, said = DAMAGE[damage]
    for name, (script, argv) in SCRIPTS.items():
        source = "mod" if name == "progress_measures" else "add"
        if source == "mod" and damage.startswith(("config model", "config wrong", "model")):
            continue  # the modular run's model differs; its checkpoints are covered by the others
        if damage.startswith("model") and name not in NEEDS_MODEL and not (name == "resume" and "folder" in damage):
            continue  # plots and resuming read no model checkpoint (a damaged state: the tests below)
        run = tmp_path / name / source
        shutil.copytree(base_runs / source, run)
        make_damage(run)
        damaged = user_files(run)
        code, _, err = run_guarded(capsys, script, argv(run))
        assert code == 2, (name, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (name, err)
        assert file_named in err and said in err, (name, err)
        assert user_files(run) == damaged, name  # nothing the user had changed, let alone removed


STATE_DAMAGE = {
    "zero bytes": lambda path: path.write_bytes(b""),
    "cut": lambda path: path.write_bytes(path.read_bytes()[:400]),
    "random bytes": lambda path: path.write_bytes(os.urandom(2000)),
    "one byte flipped": lambda path: path.write_bytes(bytes(b ^ 0x10 * (i == 1000)
                                                            for i, b in enumerate(path.read_bytes()))),
    "a key missing": lambda path: atomic_torch_save(
        {k: v for k, v in torch.load(path, weights_only=True).items() if k != "optimizer"}, path),
    "a tensor missing": lambda path: atomic_torch_save(
        {**(s := torch.load(path, weights_only=True)), "model": {k: v for k, v in s["model"].items()
                                                                if k != "embed.W_E"}}, path),
}


@pytest.fixture(scope="module")
def reference_9(tmp_path_factory):
    """The tiny addition run trained to step 9 without a stop."""
    out = tmp_path_factory.mktemp("reference")
    load_script("train_addition").main([*TINY, "--steps", "9", "--out", str(out), "--run-name", "reference"])
    return out / "reference"


@pytest.mark.parametrize("damage", list(STATE_DAMAGE))
def test_resume_falls_back_from_a_damaged_newest_state_with_one_warning(capsys, tmp_path, base_runs, reference_9,
                                                                        damage):
    reference = reference_9
    run = copy_run(base_runs, "add", tmp_path)
    STATE_DAMAGE[damage](run / "checkpoints" / "state_000006.pt")
    code, _, err = run_guarded(capsys, "train_addition", ["--resume", str(run), "--steps", "9", "--no-progress",
                                                         "--no-plots"])
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "state_000006.pt" in lines[0] and "resuming from step 3" in lines[0], err
    assert "pickled code" not in err
    # resumed from step 3, it is the run that was never stopped
    assert (run / "metrics.csv").read_bytes() == (reference / "metrics.csv").read_bytes()


def test_resume_with_no_usable_state_is_one_line(capsys, tmp_path, base_runs):
    run = copy_run(base_runs, "add", tmp_path)
    for step in (3, 6):
        (run / "checkpoints" / f"state_{step:06d}.pt").write_bytes(b"")
    expect_error(capsys, "train_addition", ["--resume", str(run), "--steps", "9"], "no usable resumable checkpoint",
                 "state_000006.pt", "state_000003.pt")


def test_pickled_code_is_reported_as_such_and_only_torchs_warning_is_silenced(capsys, tmp_path, base_runs):
    class Payload:
        def __reduce__(self):
            return (print, ("ran",))

    run = copy_run(base_runs, "add", tmp_path)
    torch.save({"w": Payload()}, run / "checkpoints" / "model_000006.pt", pickle_protocol=4)  # torch warns on 4
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        err = expect_error(capsys, "evaluate", [str(run), "--questions", "10", "--no-progress"],
                           "refusing to load", "pickled code")
    assert "ran" not in err and not [w for w in caught if "protocol" in str(w.message)]


# ---- bad flags ----------------------------------------------------------------------------------------

BAD_FLAGS = [
    ("train_arithmetic", ["--ops", "add=nan,sub=nan"], "is not a percentage"),
    ("train_arithmetic", ["--ops", "add=inf"], "is not a percentage"),
    ("train_induction", ["--vocab-size", "2"], "vocab_size 2 leaves 1 noise token"),
    ("train_induction", ["--vocab-size", "10", "--subseq-len", "12", "--seq-len", "40"], "use vocab_size >= 13"),
    ("bench", ["--tasks", "nope"], "invalid choice"),
    ("bench", ["--steps", "0"], "must be a whole number >= 1"),
]


@pytest.mark.parametrize("script,argv,fragment", BAD_FLAGS)
def test_bad_flags_are_one_line(capsys, tmp_path, script, argv, fragment):
    out = [] if script == "bench" else ["--out", str(tmp_path), "--steps", "1"]
    expect_error(capsys, script, [*argv, *out], fragment)
    assert not any(tmp_path.iterdir())


def test_attention_texts_of_any_length_but_not_empty_and_at_most_twenty_pictures(capsys, tmp_path, base_runs,
                                                                                 monkeypatch):
    run = copy_run(base_runs, "add", tmp_path)
    code, out, err = run_guarded(capsys, "attention", [str(run), "--text", "12+34=046", "--text", "12+34="])
    assert code == 0 and err == "", err
    assert len(list((run / "analysis").glob("attention_*.png"))) == 2
    expect_error(capsys, "attention", [str(run), "--text", "", "--overwrite"], "has 0 tokens")
    import grokmath.analysis.attention  # the pictures themselves: test_attention.py; here, how many

    monkeypatch.setattr(grokmath.analysis.attention, "plot_attention_grid",
                        lambda model, task, tokens, path: path.write_bytes(b"png"))
    code, out, err = run_guarded(capsys, "attention", [str(run), "--questions", "500", "--overwrite"])
    assert code == 0 and "drawing 20 of the 500 questions" in err and len(err.strip().splitlines()) == 1
    assert len(list((run / "analysis").glob("attention_*.png"))) == 20


def test_bench_writes_its_csv_whole_and_never_over_a_file(capsys, tmp_path, monkeypatch):
    import grokmath.tools.bench
    monkeypatch.setattr(grokmath.tools.bench, "bench_task", lambda name, *args: {"task": name, "steps_per_s": 1.0})
    csv = tmp_path / "bench.csv"
    code, out, err = run_guarded(capsys, "bench", ["--tasks", "modular", "--device", "cpu", "--csv", str(csv)])
    assert code == 0, err
    assert csv.read_text().splitlines()[1].startswith("modular,1.0,") and os.listdir(tmp_path) == ["bench.csv"]
    expect_error(capsys, "bench", ["--tasks", "modular", "--device", "cpu", "--csv", str(csv)], "already exists")


# ---- sizes that cannot fit: refused before anything is allocated ----------------------------------------

@pytest.mark.parametrize("script,argv", [
    ("train_addition", ["--batch-size", "10000000"]),
    ("train_addition", ["--d-model", "100000"]),
    ("train_modular", ["--p", "4999"]),
    ("train_addition", ["--d-model", "4096", "--seeds", *map(str, range(1000))]),
])
def test_a_run_too_big_for_memory_is_refused_before_allocating(capsys, tmp_path, script, argv):
    err = expect_error(capsys, script, [*argv, "--steps", "1", "--device", "cpu", "--out", str(tmp_path)],
                       "needs about", "memory but", "is free")
    assert " TB " in err or " GB " in err
    assert not any(tmp_path.iterdir())


def test_analysis_too_big_for_memory_is_refused(capsys, tmp_path, base_runs, monkeypatch):
    run = copy_run(base_runs, "add", tmp_path)
    expect_error(capsys, "train_sae", [str(run), "--d-sae", "100000000", "--no-progress"], "an SAE of 100000000",
                 "needs about")
    import grokmath.memory
    monkeypatch.setattr(grokmath.memory, "_cpu_available", lambda: 10**9)  # a machine with 1 GB free
    expect_error(capsys, "evaluate",  # a million questions: the CPU's default is 100,000
                 [str(run), "--questions", "1000000", "--batch-size", "10000000", "--no-progress"],
                 "evaluating 1000000 questions per forward pass needs about", "lower --batch-size")
    assert not (run / "analysis").exists() and not (run / "sae").exists()


# ---- --seeds: NaN stops the group; the resume command is quoted for the shell ---------------------------

def test_nonfinite_stacked_seeds_stop_the_group_through_the_script(capsys, tmp_path, monkeypatch):
    import grokmath.training.multiseed
    real, calls = grokmath.training.multiseed.StackedModels.forward, [0]

    def forward(self, tokens, positions):
        calls[0] += 1
        logits = real(self, tokens, positions)
        return logits * float("nan") if calls[0] > 4 else logits

    monkeypatch.setattr(grokmath.training.multiseed.StackedModels, "forward", forward)
    expect_error(capsys, "train_addition", [*TINY, "--seeds", "1", "2", "--out", str(tmp_path)],
                 "is nan at step 4", "all 2 stacked runs stopped", "last good checkpoint is step 3", code=1)
    for seed in (1, 2):
        run = RunDir(tmp_path / f"addition_2d_s{seed}")
        assert run.state_steps() == [0, 3]
        assert all(torch.isfinite(v).all() for v in run.load_state(3)["model"].values())


def test_the_resume_command_is_quoted_for_the_shell(capsys, tmp_path, monkeypatch):
    import grokmath.training.train
    real, calls = grokmath.training.train.train_step, [0]

    def step_then_signal(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 4:
            os.kill(os.getpid(), signal.SIGTERM)  # the loop's own handler: a checkpoint, then the line
        return real(*args, **kwargs)

    monkeypatch.setattr(grokmath.training.train, "train_step", step_then_signal)
    err = expect_error(capsys, "train_addition", [*TINY, "--out", str(tmp_path / "my runs"), "--run-name",
                                                  "it's mine"], "stopped by SIGTERM at step 4", code=143)
    command = shlex.split(err.split("resume with: ")[1])
    assert command[-2:] == ["--resume", str(tmp_path / "my runs" / "it's mine")]
    monkeypatch.undo()
    code, _, err = run_guarded(capsys, "train_addition", [*command[2:], "--no-plots", "--no-progress"])
    assert code == 0, err
