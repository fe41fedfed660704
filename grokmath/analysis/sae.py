"""Sparse autoencoders (SAEs) on activations, as the seed notebook 001_ trains them.

`SparseAutoencoder(d_in, d_sae)`: features = ReLU(x @ W_enc + b_enc) [rows, d_sae], reconstruction
= features @ W_dec + b_dec [rows, d_in]. The loss is the notebook's: MSE + sparsity_weight * a KL
sparsity penalty (the sum over features of KL(target || mean activation), both clamped into
(0, 1), the penalty capped at 1e3) + l1_weight * mean |feature|. Adam with gradient clipping at 1;
training stops early when the epoch loss has not improved by more than `min_delta` for `patience`
epochs in a row. As in the notebook, the KL term only steers features whose mean activation is
below 1: above that the clamp saturates it (at the cap, with no gradient), so on large raw
activations (e.g. an MLP's hook_post) sparsity comes from the L1 term; raise --l1-weight for it.

Each epoch reports what the notebook prints: loss, MSE, sparsity penalty, L1 penalty, sparsity
(the fraction of features active, averaged over batches), features used (active on at least one
row of the epoch, of d_sae) and the notebook's combined score, 100 * loss + sparsity + features
used / d_sae (lower is better). `grid_search` trains one SAE per combination of settings and
keeps the one with the best score on held-out activations.

A data source is anything that, iterated, yields activation tensors [rows, d_in] for one epoch:
`TensorSource` (a fixed tensor, shuffled into minibatches) here, or the model-backed source of
`grokmath.analysis.sae_source`.
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..store.checkpoint import atomic_write_json, load_state_dict_checked, safe_load
from ..config import SAEConfig

EPS = 1e-8  # the clamp of the KL penalty's probabilities
MAX_SPARSITY_PENALTY = 1e3
METRICS = ("loss", "mse", "sparsity_penalty", "l1_penalty", "sparsity", "l0", "explained_variance",
           "features_used", "dead_features", "score")


class _Step(torch.autograd.Function):
    """H(h - threshold) with the straight-through gradient of Rajamanoharan et al. (2024) for the
    threshold: d/dthreshold = -(1/bandwidth) * rect((h - threshold) / bandwidth); none for h."""

    @staticmethod
    def forward(ctx, h, threshold, bandwidth):
        ctx.save_for_backward(h, threshold)
        ctx.bandwidth = bandwidth
        return (h > threshold).to(h.dtype)

    @staticmethod
    def backward(ctx, grad):
        h, threshold = ctx.saved_tensors
        window = ((h - threshold).abs() < ctx.bandwidth / 2).to(h.dtype) / ctx.bandwidth
        return None, (-window * grad).reshape(-1, h.shape[-1]).sum(0), None


class _JumpReLU(torch.autograd.Function):
    """h * H(h - threshold): the gradient for h where it passes, and the straight-through
    -(threshold / bandwidth) * rect((h - threshold) / bandwidth) for the threshold."""

    @staticmethod
    def forward(ctx, h, threshold, bandwidth):
        ctx.save_for_backward(h, threshold)
        ctx.bandwidth = bandwidth
        return h * (h > threshold).to(h.dtype)

    @staticmethod
    def backward(ctx, grad):
        h, threshold = ctx.saved_tensors
        window = ((h - threshold).abs() < ctx.bandwidth / 2).to(h.dtype) / ctx.bandwidth
        d_threshold = (-threshold * window * grad).reshape(-1, h.shape[-1]).sum(0)
        return (h > threshold).to(h.dtype) * grad, d_threshold, None


class SparseAutoencoder(nn.Module):
    """W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in] (and `threshold` [d_sae]
    for 'jumprelu'): SAELens's names, shapes and encoders (its apply_b_dec_to_input=False)."""

    def __init__(self, d_in: int, d_sae: int, seed: int = 0, architecture: str = "standard", k: int = 8,
                 jumprelu_init_threshold: float = 1e-3, jumprelu_bandwidth: float = 1e-3):
        super().__init__()
        self.d_in, self.d_sae, self.architecture, self.k = d_in, d_sae, architecture, k
        self.bandwidth = jumprelu_bandwidth
        gen = torch.Generator().manual_seed(seed)

        def uniform(*shape, fan):  # nn.Linear's default initialisation, as the notebook's SAE
            return nn.Parameter((torch.rand(*shape, generator=gen) * 2 - 1) / math.sqrt(fan))

        self.W_enc = uniform(d_in, d_sae, fan=d_in)  # [d_in, d_sae]
        self.b_enc = uniform(d_sae, fan=d_in)
        self.W_dec = uniform(d_sae, d_in, fan=d_sae)  # [d_sae, d_in]
        self.b_dec = uniform(d_in, fan=d_sae)
        if architecture == "jumprelu":
            self.threshold = nn.Parameter(torch.full((d_sae,), float(jumprelu_init_threshold)))

    @classmethod
    def from_config(cls, d_in: int, cfg: SAEConfig) -> "SparseAutoencoder":
        return cls(d_in, cfg.d_sae, cfg.seed, cfg.architecture, cfg.k, cfg.jumprelu_init_threshold,
                   cfg.jumprelu_bandwidth)

    def hidden_pre(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.W_enc + self.b_enc  # [rows, d_sae]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., d_in] -> features [..., d_sae] >= 0, for every architecture (SAELens's encode)."""
        h = self.hidden_pre(x)
        if self.architecture == "topk":  # the k largest, ReLU'd; every other feature 0
            top = h.topk(self.k, dim=-1)
            return torch.zeros_like(h).scatter(-1, top.indices, top.values.relu())
        if self.architecture == "jumprelu":  # relu(h) where h > threshold (SAELens's JumpReLU)
            return F.relu(_JumpReLU.apply(h, self.threshold, self.bandwidth))
        return F.relu(h)

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.W_dec + self.b_dec  # [rows, d_in]

    def forward(self, x: torch.Tensor):
        """x [rows, d_in] -> (features [rows, d_sae], reconstruction [rows, d_in])."""
        features = self.encode(x)
        return features, self.decode(features)


def sae_losses(x, features, recon, cfg: SAEConfig, sae: SparseAutoencoder | None = None) -> dict[str, torch.Tensor]:
    """The loss and its parts (scalars): loss, mse, sparsity_penalty (KL), l1_penalty, l0_penalty.
    'standard': mse + sparsity_weight * KL + l1_weight * L1 (the notebook); 'topk': mse (k fixes the
    sparsity); 'jumprelu': mse + l0_weight * L0 (`sae` needed, for its straight-through L0)."""
    mse = F.mse_loss(recon, x)
    rho = torch.tensor(cfg.sparsity_target, dtype=features.dtype, device=features.device).clamp(EPS, 1 - EPS)
    rho_hat = features.mean(dim=0).clamp(EPS, 1 - EPS)  # [d_sae] mean activation of each feature
    kl = rho * (rho.log() - rho_hat.log()) + (1 - rho) * ((1 - rho).log() - (1 - rho_hat).log())
    sparsity_penalty = kl.sum().clamp(max=MAX_SPARSITY_PENALTY)
    l1_penalty = features.abs().mean()
    l0_penalty = (features > 0).to(features.dtype).sum(-1).mean()
    if cfg.architecture == "standard":
        loss = mse + cfg.sparsity_weight * sparsity_penalty + cfg.l1_weight * l1_penalty
    elif cfg.architecture == "topk":
        loss = mse
    else:
        if sae is None:
            raise ValueError("a JumpReLU SAE's loss needs the SAE (its L0 penalty reads the threshold): pass sae=")
        l0_penalty = _Step.apply(sae.hidden_pre(x), sae.threshold, sae.bandwidth).sum(-1).mean()
        loss = mse + cfg.l0_weight * l0_penalty
    return {"loss": loss, "mse": mse, "sparsity_penalty": sparsity_penalty, "l1_penalty": l1_penalty,
            "l0_penalty": l0_penalty}


def score(loss: float, sparsity: float, features_used: int, d_sae: int) -> float:
    """The notebook's combined score (lower is better): 100 * loss + sparsity + fraction of features used."""
    if not math.isfinite(loss):
        return math.inf
    return 100 * loss + sparsity + features_used / d_sae


class _EpochStats:
    """Running means of the loss parts and of the sparsity, which features fired, and the sums that
    give the explained variance over the whole pass."""

    PARTS = ("loss", "mse", "sparsity_penalty", "l1_penalty", "sparsity", "l0")

    def __init__(self, d_sae: int, device):
        self.sums = {name: 0.0 for name in self.PARTS}
        self.used = torch.zeros(d_sae, dtype=torch.bool, device=device)
        self.n_batches = self.n_skipped = 0
        self.rows, self.sse, self.sum_sq, self.sum_x = 0, 0.0, 0.0, 0.0

    def add(self, parts: dict, features: torch.Tensor, x: torch.Tensor | None = None,
            recon: torch.Tensor | None = None) -> None:
        active = features > 0  # [rows, d_sae]
        values = [parts[k].detach().float() for k in ("loss", "mse", "sparsity_penalty", "l1_penalty")]
        values += [active.float().mean(), active.float().sum(-1).mean()]
        if x is not None:  # float64 sums: explained variance = 1 - sse / (sum_sq - |sum_x|^2 / rows)
            x64 = x.detach().double()
            values += [(x64 - recon.detach().double()).pow(2).sum(), x64.pow(2).sum()]
            self.sum_x = self.sum_x + x64.sum(0)
            self.rows += x.shape[0]
        values = torch.stack([v.double() for v in values]).tolist()  # one host sync per batch
        for name, value in zip(self.PARTS, values):
            self.sums[name] += value
        if x is not None:
            self.sse += values[-2]
            self.sum_sq += values[-1]
        self.used |= active.any(dim=0)
        self.n_batches += 1

    def result(self, d_sae: int) -> dict:
        if self.n_batches == 0:
            return {**{k: math.nan for k in self.PARTS}, "explained_variance": math.nan, "features_used": 0,
                    "dead_features": d_sae, "score": math.inf}
        out = {k: v / self.n_batches for k, v in self.sums.items()}
        variance = self.sum_sq - float((self.sum_x ** 2).sum()) / self.rows if self.rows else 0.0
        out["explained_variance"] = 1 - self.sse / variance if variance > 0 else math.nan
        out["features_used"] = int(self.used.sum())
        out["dead_features"] = d_sae - out["features_used"]  # never fired in this pass
        out["score"] = score(out["loss"], out["sparsity"], out["features_used"], d_sae)
        return out


def format_report(epoch: int | None, metrics: dict, d_sae: int) -> str:
    """One line as the notebook prints it."""
    head = f"Epoch: {epoch}, " if epoch is not None else ""
    used = metrics["features_used"]
    return (f"{head}Score: {metrics['score']:.4f}, Loss: {metrics['loss']:.4f}, MSE: {metrics['mse']:.4f}, "
            f"Sparsity Penalty: {metrics['sparsity_penalty']:.4f}, L1 Penalty: {metrics['l1_penalty']:.4f}, "
            f"Sparsity: {metrics['sparsity']:.2%}, Features used: {used}/{d_sae} ({used / d_sae:.2%}), "
            f"L0: {metrics['l0']:.2f}, Explained variance: {metrics['explained_variance']:.2%}")


def _first_rows(source: Iterable) -> torch.Tensor:
    for x in source:
        return x
    raise ValueError("the activation source yielded no activations: give it at least one batch")


def train_sae(source: Iterable, cfg: SAEConfig, log: Callable[[str], None] | None = None,
              progress: bool = False, device=None):
    """Train a new SAE on `source` (yields [rows, d_in] per step, re-iterated every epoch).
    Returns (sae, history: one row per epoch with METRICS)."""
    first = _first_rows(source)
    if first.ndim != 2:
        raise ValueError(f"activations must be [rows, d_in], got shape {tuple(first.shape)}")
    device = first.device if device is None else torch.device(device)
    sae = SparseAutoencoder.from_config(first.shape[1], cfg).to(device)
    optimizer = torch.optim.Adam(sae.parameters(), lr=cfg.lr)
    rows, best, stale = [], math.inf, 0
    for epoch in tqdm(range(1, cfg.epochs + 1), desc="SAE epochs", disable=not progress, leave=False):
        stats = _EpochStats(cfg.d_sae, device)
        for x in source:
            x = x.to(device, torch.float32)
            features, recon = sae(x)
            parts = sae_losses(x, features, recon, cfg, sae)
            if not torch.isfinite(parts["loss"]):
                stats.n_skipped += 1  # the notebook skips such batches
                continue
            optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.max_grad_norm)
            optimizer.step()
            stats.add(parts, features, x, recon)
        metrics = stats.result(cfg.d_sae)
        rows.append({"epoch": epoch, **metrics, "skipped_batches": stats.n_skipped})
        if log is not None:
            log(format_report(epoch, metrics, cfg.d_sae))
        if metrics["loss"] < best - cfg.min_delta:
            best, stale = metrics["loss"], 0
        else:
            stale += 1
            if stale >= cfg.patience or not math.isfinite(metrics["loss"]):
                if log is not None:
                    log(f"Early stop at epoch {epoch}: no loss improvement over {best:.4g} "
                        f"for {stale} epoch(s)")
                break
    return sae, pd.DataFrame(rows)


@torch.no_grad()
def evaluate_sae(sae: SparseAutoencoder, source: Iterable, cfg: SAEConfig, device=None) -> dict:
    """The report's metrics over one pass of `source`, without training."""
    device = next(sae.parameters()).device if device is None else device
    stats = _EpochStats(sae.d_sae, device)
    for x in source:
        x = x.to(device, torch.float32)
        features, recon = sae(x)
        stats.add(sae_losses(x, features, recon, cfg, sae), features, x, recon)
    return stats.result(sae.d_sae)


class TensorSource:
    """A fixed activation tensor [rows, d_in], shuffled into minibatches anew every epoch."""

    def __init__(self, activations: torch.Tensor, batch_size: int = 1024, seed: int = 0):
        if activations.ndim != 2 or len(activations) == 0:
            raise ValueError(f"activations must be a non-empty [rows, d_in] tensor, got {tuple(activations.shape)}")
        self.activations, self.batch_size = activations, batch_size
        self.gen = torch.Generator().manual_seed(seed)

    def __iter__(self):
        order = torch.randperm(len(self.activations), generator=self.gen).to(self.activations.device)
        for start in range(0, len(order), self.batch_size):
            yield self.activations[order[start:start + self.batch_size]]


GRID_FIELDS = ("d_sae", "lr", "sparsity_target", "sparsity_weight", "l1_weight", "epochs", "patience")


def grid_search(train_source: Iterable, eval_source: Iterable, grid: dict, base: SAEConfig | None = None,
                log: Callable[[str], None] | None = None, progress: bool = True):
    """Train an SAE for every combination of `grid` ({setting: [values]}) and keep the one with the
    best (lowest) score on `eval_source`. Returns (sae, cfg, history, table of every combination)."""
    base = base or SAEConfig()
    for name, values in grid.items():
        if name not in GRID_FIELDS:
            raise ValueError(f"{name!r} is not a grid setting: use some of {', '.join(GRID_FIELDS)}")
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"grid[{name!r}] must be a non-empty list of values")
    names = list(grid)
    combos = list(itertools.product(*(grid[name] for name in names)))
    best, rows = None, []
    for combo in tqdm(combos, desc="SAE grid", disable=not progress or len(combos) == 1):
        cfg = replace(base, **dict(zip(names, combo)))
        if log is not None and len(combos) > 1:
            log(f"SAE grid: {dict(zip(names, combo))}")
        sae, history = train_sae(train_source, cfg, log=log, progress=progress)
        metrics = evaluate_sae(sae, eval_source, cfg)
        rows.append({**dict(zip(names, combo)), "epochs_run": len(history), **metrics})
        if best is None or metrics["score"] < best[3]:
            best = (sae, cfg, history, metrics["score"])
    return best[0], best[1], best[2], pd.DataFrame(rows)


# ---- saving -----------------------------------------------------------------------------------

SAELENS_CFG, SAELENS_WEIGHTS = "cfg.json", "sae_weights.safetensors"


def saelens_config(sae: SparseAutoencoder, extra: dict | None = None) -> dict:
    """SAELens's cfg.json for `sae` (its field names, format 6): what `SAE.load_from_disk` reads.
    grokmath's encoder reads x itself (not x - b_dec), so apply_b_dec_to_input is False."""
    extra = extra or {}
    cfg = {"architecture": sae.architecture, "d_in": sae.d_in, "d_sae": sae.d_sae, "dtype": "float32",
           "device": "cpu", "apply_b_dec_to_input": False, "normalize_activations": "none",
           "reshape_activations": "none",
           "metadata": {"sae_lens_version": "6.0.0",  # the on-disk format version this folder follows
                        "sae_lens_training_version": None, "hook_name": extra.get("hook"),
                        "model_name": f"grokmath:{Path(extra['run_dir']).name}" if "run_dir" in extra else "grokmath",
                        "hook_head_index": None, "prepend_bos": False, "model_class_name": "grokmath.Transformer"}}
    if sae.architecture == "topk":
        cfg.update(k=sae.k, rescale_acts_by_decoder_norm=False)
    return cfg


def save_sae(folder, sae: SparseAutoencoder, cfg: SAEConfig, extra: dict | None = None) -> None:
    """In `folder`, SAELens's layout: `cfg.json` + `sae_weights.safetensors` (W_enc, b_enc, W_dec,
    b_dec, and threshold for JumpReLU), so `sae_lens.SAE.load_from_disk(folder)` loads it unchanged;
    and grokmath's `sae_config.json` (d_in, the training settings and `extra`)."""
    from ..interop.export import atomic_save_safetensors

    folder = Path(folder)
    weights = {k: v.detach().cpu().contiguous() for k, v in sae.state_dict().items()}
    atomic_save_safetensors(weights, folder / SAELENS_WEIGHTS)
    atomic_write_json(folder / SAELENS_CFG, saelens_config(sae, extra))
    atomic_write_json(folder / "sae_config.json", {"d_in": sae.d_in, "sae": cfg.to_dict(), **(extra or {})})


def load_sae(folder, device="cpu"):
    """(sae, cfg, config dict) from a folder written by save_sae (or an older one with sae.pt)."""
    from ..interop.export import load_safetensors

    folder = Path(folder)
    path = folder / "sae_config.json"
    if not path.is_file():
        raise ValueError(f"{folder} has no sae_config.json: give a folder written by scripts/train_sae.py")
    config = json.loads(path.read_text())
    cfg = SAEConfig.from_dict(config["sae"])
    sae = SparseAutoencoder.from_config(config["d_in"], cfg)
    weights = folder / SAELENS_WEIGHTS
    state = load_safetensors(weights) if weights.is_file() else safe_load(folder / "sae.pt")
    load_state_dict_checked(sae, state, str(weights if weights.is_file() else folder / "sae.pt"))
    return sae.to(device).eval(), cfg, config


__all__ = ["SAEConfig", "SparseAutoencoder", "sae_losses", "score", "train_sae", "evaluate_sae", "TensorSource",
           "grid_search", "format_report", "save_sae", "load_sae", "saelens_config", "METRICS", "GRID_FIELDS"]
