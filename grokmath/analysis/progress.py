"""Progress measures for grokking modular addition (Nanda et al. 2023), from a run's checkpoints.

A grokked 1-layer model computes (a + b) mod p with a few *key frequencies* w_k = 2 pi k / p: its
logit for c is a sum over k of cos(w_k (a + b - c)). The measures here follow the paper's code:
- **Fourier analysis** (grokmath.analysis.fourier's mod-p basis: orthonormal rows const, cos 1,
  sin 1, ..., cos (p-1)/2, sin (p-1)/2) of the embedding W_E (rows 0..p-1), of the neuron-logit map
  and, over both inputs, of the MLP neurons' activations on all p*p pairs (a 2D transform).
- **Key frequencies** (`key_frequencies`), found from the trained model: every MLP neuron gets the
  frequency k whose 2D terms {1, cos k, sin k}(a) x {1, cos k, sin k}(b) (less the constant) carry the
  largest share of its activation variance, as in the paper; a frequency is key when at least
  `min_share` (2%) of the neurons take it with a share of at least `min_explained` (0.6).
- **Restricted / excluded logits** (`decompose_logits`): over the p*p inputs, each output's logits
  are split exactly into `const` (their mean over inputs), `key` (the projection onto the
  orthonormal directions cos(w_k (a + b)), sin(w_k (a + b)) of the key frequencies; this span holds
  cos(w_k (a + b - c)) and sin(w_k (a + b - c)) for every c) and `rest`. Restricted logits are
  const + key (the paper's trig logits with its bias correction); excluded logits are
  logits - key = const + rest. So restricted + excluded = logits + const, exactly.
  The restricted loss is scored on all pairs and the excluded loss on the training pairs (the paper).
  Two excluded losses, named: `excluded_loss` removes all key frequencies at once (the paper's
  definition); `excluded_loss_k{k}` removes one at a time (ARENA's chapter and the paper code's
  `calculate_excluded_loss`, one value per key frequency; `excluded_loss_per_frequency`).
  Fourier measures read the p answer logits, the paper's `logits[:, -1, :-1]` (d_vocab_out is p + 1).
- **Gini coefficients** of the norms of the Fourier components of W_E and of the neuron-logit map
  W_L = W_out @ W_U, the total sum of squared weights, and train/test loss and accuracy.
- **Phases** (`detect_phases`), the paper's description turned into a rule: clean-up ends at the
  first checkpoint with test loss < `test_threshold` (the test loss has collapsed); memorisation
  ends where the excluded loss stops falling (its minimum before the clean-up end), but not before
  the train loss is < `train_threshold`; circuit formation ends (clean-up begins) at the last
  checkpoint before the clean-up end whose test loss is still >= `cleanup_fraction` times the test
  loss at the end of memorisation.

`progress_measures(run_dir)` computes the table (one row per checkpoint); `write_progress` writes
`progress_measures.csv`, `progress_measures.json` (key frequencies, phases) and the figures into
the run folder. Subtraction runs are handled with a - b in place of a + b.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..training import losses
from ..store.checkpoint import atomic_write_json, atomic_write_text, load_run
from ..memory import check_fits, progress_bytes
from ..training.plots import save_figure  # sets matplotlib's Agg backend before pyplot loads
import matplotlib.pyplot as plt  # noqa: E402,I001
from .fourier import embedding_fourier, frequency_norms, modular_fourier_basis, neuron_fourier

# ---- small numerical pieces -------------------------------------------------------------------


def gini(values) -> float:
    """Gini coefficient of non-negative values, normalised by n / (n - 1) so that a one-hot vector
    gives exactly 1 and a flat vector exactly 0: sum_ij |x_i - x_j| / (2 (n - 1) sum_i x_i).
    (The unnormalised definition gives (n - 1) / n for one-hot.) All zeros count as flat (0)."""
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if x.size < 2:
        raise ValueError(f"the Gini coefficient needs at least 2 values, got {x.size}")
    if (x < 0).any() or not np.isfinite(x).all():
        raise ValueError("the Gini coefficient needs finite, non-negative values (e.g. norms)")
    total = x.sum()
    if total == 0:
        return 0.0
    n = x.size
    rank = np.arange(1, n + 1)
    # sum_ij |x_i - x_j| = 2 sum_i (2i - n - 1) x_(i) for x sorted ascending
    return float(((2 * rank - n - 1) * x).sum() / ((n - 1) * total))


def trig_directions(p: int, freqs, sign: int = 1) -> torch.Tensor:
    """Orthonormal directions over the p*p inputs (row a*p + b): cos(w_k (a + sign*b)) and
    sin(w_k (a + sign*b)) for each k in freqs, each scaled by sqrt(2)/p -> [2 * len(freqs), p*p]."""
    a = torch.arange(p, dtype=torch.float64)[:, None]
    b = torch.arange(p, dtype=torch.float64)[None, :]
    rows = []
    for k in freqs:
        if not 1 <= int(k) <= (p - 1) // 2:
            raise ValueError(f"frequency {k} is not in 1..{(p - 1) // 2} for p={p}")
        angle = (2 * math.pi * int(k) / p) * (a + sign * b)  # [p, p]
        rows += [angle.cos().flatten(), angle.sin().flatten()]
    if not rows:
        return torch.zeros(0, p * p, dtype=torch.float64)
    return torch.stack(rows) * math.sqrt(2) / p  # [2K, p*p]


@dataclass
class LogitParts:
    """logits [p*p, n_out] = const + key + rest, exactly (see the module docstring)."""
    const: torch.Tensor  # [p*p, n_out] every row the mean over inputs
    key: torch.Tensor  # [p*p, n_out] projection onto the key frequencies' trig directions
    rest: torch.Tensor  # [p*p, n_out]

    @property
    def restricted(self) -> torch.Tensor:
        return self.const + self.key

    @property
    def excluded(self) -> torch.Tensor:
        return self.const + self.rest


def decompose_logits(logits: torch.Tensor, p: int, key_freqs, sign: int = 1) -> LogitParts:
    """Split logits over all pairs [p*p, n_out] (row a*p + b) into const + key + rest."""
    if logits.ndim != 2 or logits.shape[0] != p * p:
        raise ValueError(f"decompose_logits needs logits over all p*p={p * p} pairs as [p*p, n_out], "
                         f"got {tuple(logits.shape)}")
    logits = logits.to(torch.float64)
    const = logits.mean(0, keepdim=True).expand_as(logits)  # [p*p, n_out]
    directions = trig_directions(p, key_freqs, sign)  # [2K, p*p]
    key = directions.T @ (directions @ logits)  # [p*p, n_out]
    return LogitParts(const, key, logits - const - key)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean -log softmax(logits)[label] in float64: the one scoring path, grokmath.training.losses."""
    return float(losses.loss_fn(logits, labels))


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float(losses.accuracy(logits, labels))


# ---- the model's pieces ----------------------------------------------------------------------


def _check_model(model, p: int) -> None:
    cfg = model.cfg
    if cfg.attn_only:
        raise ValueError("progress measures need a model with an MLP (attn_only=False)")
    if cfg.d_vocab_out not in (p, p + 1) or cfg.d_vocab < p:
        raise ValueError(f"the model's vocabulary (d_vocab {cfg.d_vocab}, d_vocab_out {cfg.d_vocab_out}) "
                         f"does not fit modular arithmetic mod p={p}")


def neuron_logit_map(model) -> torch.Tensor:
    """W_L = W_out @ W_U[:, :p] of the last block: each neuron's direct effect on the p answer logits
    [d_mlp, p] (the paper's W_U[:, :-1]: the '=' column is no answer)."""
    W_U = model.W_U.detach()[:, :model.cfg.d_vocab - 1]  # [d_model, p]
    return (model.blocks[-1].mlp.W_out.detach() @ W_U).to(torch.float64)


def fourier_component_norms(model, task) -> dict[str, torch.Tensor]:
    """Norms of each Fourier component [p] (const, cos 1, sin 1, ...) of W_E (over d_model) and of
    W_L (over neurons)."""
    basis, _ = modular_fourier_basis(task.p)
    return {"W_E": embedding_fourier(model, task)[0].norm(dim=1),
            "W_L": (neuron_logit_map(model).cpu() @ basis.T).norm(dim=0)}


def per_frequency(component_norms: torch.Tensor) -> torch.Tensor:
    """Per-component norms [p] -> per-frequency norms [(p-1)/2] (k = 1.., cos k and sin k folded)."""
    p = component_norms.numel()
    names = modular_fourier_basis(p)[1]
    return frequency_norms(component_norms, names)[0][1:]


def sum_squared_weights(model) -> float:
    return float(sum(w.detach().to(torch.float64).pow(2).sum() for w in model.parameters()))


@torch.no_grad()
def all_pair_logits(model, task) -> torch.Tensor:
    """Logits at '=' for every pair: [p*p, d_vocab_out] float64, row a*p + b (the paper's layout has
    p + 1 columns: slice [:, :p], its `[:, -1, :-1]`, for the answers alone)."""
    batch = task.all_pairs(device=next(model.parameters()).device)
    return model(batch.tokens)[:, -1].to(torch.float64).cpu()


def last_layer_neurons_fourier(model, task) -> torch.Tensor:
    """The last block's MLP neurons over all pairs in the 2D Fourier basis: [p, p, d_mlp]."""
    return neuron_fourier(model, task, layer=model.cfg.n_layers - 1)[0]


def neuron_frequencies(post_fourier: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each neuron's dominant frequency and the share of its variance that frequency explains.

    For frequency k the terms are {const, cos k, sin k}(a) x {const, cos k, sin k}(b) less const x const;
    the variance is the sum of squares of all components but const x const. Returns (freq [d_mlp]
    int64, share [d_mlp] float64); a neuron that never varies gets share 0.
    """
    p = post_fourier.shape[0]
    power = post_fourier.pow(2)  # [p, p, d_mlp]
    total = power.sum((0, 1)) - power[0, 0]  # [d_mlp]
    shares = []
    for k in range(1, (p - 1) // 2 + 1):
        idx = torch.tensor([0, 2 * k - 1, 2 * k])
        shares.append(power[idx][:, idx].sum((0, 1)) - power[0, 0])
    shares = torch.stack(shares) / total.clamp_min(1e-30)  # [n_freq, d_mlp]
    share, best = shares.max(0)
    return best + 1, torch.where(total > 0, share, torch.zeros_like(share))


def key_frequencies(model, task, min_explained: float = 0.6, min_share: float = 0.02) -> list[int]:
    """The key frequencies of a trained model (see the module docstring): frequencies that are the
    dominant frequency of >= min_share of the MLP neurons, counting neurons whose dominant frequency
    explains >= min_explained of their variance. Sorted ascending; [] if none qualifies."""
    p = _modular_p(task)
    _check_model(model, p)
    freq, share = neuron_frequencies(last_layer_neurons_fourier(model, task))
    counts = torch.bincount(freq[share >= min_explained], minlength=(p - 1) // 2 + 1)
    need = max(1, math.ceil(min_share * freq.numel()))
    return [int(k) for k in torch.nonzero(counts >= need).flatten()]


def _modular_p(task) -> int:
    if not task.has_progress_measures:
        raise ValueError(f"progress measures are for modular arithmetic runs, not {task.name!r}")
    if task.op not in ("add", "subtract"):
        raise ValueError(f"progress measures need op 'add' or 'subtract' (the trig directions of a + b or "
                         f"a - b), not {task.op!r}")
    return task.p


def _sign(task) -> int:
    return 1 if task.op == "add" else -1


# ---- one checkpoint, a whole run -------------------------------------------------------------


def excluded_loss_per_frequency(logits: torch.Tensor, labels: torch.Tensor, is_train: torch.Tensor, p: int,
                                key_freqs, sign: int = 1) -> dict[int, float]:
    """ARENA's excluded loss (and the paper code's `calculate_excluded_loss`): for each key frequency
    k on its own, the train loss of the logits [p*p, p] less their cos(w_k (a+b)), sin(w_k (a+b))
    components. {k: loss}. (`measures`' `excluded_loss` removes all key frequencies at once.)"""
    return {int(k): cross_entropy(decompose_logits(logits, p, [k], sign).excluded[is_train], labels[is_train])
            for k in key_freqs}


def measures(model, task, is_train: torch.Tensor, key_freqs) -> dict:
    """All per-checkpoint measures of `model`; is_train [p*p] bool marks the training pairs.

    train/test loss and accuracy are the training loop's (over all d_vocab_out logits, '=' included,
    as the paper's `full_loss`); the Fourier measures read the p answer logits (`[:, -1, :-1]`).
    Two excluded losses, named: `excluded_loss` removes every key frequency at once (the paper's
    definition), `excluded_loss_k{k}` one frequency k at a time (ARENA's chapter)."""
    p = _modular_p(task)
    _check_model(model, p)
    full = all_pair_logits(model, task)  # [p*p, d_vocab_out]
    logits = full[:, :p]  # [p*p, p] the answers
    labels = task.all_pairs().targets[:, 0]
    parts = decompose_logits(logits, p, key_freqs, _sign(task))
    norms = fourier_component_norms(model, task)
    is_test = ~is_train
    one_at_a_time = excluded_loss_per_frequency(logits, labels, is_train, p, key_freqs, _sign(task))
    return {
        "train_loss": cross_entropy(full[is_train], labels[is_train]),
        "test_loss": cross_entropy(full[is_test], labels[is_test]),
        "train_acc": accuracy(full[is_train], labels[is_train]),
        "test_acc": accuracy(full[is_test], labels[is_test]),
        "restricted_loss": cross_entropy(parts.restricted, labels),  # all pairs, as the paper
        "restricted_acc": accuracy(parts.restricted, labels),
        "excluded_loss": cross_entropy(parts.excluded[is_train], labels[is_train]),  # train pairs
        "excluded_acc": accuracy(parts.excluded[is_train], labels[is_train]),
        **{f"excluded_loss_k{k}": loss for k, loss in one_at_a_time.items()},
        "gini_W_E": gini(norms["W_E"]),
        "gini_W_L": gini(norms["W_L"]),
        "sum_sq_weights": sum_squared_weights(model),
    }


def train_mask(run) -> torch.Tensor:
    """[p*p] bool: the pairs the run trained on (`run.split()`, the training loop's own split code)."""
    train, _ = run.split()
    p = run.task.p
    mask = torch.zeros(p * p, dtype=torch.bool)
    mask[train.tokens[:, 0] * p + train.tokens[:, 1]] = True
    return mask


def progress_measures(run_dir, key_freqs=None, every: int = 1, progress: bool = True):
    """(table, key_freqs): the measures at every `every`-th checkpoint of the run (and the last).
    key_freqs=None finds them from the newest checkpoint."""
    run = load_run(run_dir, load_model=False)
    _modular_p(run.task)
    if run.train_cfg.data != "full":
        raise ValueError(f"{run_dir} was not trained on the modular split (data='full'): progress measures "
                         "need the train/test split of scripts/train_modular.py")
    steps = run.steps
    if not steps:
        raise ValueError(f"{run_dir} has no model checkpoints: train it first")
    steps = sorted(set(steps[::every]) | {steps[-1]})
    check_fits(progress_bytes(run.model_cfg, run.task.p), "cpu", f"the progress measures of a p={run.task.p} run "
               f"(all {run.task.p ** 2} pairs at once)", "run them on a machine with more memory")
    if key_freqs is None:
        key_freqs = key_frequencies(run.load_model(steps[-1]), run.task)
    top = (run.task.p - 1) // 2
    bad = [k for k in key_freqs if not (isinstance(k, int) and 1 <= k <= top)]
    if bad:
        raise ValueError(f"key frequency {bad[0]} is not in 1..{top} for p={run.task.p}: give frequencies in that range")
    is_train = train_mask(run)
    rows = []
    for step in tqdm(steps, desc="checkpoints", disable=not progress, dynamic_ncols=True):
        rows.append({"step": step, **measures(run.load_model(step), run.task, is_train, key_freqs)})
    return pd.DataFrame(rows), list(key_freqs)


def detect_phases(table: pd.DataFrame, train_threshold: float = 0.01, test_threshold: float = 0.01,
                  cleanup_fraction: float = 0.5) -> dict:
    """The three phases' boundaries (steps) from a progress table (see the module docstring):
    {'memorisation_end', 'circuit_formation_end', 'cleanup_end'}, each None where not reached.
    Without an excluded_loss column memorisation ends when the train loss is first < train_threshold."""
    steps = table["step"].to_numpy()
    train, test = table["train_loss"].to_numpy(), table["test_loss"].to_numpy()
    index = np.arange(len(steps))
    first = lambda cond: int(np.flatnonzero(cond)[0]) if cond.any() else None  # noqa: E731
    phases = {"memorisation_end": None, "circuit_formation_end": None, "cleanup_end": None}
    i_fit = first(train < train_threshold)
    if i_fit is None:
        return phases
    i_clean = first((index >= i_fit) & (test < test_threshold))
    i_mem = i_fit
    if "excluded_loss" in table:
        window = (index >= i_fit) & (index <= (len(steps) - 1 if i_clean is None else i_clean))
        excluded = np.where(window, table["excluded_loss"].to_numpy(), np.inf)
        i_mem = int(np.argmin(excluded))
    phases["memorisation_end"] = int(steps[i_mem])
    if i_clean is None:
        return phases
    phases["cleanup_end"] = int(steps[i_clean])
    high = np.flatnonzero((index >= i_mem) & (index < i_clean) & (test >= cleanup_fraction * test[i_mem]))
    phases["circuit_formation_end"] = int(steps[high[-1] if len(high) else i_mem])
    return phases


# ---- figures and files ------------------------------------------------------------------------

PHASE_COLOURS = {"memorisation": "tab:blue", "circuit formation": "tab:orange", "clean-up": "tab:green"}


def _shade_phases(ax, phases: dict, start: int, label: bool = False) -> None:
    edges = [start, phases.get("memorisation_end"), phases.get("circuit_formation_end"), phases.get("cleanup_end")]
    for (name, colour), left, right in zip(PHASE_COLOURS.items(), edges[:-1], edges[1:]):
        if left is None or right is None:
            break
        ax.axvspan(left, right, color=colour, alpha=0.12, lw=0, label=name if label else None)


def plot_progress(table: pd.DataFrame, phases: dict, key_freqs, path, title: str = "Progress measures"):
    """The paper-style figure: train/test loss with the phases shaded, then the restricted and
    excluded losses, the Gini coefficients and the sum of squared weights beneath."""
    step = table["step"]
    start = int(step.iloc[0])
    fig, axes = plt.subplots(4, 1, figsize=(9, 12), sharex=True, layout="constrained")
    ax = axes[0]
    ax.plot(step, table["train_loss"], label="train loss", color="tab:blue")
    ax.plot(step, table["test_loss"], label="test loss", color="tab:red")
    ax.set_yscale("log")
    ax.set_ylabel("Loss (log)")
    ax.set_title(f"{title}\nkey frequencies {', '.join(map(str, key_freqs)) or 'none found'}")
    _shade_phases(ax, phases, start, label=True)
    ax.legend(fontsize=8, loc="lower left")
    ax = axes[1]
    ax.plot(step, table["train_loss"], label="train loss", color="tab:blue", lw=0.8, alpha=0.5)
    ax.plot(step, table["test_loss"], label="test loss", color="tab:red", lw=0.8, alpha=0.5)
    ax.plot(step, table["restricted_loss"], label="restricted loss (key freqs only, all pairs)", color="tab:purple")
    ax.plot(step, table["excluded_loss"], label="excluded loss (key freqs removed, train pairs)", color="tab:brown")
    ax.set_yscale("log")
    ax.set_ylabel("Loss (log)")
    ax.legend(fontsize=8, loc="lower left")
    ax = axes[2]
    ax.plot(step, table["gini_W_E"], label="Gini of W_E's Fourier norms")
    ax.plot(step, table["gini_W_L"], label="Gini of W_L = W_out W_U's Fourier norms")
    ax.set_ylabel("Gini coefficient")
    ax.legend(fontsize=8, loc="upper left")
    ax = axes[3]
    ax.plot(step, table["sum_sq_weights"], color="black")
    ax.set_ylabel("Sum of squared weights")
    ax.set_xlabel("Step (epoch)")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax is not axes[0]:
            _shade_phases(ax, phases, start)
    return save_figure(fig, path)


def plot_fourier(model, task, key_freqs, path, title: str = "Fourier components of the trained model"):
    """Per-frequency norms of W_E and W_L, and the neurons' dominant frequencies, key ones marked."""
    p = _modular_p(task)
    norms = fourier_component_norms(model, task)
    freq, share = neuron_frequencies(last_layer_neurons_fourier(model, task))
    freqs = np.arange(1, (p - 1) // 2 + 1)
    colours = ["tab:red" if k in set(key_freqs) else "tab:gray" for k in freqs]
    panels = [(per_frequency(norms["W_E"]).numpy(), "norm of W_E's cos k, sin k rows"),
              (per_frequency(norms["W_L"]).numpy(), "norm of W_L's cos k, sin k columns"),
              (np.bincount(freq[share >= 0.6].numpy(), minlength=len(freqs) + 1)[1:],
               "neurons whose dominant frequency is k\n(explaining >= 60% of their variance)")]
    fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True, layout="constrained")
    for ax, (values, ylabel) in zip(axes, panels):
        ax.bar(freqs, values, color=colours)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_title(f"{title}\n(red: key frequencies {', '.join(map(str, key_freqs)) or 'none'})")
    axes[-1].set_xlabel("Frequency k (w = 2 pi k / p)")
    return save_figure(fig, path)


def write_progress(run_dir, every: int = 1, key_freqs=None, progress: bool = True, **phase_options) -> dict:
    """Compute the measures and write progress_measures.csv / .json / .png and fourier.png into the
    run folder (replacing earlier ones). Returns {'table', 'key_freqs', 'phases', 'paths'}."""
    table, key_freqs = progress_measures(run_dir, key_freqs, every, progress)
    phases = detect_phases(table, **phase_options)
    run = load_run(run_dir, load_model=False)
    folder = run.path
    atomic_write_text(folder / "progress_measures.csv", table.to_csv(index=False))
    atomic_write_json(folder / "progress_measures.json", {
        "key_freqs": key_freqs, "phases": phases, "phase_options": phase_options,
        "key_freqs_from_step": int(table["step"].iloc[-1]),
    })
    task = run.task
    subject = f"modular {task.op} mod {task.p}, seed {run.model_cfg.seed}"
    paths = [folder / "progress_measures.csv", folder / "progress_measures.json",
             plot_progress(table, phases, key_freqs, folder / "progress_measures.png", f"Progress measures: {subject}"),
             plot_fourier(run.load_model(), task, key_freqs, folder / "fourier.png",
                          f"Fourier components at step {int(table['step'].iloc[-1])}: {subject}")]
    return {"table": table, "key_freqs": key_freqs, "phases": phases, "paths": [Path(p) for p in paths]}
