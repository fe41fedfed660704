"""The plotly views: each figure carries exactly the values and labels it was given; without
plotly the import fails with the one line that says what to install."""
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from grokmath.analysis import interactive

plotly = pytest.importorskip("plotly")  # in the dev extra; the library itself never needs it


def test_attention_figure_holds_every_heads_pattern_with_the_token_labels():
    gen = torch.Generator().manual_seed(0)
    patterns = torch.rand(2, 3, 5, 5, generator=gen).tril().softmax(-1)  # [layer, head, query, key]
    labels = ["0:1", "1:5", "2:5", "3:+", "4:="]  # two '5' tokens stay separate cells
    fig = interactive.attention_figure(patterns, labels)
    assert len(fig.data) == 6
    for i, trace in enumerate(fig.data):
        layer, head = divmod(i, 3)
        assert trace.name == f"L{layer}H{head}"
        np.testing.assert_array_equal(np.asarray(trace.z), patterns[layer, head].double().numpy())
        assert trace.zmin == 0 and trace.zmax == 1
        assert [tuple(cell) for cell in trace.customdata[1]] == [("1:5", label) for label in labels]
    axis = fig.layout.xaxis
    assert list(axis.ticktext) == labels and list(axis.tickvals) == list(range(5))
    one_layer = interactive.attention_figure(patterns[0], labels)  # [head, query, key]
    assert len(one_layer.data) == 3
    with pytest.raises(ValueError, match="one label per position"):
        interactive.attention_figure(patterns, labels[:4])
    with pytest.raises(ValueError, match="one sequence"):
        interactive.attention_figure(torch.zeros(2, 2, 3, 5, 5), labels)


def test_loss_figure_draws_the_columns_skipping_unmeasured_steps():
    metrics = pd.DataFrame({"step": [0, 1, 2, 3], "loss_A1": [2.0, 1.0, 0.5, 0.0],
                            "loss_A0": [2.0, 0.5, 0.25, 0.125], "test_loss": [3.0, np.nan, 1.0, np.nan]})
    fig = interactive.loss_figure(metrics)
    assert [t.name for t in fig.data] == ["A1", "A0"]
    assert fig.layout.yaxis.type == "log"
    np.testing.assert_array_equal(fig.data[0].y, [2.0, 1.0, 0.5, np.nan])  # 0 has no place on a log axis
    test = interactive.loss_figure(metrics, columns=["test_loss"], log_y=False)
    assert list(test.data[0].x) == [0, 2] and list(test.data[0].y) == [3.0, 1.0]
    with pytest.raises(ValueError, match="no column 'loss_A9'"):
        interactive.loss_figure(metrics, columns=["loss_A9"])


def test_heatmap_figure_centres_signed_values():
    values = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    fig = interactive.heatmap_figure(values, ["a", "b", "c"], ["L0H0", "L0H1"], xlabel="digit", ylabel="head")
    trace = fig.data[0]
    np.testing.assert_array_equal(np.asarray(trace.z), values.double().numpy())
    assert trace.zmid == 0
    assert list(fig.layout.yaxis.ticktext) == ["L0H0", "L0H1"]
    assert interactive.heatmap_figure(values.abs()).data[0].zmid is None


def test_without_plotly_the_error_is_one_line_saying_what_to_install(monkeypatch):
    for name in [m for m in sys.modules if m == "plotly" or m.startswith("plotly.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "plotly", None)  # import plotly now fails as if it were absent
    assert not interactive.available()
    with pytest.raises(ModuleNotFoundError) as error:
        interactive.loss_figure(pd.DataFrame({"step": [0], "loss_A0": [1.0]}))
    message = str(error.value)
    assert "\n" not in message and 'pip install -e ".[notebooks]"' in message
