"""--tensorboard / --wandb (grokmath/store/tracking.py): fed the rows of metrics.csv, read back from the
event files; a logger that fails warns once and changes nothing about the run."""
import pandas as pd
import pytest
from script_helpers import load_script

from grokmath.store import tracking

addition = load_script("train_addition")
TINY = ["--digits", "2", "--d-model", "16", "--n-heads", "2", "--steps", "70", "--checkpoint-every", "30",
        "--device", "cpu", "--no-plots", "--no-progress"]


@pytest.fixture(autouse=True)
def no_tracking_afterwards():
    yield
    tracking.configure_tracking()  # the switches are per process: leave them off for other tests


def test_tensorboard_events_read_back_the_losses_of_metrics_csv(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    addition.main(TINY + ["--out", str(tmp_path), "--run-name", "tb", "--tensorboard"])
    run = tmp_path / "tb"
    assert list(run.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    metrics = pd.read_csv(run / "metrics.csv")
    for column in ("train_loss", "loss_A0", "lr", "case_UseCarry1/A1"):
        scalars = events.Scalars(column)
        assert [s.step for s in scalars] == list(metrics["step"])
        kept = metrics[column].notna()  # a case absent from a batch is NaN in metrics.csv, not logged
        logged = pd.Series([s.value for s in scalars])[kept.to_numpy()]
        assert logged.tolist() == metrics[column][kept].astype("float32").tolist()  # TensorBoard keeps float32


def test_a_failing_logger_warns_once_and_the_run_is_unchanged(tmp_path, monkeypatch, capsys):
    addition.main(TINY + ["--out", str(tmp_path), "--run-name", "plain"])

    class Broken:
        def __init__(self, run_dir, first_step):
            pass

        def log(self, columns, rows):
            raise OSError("disk full")

    monkeypatch.setitem(tracking.LOGGERS, "tensorboard", Broken)
    monkeypatch.setitem(tracking.LOGGERS, "wandb", lambda run_dir, first_step: 1 / 0)
    capsys.readouterr()
    addition.main(TINY + ["--out", str(tmp_path), "--run-name", "tracked", "--tensorboard", "--wandb"])
    err = capsys.readouterr().err
    assert err.count("tensorboard logging failed (OSError: disk full)") == 1
    assert err.count("wandb logging failed (ZeroDivisionError") == 1
    assert (tmp_path / "tracked" / "metrics.csv").read_bytes() == (tmp_path / "plain" / "metrics.csv").read_bytes()
    assert (tmp_path / "tracked" / "summary.json").is_file()


def test_wandb_offline_writes_the_run_into_its_folder(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    addition.main(TINY + ["--out", str(tmp_path), "--run-name", "wb", "--wandb"])
    tracking.close_all()  # what the process does at exit
    logs = list((tmp_path / "wb" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 1 and logs[0].stat().st_size > 0
