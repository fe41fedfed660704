"""The README's model-and-hooks examples run as written and mean what the text says."""
import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def section_code(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}")
    end = text.index("\n## ", start + 1)
    return "\n".join(re.findall(r"```python\n(.*?)```", text[start:end], re.S))


def test_model_and_hooks_examples_run_and_mean_what_they_say():
    ns = {}
    exec(compile(section_code("The model and its hooks"), "README.md", "exec"), ns)
    model, tokens, cache = ns["model"], ns["tokens"], ns["cache"]

    def zero_head_1_returning(z, hook):  # the same ablation written as a returned replacement
        z = z.clone()
        z[:, :, 1] = 0
        return z

    with torch.no_grad():
        returned = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", zero_head_1_returning)])
        clean = model(tokens)
    assert torch.equal(ns["ablated"], returned)  # the in-place edit took effect ...
    assert not torch.allclose(ns["ablated"], clean)
    assert torch.allclose(clean, ns["logits"], atol=1e-5)  # ... and left no hook or weight change behind
    assert set(ns["shapes"]) == {"blocks.0.mlp.hook_post"}
    # decompose_resid's parts add up to the stream the unembedding reads
    assert torch.allclose(ns["parts"].sum(0), cache["resid_post", -1], atol=1e-5)
    assert ns["labels"][:2] == ["L0H0", "L0H1"]
    dense = model.blocks[0].attn.W_V[1] @ model.blocks[0].attn.W_O[1]  # [d_model, d_model]
    assert torch.allclose(ns["S"], torch.linalg.svdvals(dense)[: len(ns["S"])], atol=1e-4)
