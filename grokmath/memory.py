"""Will it fit? Memory estimates from the configs, checked before anything is allocated.

A size a user can type (`--batch-size 10000000`, `--d-model 100000`, `--p 4999`, an SAE of 10^8
features) would otherwise end in a traceback from the allocator or in the kernel's OOM killer,
minutes later. Each estimate counts only the big terms, in float32 bytes: the parameters (and, to
train, their gradients and AdamW's two moments, Grokfast's state), the activations one forward
and backward keep, the logits and their float64 log-softmax, and a fixed data set. They are lower
bounds, so a refusal means the job cannot fit; one that passes may still be close.
`check_fits(nbytes, device, what, fix)` compares with the memory free now (CPU: MemAvailable,
and the cgroup's limit where one is set; GPU: torch.cuda.mem_get_info) and raises one ValueError.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

FLOAT = 4  # bytes of a float32


def format_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _cpu_available() -> int | None:
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    try:  # a container's own limit (cgroup v2)
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return available


def available_bytes(device) -> int | None:
    """Memory free on `device` now (None: unknown)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return _cpu_available()


def check_fits(nbytes: float, device, what: str, fix: str) -> None:
    """Raise a ValueError ('`what` needs about N of memory but M is free: `fix`') when it cannot fit."""
    free = available_bytes(device)
    if free is not None and nbytes > free:
        where = "GPU" if torch.device(device).type == "cuda" else "CPU"
        raise ValueError(f"{what} needs about {format_bytes(nbytes)} of {where} memory but {format_bytes(free)} is "
                         f"free: {fix}")


# ---- estimates --------------------------------------------------------------------------------

def n_params(cfg) -> int:
    """The big weights of a ModelConfig's Transformer (embeddings, attention, MLP, unembedding)."""
    per_layer = 4 * cfg.n_heads * cfg.d_model * cfg.d_head + (0 if cfg.attn_only else 2 * cfg.d_model * cfg.d_mlp)
    return cfg.d_model * (cfg.d_vocab + cfg.n_ctx + cfg.d_vocab_out) + cfg.n_layers * per_layer


def forward_bytes(cfg, rows: int, n_pred: int, training: bool) -> int:
    """Activations of a forward over `rows` sequences: with training, what backward keeps (about
    six residual-width, two MLP-width and two attention-pattern tensors per layer), else the
    largest two live at once; plus the logits at n_pred positions (and in training their float64
    log-softmax and its gradient)."""
    per_layer = [3 * cfg.n_heads * cfg.d_head, cfg.n_heads * cfg.n_ctx, 0 if cfg.attn_only else cfg.d_mlp]
    if training:
        per_token = cfg.n_layers * (6 * cfg.d_model + 2 * cfg.n_heads * cfg.n_ctx
                                    + (0 if cfg.attn_only else 2 * cfg.d_mlp))
        logit_bytes = FLOAT + 8 + 8
    else:
        per_token = 2 * max(cfg.d_model, *per_layer)
        logit_bytes = FLOAT
    return rows * (cfg.n_ctx * per_token * FLOAT + n_pred * cfg.d_vocab_out * logit_bytes)


def training_bytes(model_cfg, task, train_cfg, n_models: int = 1) -> int:
    """One training step of n_models models (--seeds): weights, gradients, AdamW's moments, Grokfast's
    state, the activations of the batch (a full batch: the training set) and of a test chunk, and a
    fixed data set's tensors."""
    params = n_params(model_cfg)
    state = {None: 0, "ema": 1, "ma": train_cfg.grokfast_window}[train_cfg.grokfast]
    total = params * FLOAT * (4 + state)
    n_pred = len(task.pred_pos)
    rows = train_cfg.batch_size
    if train_cfg.data != "infinite":
        n_train, n_all = _data_sizes(task, train_cfg)
        rows = n_train if rows is None else min(rows, n_train)
        total += n_all * (task.n_ctx + 2 * n_pred) * 8  # tokens, targets and a mask, int64
        total += forward_bytes(model_cfg, min(8192, n_all - n_train), n_pred, training=False)  # test chunks
    total += forward_bytes(model_cfg, rows, n_pred, training=True)
    return n_models * total


def _data_sizes(task, train_cfg) -> tuple[int, int]:
    """(training set size, training + test set size) of a 'finite' or 'full' regime."""
    if train_cfg.data == "finite":
        return train_cfg.n_train, train_cfg.n_train + (train_cfg.n_test or train_cfg.n_train)
    if hasattr(task, "p"):  # modular arithmetic: every pair, split by frac_train
        total = task.p * task.p
        return max(1, int(task.frac_train * total)), total
    return 1, 1


def check_training_fits(model_cfg, task, train_cfg, device, n_models: int = 1) -> None:
    check_fits(training_bytes(model_cfg, task, train_cfg, n_models), device,
               "this run (weights, optimizer state, one step's activations and data)",
               "lower --batch-size, --d-model, --d-mlp, --n-layers or the task's size")
