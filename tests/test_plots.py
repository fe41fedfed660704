"""The training-curve plots show what a researcher looks for: each digit's smoothed curve over its
faint raw one, a dot at its first step under 0.1, per-case panels scaled to the curves rather than
to the noise, accuracy labelled per digit, and log axes labelled 0.1, 0.2, 1 (never 2x10^0).
Figures are caught before they are written (save_figure) and read back from matplotlib's objects."""
import numpy as np
import pandas as pd
import pytest

from grokmath.training import plots

N = 600
CROSS = {"A2": 150, "A1": 320, "A0": 470}  # the step each synthetic digit's loss first falls under 0.1


def synthetic_metrics() -> pd.DataFrame:
    """A plateau at 2.3 with noise, then at CROSS[d] a drop to 0.05 (the first value under 0.1 there);
    a rare case column that is NaN most steps and spikes to 1e-8."""
    rng = np.random.default_rng(0)
    steps = np.arange(N)
    table = {"step": steps, "lr": np.full(N, 1e-3)}
    for digit, at in CROSS.items():
        loss = 2.3 + 0.1 * rng.random(N)
        loss[at:] = 0.05 + 0.04 * rng.random(N - at)
        table[f"loss_{digit}"] = loss
    table["train_loss"] = np.mean([table[f"loss_{d}"] for d in CROSS], axis=0)
    table["train_acc"] = np.linspace(0.1, 0.9, N)
    rare = np.where(rng.random(N) < 0.2, 1.0 + rng.random(N), np.nan)
    rare[::37] = 1e-8  # a lucky batch of one easy example
    for digit in CROSS:
        table[f"case_UseSum9/{digit}"] = rare
        table[f"case_BaseAdd/{digit}"] = table[f"loss_{digit}"]
    return pd.DataFrame(table)


@pytest.fixture
def figures(monkeypatch):
    caught = []

    def keep(fig, path):
        fig.canvas.draw()  # tick labels exist only once drawn
        caught.append(fig)
        return path

    monkeypatch.setattr(plots, "save_figure", keep)
    return caught


def test_per_digit_curves_are_smoothed_over_the_raw_with_a_dot_at_each_first_step_under_0_1(figures, tmp_path):
    metrics = synthetic_metrics()
    plots.plot_position_losses(metrics, tmp_path / "p.png", "Per-digit")
    linear, log = figures[0].axes
    window = plots.smoothing_window(N)
    assert window > 1
    for ax in (linear, log):
        labels = {line.get_label(): line for line in ax.get_lines()}
        for digit, at in CROSS.items():
            smoothed = labels[f"{digit} (< 0.1 at {at})"]  # the legend names the step
            expected = metrics[f"loss_{digit}"].rolling(window, center=True, min_periods=1).mean()
            np.testing.assert_allclose(smoothed.get_ydata(), expected.to_numpy())
            dots = [line for line in ax.get_lines() if line.get_marker() == "o"
                    and line.get_color() == smoothed.get_color()]
            assert [list(d.get_xdata()) for d in dots] == [[at]]
            raw = [line for line in ax.get_lines() if line.get_color() == smoothed.get_color()
                   and line.get_alpha() is not None and line.get_alpha() < 0.5]
            np.testing.assert_array_equal(raw[0].get_ydata(), metrics[f"loss_{digit}"].to_numpy())


def test_log_axes_say_plain_numbers(figures, tmp_path):
    metrics = synthetic_metrics()
    plots.plot_position_losses(metrics, tmp_path / "p.png")
    plots.plot_train_test(metrics, tmp_path / "l.png")
    for fig in figures:
        for ax in fig.axes:
            if ax.get_yscale() != "log":
                continue
            texts = [t.get_text() for t in ax.get_yticklabels(minor=False) + ax.get_yticklabels(minor=True)]
            shown = [t for t in texts if t]
            assert shown and not any("times" in t or "^" in t or "$" in t for t in shown), shown
            for text in shown:
                float(text)  # every label is a plain number


def test_rare_case_panels_are_scaled_to_the_smoothed_curves_not_the_noise(figures, tmp_path):
    plots.plot_cases(synthetic_metrics(), tmp_path / "c.png")
    panels = {ax.get_title().split(" (")[0]: ax for ax in figures[0].axes}
    low, _ = panels["UseSum9"].get_ylim()
    assert low > 1e-3  # the 1e-8 spikes stay off the scale; the smoothed curves fill it
    assert "smoothed over" in panels["UseSum9"].get_title()


def test_the_accuracy_panel_says_per_digit_not_per_answer(figures, tmp_path):
    plots.plot_train_test(synthetic_metrics(), tmp_path / "l.png", position_word="digit")
    accuracy = figures[0].axes[1]
    assert "per digit" in accuracy.get_title() and "not per whole answer" in accuracy.get_title()
    assert accuracy.get_ylabel() == "Fraction of digits right"
