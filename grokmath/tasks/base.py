"""The small interface every task shares.

A task makes batches of token sequences for one toy problem. Predictions are scored at a
fixed set of logit positions (`pred_pos`): the logits at position `pred_pos[i]` are scored
against `targets[:, i]`. For next-token tasks (addition, arithmetic, induction) the target is
the token at `pred_pos[i] + 1`; for skip-trigram and modular arithmetic it is a label that is
not in the sequence. A per-example `mask` says which predictions count where that varies
(induction); elsewhere it is None and every prediction counts.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from ..config import check_whole as check_int  # noqa: F401 (the task files' name for it)


@dataclass
class Batch:
    tokens: torch.Tensor  # [batch, n_ctx] int64
    targets: torch.Tensor  # [batch, n_pred] int64
    mask: torch.Tensor | None = None  # [batch, n_pred] bool, None = all scored
    meta: dict[str, torch.Tensor] = field(default_factory=dict)  # each [batch, ...]

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def to(self, device) -> "Batch":
        mask = None if self.mask is None else self.mask.to(device)
        return replace(self, tokens=self.tokens.to(device), targets=self.targets.to(device),
                       mask=mask, meta=type(self.meta)({k: v.to(device) for k, v in self.meta.items()}))

    def index(self, idx) -> "Batch":
        """Rows `idx` (a slice, index tensor or bool tensor) of every field."""
        mask = None if self.mask is None else self.mask[idx]
        return replace(self, tokens=self.tokens[idx], targets=self.targets[idx], mask=mask,
                       meta=type(self.meta)({k: v[idx] for k, v in self.meta.items()}))

    @staticmethod
    def cat(batches: list["Batch"]) -> "Batch":
        first = batches[0]
        mask = None if first.mask is None else torch.cat([b.mask for b in batches])
        return Batch(torch.cat([b.tokens for b in batches]), torch.cat([b.targets for b in batches]),
                     mask, type(first.meta)({k: torch.cat([b.meta[k] for b in batches]) for k in first.meta}))


class Task:
    """Base class: subclasses set the attributes below in __init__ and implement sample()."""

    name: str
    d_vocab: int
    d_vocab_out: int
    n_ctx: int
    pred_pos: torch.Tensor  # [n_pred] int64, the logit positions that are scored
    pred_labels: list[str]  # [n_pred] a name per scored position, for tables and plots
    token_names: list[str]  # [d_vocab] what each input token means
    # What the analyses may ask of a task (analysis/explain, analysis/attention, analysis/progress):
    has_ground_truth = False  # addition, arithmetic: the answer's intermediate variables are known
    has_repeats = False  # induction: repeated subsequences (meta 'starts'), scored for induction heads
    has_progress_measures = False  # modular: the progress-measures paper's Fourier measures apply
    position_word = "position"  # what plots call a scored position ('digit' in the digit tasks)
    truth_ops: tuple[str, ...] = ()  # the ops whose ground-truth variables are known (op_mask, variable_prefix)
    # addition, arithmetic: questions of n_question tokens whose answer, n_answer tokens, is a number
    # (`answer_from_tokens`), which analysis/evaluate checks by greedy generation
    has_numeric_answers = False
    draws_apart = False  # addition, arithmetic: `draw` below, so the captured step builds batches on the device

    def options(self) -> dict:
        """The keyword options that rebuild this task with make_task(self.name, **options)."""
        raise NotImplementedError

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        raise NotImplementedError

    def draw(self, batch_size: int, generator: torch.Generator) -> tuple:
        """Where `draws_apart` (addition, arithmetic): the random part of `sample`, with sample(n, gen)
        == from_digits(*draw(n, gen)); the captured training step draws on the host and builds the
        batch on the device (grokmath.training.capture)."""
        raise NotImplementedError(f"the {self.name!r} task draws its batches whole (draws_apart is False)")

    def title(self) -> str:
        """The task in a plot title, e.g. '5 digit addition'."""
        return self.name.replace("_", " ")

    def position_names(self) -> list[str]:
        """A name per token position, for tables and plots: here the position numbers."""
        return [str(p) for p in range(self.n_ctx)]

    def question_sampler(self, enrich: bool | None = None):
        """What analyses draw questions from (anything with `sample(batch_size, generator)`).

        enrich: None draws from the task's own (training) distribution, enriched if the task
        enriches; False draws uniformly random questions (never enriched: what accuracy in nines is
        counted on); True draws from the enriched distribution (the hard cases: long carry and
        borrow cascades), which only addition and arithmetic have. Here: the task itself.
        """
        if enrich:
            raise ValueError(f"enriched questions exist for the addition and arithmetic tasks, not {self.name!r}")
        return self

    def full_data_sizes(self) -> tuple[int, int]:
        """(training set size, training + test set size) of the 'full' data regime; (1, 1) where a
        task has no finite set of questions to split."""
        return 1, 1

    def fourier_basis(self) -> tuple[torch.Tensor, list[str]]:
        """The Fourier basis over the task's number tokens ([n_basis, n], names; tasks/fourier_bases.py)."""
        raise ValueError(f"no Fourier basis for the {self.name!r} task: use addition, arithmetic or modular")

    def operand_grid(self, place: int = 0, n_samples: int = 32, seed: int = 0, op: str = "add"):
        """Questions over every pair of operand values (a, b), a-major, each pair `n_samples` times
        in a row where other digits are drawn at random: (batch, the answer position of `place`, n),
        n the number of operand values (analysis.fourier.input_grid)."""
        raise ValueError(f"no operand grid for the {self.name!r} task: use addition, arithmetic or modular")

    def reference_losses(self) -> dict[str, float]:
        """Named loss levels drawn as horizontal lines on the loss plots; {} where a task has none."""
        return {}

    def pred_pos_on(self, device) -> torch.Tensor:
        """pred_pos on `device`, copied there once (not a host-to-device copy for every batch)."""
        cache = self.__dict__.setdefault("_pred_pos_on", {})
        key = str(torch.device(device))
        if key not in cache:
            cache[key] = self.pred_pos.to(device)
        return cache[key]

    def split(self, n_train: int | None, generator: torch.Generator, n_test: int | None = None):
        """A fixed training set and a disjoint held-out test set: (train Batch, test Batch)."""
        raise NotImplementedError

    def case_masks(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Named bool masks [batch, n_pred] for per-case losses; {} where a task has none."""
        return {}

    def question_classes(self, meta: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The class of each whole question, as named bool masks [batch] that partition the batch
        (every possible class, in a fixed order, empty ones included); {} where a task has none.

        Here: a task whose metadata has a `cascade` (addition) gets its carry classes S0..S<n>,
        Quirke's question complexity; arithmetic names its classes per op (arithmetic.py).
        These names are the ones evaluation, the SAE's feature tables and plots use.
        """
        if "cascade" not in meta:
            return {}
        cascade = meta["cascade"]
        return {f"S{k}": cascade == k for k in range(self.n_digits + 1)}

    def encode(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, tokens: torch.Tensor) -> list[str]:
        raise NotImplementedError


def fixed_split(task, cfg, generator: torch.Generator) -> tuple[Batch, Batch]:
    """The fixed (train, test) sets of a 'finite' or 'full' training run (TrainConfig cfg), drawn
    with `generator` (the training loop's, seeded with cfg.seed): what the loop and `Run.split` use."""
    if cfg.data == "infinite":
        raise ValueError("this run drew fresh batches every step (infinite data): it has no fixed train/test split")
    n_train = cfg.n_train if cfg.data == "finite" else None
    return task.split(n_train, generator, cfg.n_test) if cfg.n_test else task.split(n_train, generator)


# ---- small helpers shared by the task files -------------------------------------------------


def check_generator(generator) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise ValueError("pass an explicit generator, e.g. generator=torch.Generator().manual_seed(0)")
    return generator


def first_unique_rows(keys: torch.Tensor) -> torch.Tensor:
    """Indices of the first occurrence of each distinct row of `keys` [n, k], in order of occurrence."""
    if keys.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=keys.device)
    _, inverse = torch.unique(keys, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), keys.shape[0], dtype=torch.int64, device=keys.device)
    first = first.scatter_reduce(0, inverse, torch.arange(keys.shape[0], device=keys.device), "amin")
    return first.sort().values


def unique_split(sample, n_train: int, n_test: int, generator: torch.Generator, key_len: int,
                 n_distinct: int | None = None) -> tuple[Batch, Batch]:
    """A train set and a test set drawn with `sample(batch_size, generator)` that share no question.

    Questions are the first `key_len` tokens of a row. Rows are drawn until `n_train + n_test`
    distinct questions are found; the first `n_train` (in drawing order) are the train set and the
    next `n_test` the test set, so the result is fixed by the generator's seed. `n_distinct` is
    the number of possible questions, when known, to refuse impossible requests early.
    """
    want = n_train + n_test
    if n_distinct is not None and want > n_distinct:
        raise ValueError(f"n_train + n_test = {want} but the task has only {n_distinct} distinct "
                         f"questions; ask for fewer")
    pool = None
    draw = want + want // 4 + 256
    for _ in range(64):
        fresh = sample(draw, generator)
        pool = fresh if pool is None else Batch.cat([pool, fresh])
        pool = pool.index(first_unique_rows(pool.tokens[:, :key_len]))
        if len(pool) >= want:
            return pool.index(slice(0, n_train)), pool.index(slice(n_train, want))
        draw = min(4 * draw, 4 * want + 4096)
    raise ValueError(f"found only {len(pool)} distinct questions of the {want} asked for; "
                     f"ask for fewer (n_train + n_test)")


def encode_strings(texts, vocab: dict[str, int], words: bool = False) -> torch.Tensor:
    """Strings to tokens [batch, len] int64: one token per character (whitespace ignored), or per
    whitespace-separated word when `words`. Unknown characters/words raise a ValueError naming them."""
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise ValueError("encode takes a list of strings, e.g. encode(['12345+67890='])")
    rows = []
    for text in texts:
        parts = text.split() if words else [c for c in text if not c.isspace()]
        for part in parts:
            if part not in vocab:
                what = "token" if words else "character"
                raise ValueError(f"unknown {what} {part!r} in {text!r}; known: {' '.join(vocab)}")
        rows.append([vocab[part] for part in parts])
    if len({len(r) for r in rows}) > 1:
        raise ValueError("encode needs strings of the same length (one tensor); encode them separately")
    return torch.tensor(rows, dtype=torch.int64).reshape(len(rows), -1)


def decode_tokens(tokens: torch.Tensor, names: list[str], sep: str = "") -> list[str]:
    """Tokens [batch, len] (or one sequence [len]) to strings, joining token names with `sep`."""
    tokens = torch.as_tensor(tokens)
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2:
        raise ValueError(f"decode takes tokens [batch, len], got shape {tuple(tokens.shape)}")
    rows = tokens.tolist()
    bad = [t for row in rows for t in row if not 0 <= t < len(names)]
    if bad:
        raise ValueError(f"token {bad[0]} is outside this task's vocabulary 0..{len(names) - 1}")
    return [sep.join(names[t] for t in row) for row in rows]
