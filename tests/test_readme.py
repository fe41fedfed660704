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


def test_the_training_table_states_the_seed_set_ups_of_experiments_py():
    """Every setting the README's 'Training any task' table (and the main-job text) names for a seed
    set-up is the value grokmath/experiments.py holds, so a changed default cannot leave it stale."""
    from dataclasses import asdict

    from grokmath.experiments import experiment_configs, settings

    text = README.read_text()
    table = text[text.index("## Training any task"):text.index("The induction script uses")]
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `train_(\w+)\.py[^|]*\| (.*) \|$", table, re.M)}
    rows["addition"] = text[text.index("## The main job"):text.index("## Training any task")]
    assert set(rows) == {"addition", "arithmetic", "skip_trigram", "induction", "modular"}
    patterns = {"d_model": r"d_model (\d+)", "n_layers": r"(\d+) layers?\b", "n_heads": r"(\d+) heads?\b",
                "d_head": r"d_head (\d+)", "d_mlp": r"d_mlp (\d+)", "lr": r"\blr ([\d.e-]+)",
                "batch_size": r"\bbatch (\d+)", "steps": r"(\d+) steps\b", "seed": r"\bseed (\d+)",
                "seq_len": r"\bseq (\d+)", "p": r"\bp (\d+)", "weight_decay": r"\bwd ([\d.]+)"}
    checked = 0
    for name, row in rows.items():
        task_options, _, _, seed = settings(name)
        _, model_cfg, train_cfg = experiment_configs(name)  # d_head, d_mlp as the model derives them
        values = {**task_options, **asdict(model_cfg), **asdict(train_cfg), "seed": seed}
        for key, pattern in patterns.items():
            found = re.search(pattern, row)
            if found is None or key not in values:
                continue
            assert float(found.group(1)) == float(values[key]), f"README says {key} {found.group(1)} for {name}"
            checked += 1
    assert checked >= 35


def test_the_first_screen_installs_what_ci_installs_and_says_what_a_cpu_user_types():
    """The README opens with three commands (install, main job, tests); .ci/run installs with that
    same line and runs that test command; a CPU-only user is told the CPU wheel's index, a line of its
    own, before the same install line."""
    text = README.read_text()
    first = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first.splitlines() if line.strip()]
    assert commands == ['pip install torch==2.13.0 -e ".[dev]"', "python scripts/train_addition.py --digits 5",
                        "pytest"]
    ci = [line.strip() for line in (README.parent / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#")]
    assert ci[-2:] == ['pip install -q torch==2.13.0 -e ".[dev]"', "pytest"]
    cpu = re.search(r"\*\*CPU only\*\*.*?```bash\n(.*?)```", text, re.S).group(1)
    assert [line.strip() for line in cpu.splitlines() if line.strip()] == [
        "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu", commands[0]]
    assert "CUDA build" in text[:text.index("## The main job")]


def test_the_small_run_example_names_its_own_folder():
    """The README's small run must not land in the main job's folder (addition_5d_s129000)."""
    text = README.read_text()
    small = re.search(r"`(python scripts/train_addition\.py --d-model 64 --steps 200[^`]*)`", text).group(1)
    assert "--run-name" in small
