"""Tiny models and a briefly trained addition model shared by the analysis tests."""
import torch

from grokmath.config import ModelConfig
from grokmath.training.losses import loss_fn
from grokmath.model.transformer import Transformer
from grokmath.tasks import make_task


def tiny_model(task, **settings) -> Transformer:
    options = dict(n_layers=2, d_model=16, n_heads=2, d_vocab=task.d_vocab, d_vocab_out=task.d_vocab_out,
                   n_ctx=task.n_ctx)
    options.update(settings)
    return Transformer(ModelConfig(**options)).eval()


def trained_addition(n_digits=2, steps=150, seed=0, n_layers=1):
    """A model (1-layer by default) trained briefly on addition: some questions right, some wrong."""
    task = make_task("addition", n_digits=n_digits)
    model = tiny_model(task, n_layers=n_layers, d_model=32, seed=seed).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = task.sample(128, generator)
        loss = loss_fn(model(batch.tokens, positions=task.pred_pos), batch.targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), task
