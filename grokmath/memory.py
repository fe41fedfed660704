"""Will it fit? Memory estimates from the configs, checked before anything is allocated.

A size a user can type (`--batch-size 10000000`, `--d-model 100000`, `--p 4999`, an SAE of 10^8
features) would otherwise end in a traceback from the allocator or in the kernel's OOM killer,
minutes later. Each estimate counts only the big terms, in float32 bytes: the parameters (and, to
train, their gradients and AdamW's two moments, Grokfast's state), the activations one forward
and backward keep, the logits and their float64 log-softmax, and a fixed data set. They are lower
bounds, so a refusal means the job cannot fit; one that passes may still be close.
`check_fits(nbytes, device, what, fix)` compares with the memory free now and raises one
ValueError. On a CPU that is the least of: MemAvailable; what each memory cgroup this process is in
(and its parents) has left, v2 (memory.max) or v1 (memory.limit_in_bytes), its reclaimable page
cache counted as free; and the address space left under `ulimit -v` (RLIMIT_AS). On a GPU:
torch.cuda.mem_get_info. Every script that allocates by a number a user gives checks first:
training, evaluate, ablate, attention, progress_measures, train_sae.
"""
from __future__ import annotations

import os
from pathlib import Path

try:
    import resource
except ImportError:  # not on Windows
    resource = None

import torch

FLOAT = 4  # bytes of a float32


def format_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


CGROUP_ROOT = Path("/sys/fs/cgroup")  # where the cgroup file systems are mounted
PROC_SELF = Path("/proc/self")
_UNLIMITED_V1 = 1 << 62  # cgroup v1 writes "no limit" as a number near 2**63


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _stat_value(path: Path, key: str) -> int:
    """One value of a cgroup's memory.stat (0 when absent)."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_dirs(mount: Path, cgroup_path: str) -> list[Path]:
    """The folders of this process's cgroup and its parents under `mount` (in a container, whose
    cgroup path is not visible there, the mount itself)."""
    parts = [p for p in cgroup_path.strip("/").split("/") if p]
    dirs = [mount.joinpath(*parts[:i]) for i in range(len(parts), 0, -1)] + [mount]
    return [d for d in dirs if d.is_dir()]


def _cgroup_free() -> list[int]:
    """What each memory cgroup limit over this process leaves: limit - usage + reclaimable page cache."""
    free = []
    try:
        lines = (PROC_SELF / "cgroup").read_text().splitlines()
    except OSError:
        lines = ["0::/"]
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":  # v2 (unified)
            mount = CGROUP_ROOT if (CGROUP_ROOT / "cgroup.controllers").exists() else CGROUP_ROOT / "unified"
            for folder in _cgroup_dirs(mount, path):
                limit = (folder / "memory.max").read_text().strip() if (folder / "memory.max").is_file() else "max"
                used = _read_int(folder / "memory.current")
                if limit != "max" and used is not None:
                    free.append(int(limit) - used + _stat_value(folder / "memory.stat", "inactive_file"))
        elif "memory" in controllers.split(","):  # v1
            for folder in _cgroup_dirs(CGROUP_ROOT / "memory", path):
                limit, used = _read_int(folder / "memory.limit_in_bytes"), _read_int(folder / "memory.usage_in_bytes")
                if limit is not None and used is not None and limit < _UNLIMITED_V1:
                    free.append(limit - used + _stat_value(folder / "memory.stat", "total_inactive_file"))
    return free


def _address_space_free() -> int | None:
    """The address space left under `ulimit -v` (RLIMIT_AS): the limit less this process's VmSize."""
    if resource is None:
        return None
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit == resource.RLIM_INFINITY:
        return None
    size = 0
    try:
        for line in (PROC_SELF / "status").read_text().splitlines():
            if line.startswith("VmSize:"):
                size = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return limit - size


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
            pass
    limits = [n for n in (available, _address_space_free(), *_cgroup_free()) if n is not None]
    return max(0, min(limits)) if limits else None


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
    return task.full_data_sizes()


def ablation_bytes(cfg, questions: int, variants: int) -> int:
    """Ablating on `questions` questions, `variants` ablations per forward pass: the questions'
    tokens, the reference activations cached over them, and one forward over `variants` copies of
    them with the logits at every position."""
    return questions * cfg.n_ctx * 8 * (1 + variants) + forward_bytes(cfg, questions * variants, cfg.n_ctx,
                                                                      training=False)


def attention_bytes(cfg, rows: int) -> int:
    """Every layer's attention pattern over `rows` sequences (cached, then stacked), and the forward."""
    return 2 * rows * cfg.n_layers * cfg.n_heads * cfg.n_ctx * cfg.n_ctx * FLOAT + forward_bytes(
        cfg, rows, cfg.n_ctx, training=False)


def progress_bytes(cfg, p: int) -> int:
    """Progress measures of a mod-p run (grokmath.analysis.progress), per checkpoint: a forward over
    all p*p pairs, their logits in float64 split three ways (const, key, rest) plus one more, and the
    MLP neurons over all pairs with their 2-D Fourier transform (float64)."""
    pairs = p * p
    return forward_bytes(cfg, pairs, cfg.n_ctx, training=False) + 4 * pairs * p * 8 + 2 * pairs * cfg.d_mlp * 8


def check_training_fits(model_cfg, task, train_cfg, device, n_models: int = 1) -> None:
    check_fits(training_bytes(model_cfg, task, train_cfg, n_models), device,
               "this run (weights, optimizer state, one step's activations and data)",
               "lower --batch-size, --d-model, --d-mlp, --n-layers or the task's size")
