"""The grokking literature's code on grokmath modular runs: the progress-measures paper's split
(re-typed here from its `gen_train_test`, with Python's global `random`), its output layout
(d_vocab_out = p + 1, so `logits[:, -1, :-1]` and `W_U[:, :-1]` run as written), a loaded run's
split in one call, and the two excluded losses (all key frequencies at once; one at a time)."""
import json
import math
import random

import numpy as np
import pytest
import torch

from grokmath.analysis import progress as pm
from grokmath.store.checkpoint import load_run
from grokmath.config import TrainConfig, model_config_for
from grokmath.model.transformer import Transformer
from grokmath.training.run import start_run
from grokmath.tasks import make_task


def paper_gen_train_test(p, frac_train, seed):
    """The paper's gen_train_test, as written there (global random, (i, j, p) triples)."""
    pairs = [(i, j, p) for i in range(p) for j in range(p)]
    random.seed(seed)
    random.shuffle(pairs)
    div = int(frac_train * len(pairs))
    return pairs[:div], pairs[div:]


@pytest.mark.parametrize("p, frac, seed", [(113, 0.3, 0), (31, 0.6, 5), (7, 0.5, 123)])
def test_modular_split_is_the_papers_exact_split(p, frac, seed):
    state = random.getstate()
    want_train, want_test = paper_gen_train_test(p, frac, seed)
    random.setstate(state)
    task = make_task("modular", p=p, frac_train=frac)
    train, test = task.split(generator=torch.Generator().manual_seed(seed))
    assert [tuple(row) for row in train.tokens.tolist()] == want_train  # same pairs, same order
    assert [tuple(row) for row in test.tokens.tolist()] == want_test
    assert train.targets[:, 0].tolist() == [(a + b) % p for a, b, _ in want_train]


def test_modular_output_layout_is_the_papers():
    task = make_task("modular", p=13)
    model = Transformer(model_config_for(task, d_model=16, n_heads=2, d_mlp=32))
    all_data = torch.tensor([(i, j, 13) for i in range(13) for j in range(13)])  # the paper's all_data
    logits = model(all_data)[:, -1, :-1]  # the paper / ARENA slice: the 13 answers
    assert logits.shape == (169, 13)
    assert model.W_U[:, :-1].shape == (16, 13) and model.cfg.d_vocab_out == 14
    assert task.token_names[13] == "="  # the dropped column is '=' (token p)


def test_a_loaded_run_gives_its_split_in_one_call(tmp_path):
    task = make_task("modular", p=11, frac_train=0.4)
    cfg = TrainConfig(steps=2, batch_size=None, data="full", checkpoint_every=1, seed=3)
    start_run(model_config_for(task, d_model=8, n_heads=2, d_mlp=16), task, cfg, tmp_path / "r", progress=False)
    run = load_run(tmp_path / "r")
    train, test = run.split()
    want_train, want_test = paper_gen_train_test(11, 0.4, 3)
    assert [tuple(r) for r in train.tokens.tolist()] == want_train
    assert [tuple(r) for r in test.tokens.tolist()] == want_test
    # the literature's losses on it are the training loop's own (step 1's weights, its metrics row)
    model = run.load_model(1)
    with torch.no_grad():
        logits = model(train.tokens)[:, -1].double()  # the paper's full_loss: all p + 1 logits
    loss = -logits.log_softmax(-1).gather(-1, train.targets).mean().item()
    assert loss == pytest.approx(run.metrics.set_index("step").loc[1, "train_loss"], rel=1e-5)
    # a run from before the paper's layout (d_vocab_out p) trained on another split: refused, not misread
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    config["model"]["d_vocab_out"] = 11
    (tmp_path / "r" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="paper's output layout and train/test split: retrain it"):
        load_run(tmp_path / "r")


def _loss(logits, labels):
    """-mean log softmax by hand (numpy, float64)."""
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


def test_excluded_losses_all_at_once_and_one_at_a_time():
    p, freqs = 13, [2, 5]
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(p * p, p, generator=gen, dtype=torch.float64) * 3
    a, b = np.divmod(np.arange(p * p), p)
    labels = torch.tensor((a + b) % p)
    is_train = torch.rand(p * p, generator=gen) < 0.3

    def remove(ks):
        """The logits less their projection onto cos/sin(w_k (a + b)), ARENA's project-out, by lstsq."""
        X = np.stack([f(2 * math.pi * k / p * (a + b)) for k in ks for f in (np.cos, np.sin)], 1)
        coef, *_ = np.linalg.lstsq(X, logits.numpy(), rcond=None)
        return logits.numpy() - X @ coef

    m = is_train.numpy()
    per_freq = pm.excluded_loss_per_frequency(logits, labels, is_train, p, freqs)
    for k in freqs:
        assert per_freq[k] == pytest.approx(_loss(remove([k])[m], labels.numpy()[m]), rel=1e-10)
    parts = pm.decompose_logits(logits, p, freqs)
    at_once = pm.cross_entropy(parts.excluded[is_train], labels[is_train])
    assert at_once == pytest.approx(_loss(remove(freqs)[m], labels.numpy()[m]), rel=1e-10)
    assert at_once != pytest.approx(per_freq[2]) and at_once != pytest.approx(per_freq[5])
