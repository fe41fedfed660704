"""Model insertion: weights land in the stated slices, an inserted model with its extra parts
silenced computes the small model's logits, shape mismatches are refused, modes 2 and 3 restore."""
import copy
import json

import pytest
import torch

from grokmath.config import ModelConfig
from grokmath.training.insert import Inserter, insert_model, insert_problems, inserter_from_run, parse_heads
from grokmath.model.transformer import Transformer

BASE = dict(d_model=16, d_head=4, d_vocab=15, n_ctx=10, normalization="LN", positional="learned")


def small_and_large(small_bias=True, large=None, **small):
    s_cfg = ModelConfig(n_layers=2, n_heads=2, d_mlp=24, attn_bias=small_bias, mlp_bias=small_bias,
                        unembed_bias=small_bias, seed=1, **{**BASE, **small})
    l_cfg = ModelConfig(n_layers=4, n_heads=3, d_mlp=40, attn_bias=True, mlp_bias=True, unembed_bias=True,
                        seed=2, **{**BASE, **(large or {})})
    return Transformer(s_cfg), Transformer(l_cfg)


def randomise_small(model, seed=0):
    """Non-trivial LayerNorm and bias values, so copying them is actually checked."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.split(".")[-1] in ("w", "b") or ".b_" in name or name.endswith("b_U"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3 + (1.0 if name.endswith(".w") else 0.0))


@pytest.mark.parametrize("late", [False, True])
def test_inserted_weights_land_in_the_right_most_heads_and_first_mlp_units(late):
    small, large = small_and_large()
    randomise_small(small)
    before = copy.deepcopy(large)
    layers = insert_model(small, large, late=late)
    assert layers == ([2, 3] if late else [0, 1])
    for s_layer, l_layer in enumerate(layers):
        s, l, b = small.blocks[s_layer], large.blocks[l_layer], before.blocks[l_layer]
        for name in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V"):
            # small heads 0, 1 -> large heads 1, 2 (the right-most); large head 0 keeps its own init
            assert torch.equal(getattr(l.attn, name)[1:], getattr(s.attn, name))
            assert torch.equal(getattr(l.attn, name)[0], getattr(b.attn, name)[0])
        assert torch.equal(l.attn.b_O, s.attn.b_O)
        assert torch.equal(l.mlp.W_in[:, :24], s.mlp.W_in) and torch.equal(l.mlp.W_in[:, 24:], b.mlp.W_in[:, 24:])
        assert torch.equal(l.mlp.W_out[:24], s.mlp.W_out) and torch.equal(l.mlp.W_out[24:], b.mlp.W_out[24:])
        assert torch.equal(l.mlp.b_in[:24], s.mlp.b_in) and torch.equal(l.mlp.b_in[24:], b.mlp.b_in[24:])
        assert torch.equal(l.mlp.b_out, s.mlp.b_out)
        for ln in ("ln1", "ln2"):
            assert torch.equal(getattr(l, ln).w, getattr(s, ln).w) and torch.equal(getattr(l, ln).b, getattr(s, ln).b)
    for l_layer in set(range(4)) - set(layers):  # layers outside the insertion are untouched
        for (name, p), q in zip(large.blocks[l_layer].named_parameters(), before.blocks[l_layer].parameters()):
            assert torch.equal(p, q), name
    for name in ("embed.W_E", "pos_embed.W_pos", "unembed.W_U", "unembed.b_U", "ln_final.w", "ln_final.b"):
        assert torch.equal(large.get_parameter(name), small.get_parameter(name)), name


def silence_extra_parts(small, large, layers):
    """Zero what the small model does not have: extra heads' W_O, extra MLP units' W_out, and every
    output of the layers outside the insertion."""
    offset = large.cfg.n_heads - small.cfg.n_heads
    with torch.no_grad():
        for index, block in enumerate(large.blocks):
            if index in layers:
                block.attn.W_O[:offset].zero_()
                block.mlp.W_out[small.cfg.d_mlp:].zero_()
            else:
                for p in (block.attn.W_O, block.attn.b_O, block.mlp.W_out, block.mlp.b_out):
                    p.zero_()


@pytest.mark.parametrize("late", [False, True])
@pytest.mark.parametrize("small_bias", [True, False])
def test_insert_mode_1_model_with_extra_parts_zeroed_gives_the_small_models_logits(late, small_bias):
    small, large = small_and_large(small_bias=small_bias)
    randomise_small(small, seed=3)
    inserter = Inserter(small, large, mode=1, late=late)
    inserter.start()
    silence_extra_parts(small, large, inserter.layers)
    tokens = torch.randint(0, 15, (8, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = small(tokens)
        got = large(tokens)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not inserter.after_step(0)  # mode 1 never restores


def test_shape_mismatches_are_listed_in_one_clear_error():
    small, large = small_and_large(large=dict(d_model=20, d_head=5))
    with pytest.raises(ValueError, match=r"d_model is 16 in the small model but 20.*d_head is 4"):
        insert_model(small, large)
    small, large = small_and_large()
    narrow = Transformer(ModelConfig(n_layers=1, n_heads=1, d_mlp=8, attn_bias=True, unembed_bias=True, **BASE))
    problems = insert_problems(small.cfg, narrow.cfg)
    assert [p.split(" ")[0] for p in problems] == ["n_layers", "n_heads", "d_mlp"]
    with pytest.raises(ValueError, match="n_layers is 2 in the small model but only 1"):
        Inserter(small, narrow)
    other_vocab = Transformer(ModelConfig(n_layers=4, n_heads=3, **{**BASE, "d_vocab": 12}))
    with pytest.raises(ValueError, match="d_vocab is 15 .* 12 .*same task layout"):
        insert_model(small, other_vocab)
    no_bias = Transformer(ModelConfig(n_layers=4, n_heads=3, d_mlp=40, attn_bias=False, **BASE))
    with pytest.raises(ValueError, match="attn_bias=True but the large one has attn_bias=False"):
        insert_model(small, no_bias)


def test_bad_modes_heads_and_head_lists_are_refused():
    small, large = small_and_large()
    with pytest.raises(ValueError, match="insert mode 4 is not known"):
        Inserter(small, large, mode=4)
    with pytest.raises(ValueError, match="L2H0 is not in the small model"):
        Inserter(small, large, mode=2, heads=[(2, 0)])
    with pytest.raises(ValueError, match="only applies to insert mode 2"):
        Inserter(small, large, mode=3, heads=[(0, 0)])
    with pytest.raises(ValueError, match="every=0"):
        Inserter(small, large, mode=2, every=0)
    assert parse_heads("L0H1, l1h0") == [(0, 1), (1, 0)]
    with pytest.raises(ValueError, match="'0.1' .* is not a head like L0H1"):
        parse_heads("L0H0,0.1")


def perturb(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)


@pytest.mark.parametrize("mode", [2, 3])
def test_modes_2_and_3_restore_their_parts_every_n_steps(mode):
    small, large = small_and_large()
    randomise_small(small)
    heads = [(1, 0)] if mode == 2 else None
    inserter = Inserter(small, large, mode=mode, heads=heads, every=5)
    inserter.start()
    perturb(large)
    trained = copy.deepcopy(large)
    assert not inserter.after_step(7)
    for p, q in zip(large.parameters(), trained.parameters()):
        assert torch.equal(p, q)
    assert inserter.after_step(10)
    l1, s1, t1 = large.blocks[1], small.blocks[1], trained.blocks[1]
    # small L1H0 is large L1H1 (one extra head on the left)
    assert torch.equal(l1.attn.W_Q[1], s1.attn.W_Q[0]) and torch.equal(l1.attn.W_O[1], s1.attn.W_O[0])
    assert torch.equal(l1.attn.b_V[1], s1.attn.b_V[0])
    assert torch.equal(l1.attn.W_Q[0], t1.attn.W_Q[0])  # the extra head keeps its trained value
    restored_all = mode == 3
    assert torch.equal(l1.attn.W_K[2], s1.attn.W_K[1]) == restored_all
    assert torch.equal(l1.attn.b_O, s1.attn.b_O) == restored_all
    assert torch.equal(l1.mlp.W_in[:, :24], s1.mlp.W_in) == restored_all
    assert torch.equal(l1.mlp.b_out, s1.mlp.b_out) == restored_all
    assert torch.equal(l1.mlp.W_in[:, 24:], t1.mlp.W_in[:, 24:])
    # LayerNorms and embeddings are only copied at the start (the notebook's first_time)
    assert torch.equal(l1.ln1.w, t1.ln1.w) and torch.equal(large.embed.W_E, trained.embed.W_E)
    assert inserter.describe()["heads"] == (["L1H0"] if mode == 2 else None)


def test_inserter_from_a_trained_run_folder(tmp_path):
    """A 2-digit addition run in the arithmetic layout started inside a wider mixed add/sub model."""
    from grokmath.tasks import make_task
    from grokmath.config import TrainConfig, model_config_for
    from grokmath.training.run import start_run

    task = make_task("arithmetic", n_digits=2, ops={"add": 100})
    small_cfg = model_config_for(task, n_layers=1, d_model=16, n_heads=2, d_mlp=32, normalization="LN")
    start_run(small_cfg, task, TrainConfig(steps=3, checkpoint_every=3), tmp_path / "small", device="cpu",
              progress=False, plots=False)
    mixed = make_task("arithmetic", n_digits=2, ops={"add": 20, "sub": 80})
    large = Transformer(model_config_for(mixed, n_layers=2, d_model=16, n_heads=3, d_head=8, d_mlp=48,
                                         normalization="LN", seed=9))
    inserter = inserter_from_run(large, tmp_path / "small", mode=2, heads="L0H1", every=50)
    inserter.start()
    trained = torch.load(tmp_path / "small" / "checkpoints" / "model_000003.pt", weights_only=True)
    assert torch.equal(large.blocks[0].attn.W_V[2], trained["blocks.0.attn.W_V"][1])
    assert torch.equal(large.blocks[0].mlp.W_out[:32], trained["blocks.0.mlp.W_out"])
    assert inserter.describe() == {"run_dir": str(tmp_path / "small"), "step": 3, "mode": 2, "late": False,
                                   "every": 50, "heads": ["L0H1"]}
    addition_only = make_task("addition", n_digits=2)  # another vocabulary: refused, naming the folder
    other = Transformer(model_config_for(addition_only, n_layers=2, d_model=16, n_heads=3, d_head=8))
    with pytest.raises(ValueError, match=r"--insert-from .*small: cannot insert .* d_vocab is 15 .* 12"):
        inserter_from_run(other, tmp_path / "small")


def test_train_arithmetic_insert_from_restores_heads_and_keeps_doing_so_on_resume(tmp_path, capsys):
    """--insert-from / --insert-mode 2 through the script: config.json records the insertion, the
    listed head equals the small model's after each restoring step, also after --resume."""
    import runpy
    from pathlib import Path

    script = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "train_arithmetic.py"),
                            run_name="train_arithmetic")
    tiny = ["--digits", "2", "--d-model", "16", "--n-heads", "2", "--device", "cpu", "--out", str(tmp_path),
            "--no-progress", "--no-plots", "--batch-size", "16", "--schedule", "warmup", "--lr", "1e-2"]
    script["main"](tiny + ["--ops", "add=100", "--n-layers", "1", "--steps", "3", "--run-name", "small"])
    small = torch.load(tmp_path / "small" / "checkpoints" / "model_000003.pt", weights_only=True)
    big = tiny + ["--ops", "add=50,sub=50", "--n-layers", "2", "--steps", "3", "--d-head", "8",
                  "--checkpoint-every", "1", "--insert-from", str(tmp_path / "small"), "--insert-mode", "2",
                  "--insert-heads", "L0H1", "--insert-every", "2", "--insert-late"]
    script["main"](big[:big.index("--n-heads") + 1] + ["3"] + big[big.index("--n-heads") + 2:])
    run = tmp_path / "ins2_arithmetic_2d_add50sub50_s372001"
    config = json.loads((run / "config.json").read_text())
    assert config["insert"] == {"run_dir": str(tmp_path / "small"), "step": 3, "mode": 2, "late": True,
                                "every": 2, "heads": ["L0H1"]}

    def weights(step):
        return torch.load(run / "checkpoints" / f"model_{step:06d}.pt", weights_only=True)

    # small L0 is large L1 (late); small head 1 is large head 2 (right-most)
    for step in (0, 3):  # step 0: the insertion; step 3: restored after the optimizer step of step 2
        assert torch.equal(weights(step)["blocks.1.attn.W_Q"][2], small["blocks.0.attn.W_Q"][1])
    assert not torch.equal(weights(2)["blocks.1.attn.W_Q"][2], small["blocks.0.attn.W_Q"][1])  # trained at step 1
    assert not torch.equal(weights(3)["blocks.1.attn.W_Q"][1], small["blocks.0.attn.W_Q"][0])  # not listed
    assert torch.equal(weights(0)["blocks.1.mlp.W_in"][:, :64], small["blocks.0.mlp.W_in"])
    script["main"](["--resume", str(run), "--steps", "5", "--no-progress", "--no-plots"])
    assert torch.equal(weights(5)["blocks.1.attn.W_Q"][2], small["blocks.0.attn.W_Q"][1])  # restored at step 4
    with pytest.raises(ValueError, match="--insert-mode need.* --insert-from"):
        script["main"](tiny + ["--insert-mode", "2", "--run-name", "x"])
    capsys.readouterr()
