"""Tests for grokmath.tasks: answers against Python integers, metadata against plain per-digit
loops written here, splits, seeding, option errors and the text round trip."""
import re

import pytest
import torch

from grokmath.experiments import EXPERIMENTS, seed_batch_size
from grokmath.tasks import TASKS, Batch, make_task, time_per_batch
from grokmath.tasks.addition import MAX_DIGITS as ADD_MAX
from grokmath.tasks.arithmetic import MAX_DIGITS as ARITH_MAX


def gen(seed):
    return torch.Generator().manual_seed(seed)


def parse_addition(text, n):
    match = re.fullmatch(rf"(\d{{{n}}})\+(\d{{{n}}})=(\d{{{n + 1}}})", text)
    assert match, text
    return match.groups()


def parse_arithmetic(text, n):
    match = re.fullmatch(rf"(\d{{{n}}})([-+*])(\d{{{n}}})=([-+])(\d{{{n + 1}}})", text)
    assert match, text
    return match.groups()


def reference_addition_meta(xs, ys):
    """Per-digit cases from digit strings (most significant first), units first in the lists."""
    n = len(xs)
    x, y = int(xs), int(ys)
    xd, yd = [int(c) for c in reversed(xs)], [int(c) for c in reversed(ys)]
    meta = {key: [] for key in ("base_add", "make_carry", "make_carry_base", "sum9", "use_carry", "use_sum9")}
    for i in range(n):
        base = xd[i] + yd[i]
        carry_in = x % 10 ** i + y % 10 ** i >= 10 ** i  # a carry reaches place i
        meta["base_add"].append(base)
        meta["make_carry"].append(x % 10 ** (i + 1) + y % 10 ** (i + 1) >= 10 ** (i + 1))
        meta["make_carry_base"].append(base >= 10)
        meta["sum9"].append(base == 9)
        meta["use_carry"].append(carry_in)
        meta["use_sum9"].append(carry_in and base == 9)
    longest = 0
    for i in range(n):
        if xd[i] + yd[i] >= 10:
            k = i + 1
            while k < n and xd[k] + yd[k] == 9:
                k += 1
            longest = max(longest, k - i)
    meta["cascade"] = longest
    return meta


def reference_borrow_class(xs, ys):
    """Quirke's subtraction classes: M (answer >= 0) or N (negative), as a chain length."""
    n = len(xs)
    xd, yd = [int(c) for c in reversed(xs)], [int(c) for c in reversed(ys)]
    borrow = [xd[i] < yd[i] for i in range(n)]
    zero = [xd[i] == yd[i] for i in range(n)]
    if int(xs) < int(ys):  # negative answers ignore equal digits above the question's top digit
        top = max([i for i in range(n) if xd[i] or yd[i]], default=-1)
        zero = [zero[i] and i <= top for i in range(n)]
    longest = 0
    for i in range(n):
        if borrow[i]:
            k = i + 1
            while k < n and zero[k]:
                k += 1
            longest = max(longest, k - i)
    return longest


# ---- addition ------------------------------------------------------------------------------


@pytest.mark.parametrize("n", list(range(1, 16)) + [18, ADD_MAX])
def test_addition_answers_match_python_integers(n):
    task = make_task("addition", n_digits=n)
    batch = task.sample(2000, gen(n))
    assert batch.tokens.dtype == torch.int64 and batch.tokens.shape == (2000, 3 * n + 3)
    texts = task.decode(batch.tokens)
    for text, answer in zip(texts, task.answer_from_tokens(batch.tokens)):
        xs, ys, zs = parse_addition(text, n)
        assert int(xs) + int(ys) == int(zs) == answer
    assert torch.equal(batch.targets, batch.tokens[:, task.pred_pos + 1])
    assert task.d_vocab == 12 and task.d_vocab_out == 10 and int(batch.targets.max()) < 10


def test_addition_layout_five_digits():
    task = make_task("addition", n_digits=5)
    assert (task.n_ctx, task.n_question, task.n_answer) == (18, 12, 6)
    assert task.pred_pos.tolist() == list(range(11, 17)) and task.pred_pos.dtype == torch.int64
    assert task.pred_labels == ["A5", "A4", "A3", "A2", "A1", "A0"]
    assert task.token_names[10:] == ["+", "="]
    full = task.from_questions(task.encode(["12345+67890="]))
    assert task.decode(full.tokens) == ["12345+67890=080235"]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 15, ADD_MAX])
def test_addition_metadata_matches_a_per_digit_loop(n):
    task = make_task("addition", n_digits=n)
    batch = task.sample(300, gen(100 + n))
    handmade = ["9" * n + "+" + "0" * (n - 1) + "1=", "5" * n + "+" + "4" * (n - 1) + "5=",
                "0" * n + "+" + "0" * n + "=", "9" * n + "+" + "9" * n + "="]
    batch = Batch.cat([batch, task.from_questions(task.encode(handmade))])
    texts = task.decode(batch.tokens)
    for row, text in enumerate(texts):
        xs, ys, _ = parse_addition(text, n)
        want = reference_addition_meta(xs, ys)
        for key in want:
            assert batch.meta[key][row].tolist() == want[key], (key, text)
    # the handmade rows: a full cascade through every place, twice, then none, then all carries
    assert batch.meta["cascade"][-4:].tolist() == [n, n, 0, 1]


def test_addition_cascade_classes_all_occur():
    task = make_task("addition", n_digits=5)
    cascade = task.sample(20000, gen(3)).meta["cascade"]
    assert set(cascade.tolist()) >= {0, 1, 2, 3, 4}
    # S0: no digit pair reaches 10, probability 0.55 ** 5
    assert abs((cascade == 0).float().mean().item() - 0.55 ** 5) < 0.01


@pytest.mark.parametrize("n", [1, 2, 5, 11])
def test_addition_case_masks_partition_and_match_integers(n):
    task = make_task("addition", n_digits=n)
    batch = task.sample(500, gen(7))
    masks = task.case_masks(batch)
    assert set(masks) == {"BaseAdd", "UseCarry1", "UseSum9"}
    stacked = torch.stack([masks["BaseAdd"], masks["UseCarry1"], masks["UseSum9"]])
    assert stacked.shape == (3, 500, n + 1) and stacked.dtype == torch.bool
    assert torch.equal(stacked.sum(0), torch.ones(500, n + 1, dtype=torch.int64))
    for row, text in enumerate(task.decode(batch.tokens)):
        xs, ys, _ = parse_addition(text, n)
        x, y = int(xs), int(ys)
        for col, label in enumerate(task.pred_labels):
            place = int(label[1:])
            carry_in = x % 10 ** place + y % 10 ** place >= 10 ** place
            sum9 = place < n and int(xs[n - 1 - place]) + int(ys[n - 1 - place]) == 9
            case = "BaseAdd" if not carry_in else "UseSum9" if sum9 else "UseCarry1"
            assert masks[case][row, col], (text, label, case)


def test_addition_answer_from_tokens_flags_malformed_rows():
    task = make_task("addition", n_digits=2)
    tokens = task.encode(["12+34=046", "99+99=198"])
    tokens[1, -1] = 10  # '+' where a digit belongs
    assert task.answer_from_tokens(tokens) == [46, None]


# ---- addition in the seed notebooks' layout ----------------------------------------------------

# Worked by hand from the notebooks' definitions. Per-digit lists: most significant digit first
# (the 'addition interpretability' notebook); carries: carry into the units (0), then the carry out
# of each digit from the units up (the 'non-modular addition' notebook).
HAND_WORKED = {
    "55555+44445": dict(answer=[1, 0, 0, 0, 0, 0], base_adds=[9, 9, 9, 9, 10], make_carry1s=[1, 1, 1, 1, 1],
                        sum9s=[1, 1, 1, 1, 0], use_carry1s=[1, 1, 1, 1, 0], use_sum9s=[1, 1, 1, 1, 0],
                        carries=[0, 1, 1, 1, 1, 1]),
    "12345+67890": dict(answer=[0, 8, 0, 2, 3, 5], base_adds=[7, 9, 11, 13, 5], make_carry1s=[0, 1, 1, 1, 0],
                        sum9s=[0, 1, 0, 0, 0], use_carry1s=[1, 1, 1, 0, 0], use_sum9s=[0, 1, 0, 0, 0],
                        carries=[0, 0, 1, 1, 1, 0]),
    "99999+00001": dict(answer=[1, 0, 0, 0, 0, 0], base_adds=[9, 9, 9, 9, 10], make_carry1s=[1, 1, 1, 1, 1],
                        sum9s=[1, 1, 1, 1, 0], use_carry1s=[1, 1, 1, 1, 0], use_sum9s=[1, 1, 1, 1, 0],
                        carries=[0, 1, 1, 1, 1, 1]),
    "00000+00000": dict(answer=[0] * 6, base_adds=[0] * 5, make_carry1s=[0] * 5, sum9s=[0] * 5,
                        use_carry1s=[0] * 5, use_sum9s=[0] * 5, carries=[0] * 6),
    "90000+10000": dict(answer=[1, 0, 0, 0, 0, 0], base_adds=[10, 0, 0, 0, 0], make_carry1s=[1, 0, 0, 0, 0],
                        sum9s=[0] * 5, use_carry1s=[0] * 5, use_sum9s=[0] * 5, carries=[0, 0, 0, 0, 0, 1]),
    "45000+54000": dict(answer=[0, 9, 9, 0, 0, 0], base_adds=[9, 9, 0, 0, 0], make_carry1s=[0] * 5,
                        sum9s=[1, 1, 0, 0, 0], use_carry1s=[0] * 5, use_sum9s=[0] * 5, carries=[0] * 6),
}


def test_notebook_layout_on_questions_worked_by_hand():
    task = make_task("addition", n_digits=5)
    batch = task.from_questions(task.encode([q + "=" for q in HAND_WORKED]))
    layout = task.notebook_layout(batch)
    for row, want in enumerate(HAND_WORKED.values()):
        assert layout.tokens[row, -6:].tolist() == want["answer"]
        for name in ("base_adds", "make_carry1s", "sum9s", "use_carry1s", "use_sum9s", "carries"):
            got = getattr(layout, name)
            assert got.dtype == torch.int64, name
            assert got[row].tolist() == want[name], (list(HAND_WORKED)[row], name)
    assert layout.tokens is batch.tokens
    tokens, base_adds, make_carry1s, sum9s, use_carry1s, use_sum9s = layout.analysis_notebook()
    assert sum9s is layout.sum9s and use_sum9s is layout.use_sum9s and base_adds is layout.base_adds
    assert layout.grokking_notebook() == (batch.tokens, layout.carries)


def notebook_interpretability_metadata(tokens, num_digits):
    """The 'addition interpretability' notebook's data_generator loop, re-typed, on given questions."""
    batch = tokens.clone()
    batch_size = batch.shape[0]
    base_adds = torch.zeros((batch_size, num_digits)).to(torch.int64)
    make_carry1s = torch.zeros((batch_size, num_digits)).to(torch.int64)
    sum9s = torch.zeros((batch_size, num_digits)).to(torch.int64)
    use_carry1s = torch.zeros((batch_size, num_digits)).to(torch.int64)
    use_sum9s = torch.zeros((batch_size, num_digits)).to(torch.int64)
    for i in range(num_digits):
        test_col = num_digits - 1 - i
        base_add = batch[:, num_digits - 1 - i] + batch[:, 2 * num_digits - i]
        base_adds[:, test_col] = base_add
        sum9 = (base_add == 9)
        sum9s[:, test_col] = sum9
        if i > 0:
            use_carry1s[:, test_col] = make_carry1s[:, test_col + 1]
        use_carry = use_carry1s[:, test_col]
        use_sum9s[:, test_col] = sum9 & use_carry
        digit_sum = base_add + use_carry1s[:, test_col]
        make_carry = (digit_sum >= 10)
        make_carry1s[:, test_col] = make_carry
        batch[:, -1 - i] = (digit_sum % 10)
    batch[:, -1 - num_digits] = make_carry1s[:, 0]
    return batch, base_adds, make_carry1s, sum9s, use_carry1s, use_sum9s


def notebook_grokking_carries(tokens, num_digits):
    """The 'non-modular addition' notebook's data_generator loop, re-typed, on given questions."""
    batch = tokens.clone()
    carries = [torch.zeros((batch.shape[0],)).to(torch.int64)]
    for i in range(num_digits):
        carry = carries[-1]
        digit_sum = (batch[:, num_digits - 1 - i] + batch[:, 2 * num_digits - i] + carry)
        batch[:, -1 - i] = (digit_sum % 10)
        carry = (digit_sum >= 10).to(torch.int64)
        carries.append(carry)
    batch[:, -1 - num_digits] = carries[-1]
    return batch, torch.stack(carries, axis=1)


@pytest.mark.parametrize("n", [1, 2, 5, 9])
def test_notebook_layout_equals_the_notebooks_own_loops(n):
    task = make_task("addition", n_digits=n)
    batch = task.sample(400, gen(50 + n))
    layout = task.notebook_layout(batch)
    theirs = notebook_interpretability_metadata(batch.tokens, n)
    for got, want in zip(layout.analysis_notebook(), theirs):
        assert got.dtype == want.dtype and torch.equal(got, want)
    for got, want in zip(layout.grokking_notebook(), notebook_grokking_carries(batch.tokens, n)):
        assert got.dtype == want.dtype and torch.equal(got, want)


@pytest.mark.parametrize("n", [1, 3, 5, 8])
def test_notebook_layout_matches_python_integers(n):
    task = make_task("addition", n_digits=n)
    batch = task.sample(300, gen(70 + n))
    layout = task.notebook_layout(batch)
    assert layout.base_adds.shape == (300, n) and layout.carries.shape == (300, n + 1)
    for row, text in enumerate(task.decode(batch.tokens)):
        xs, ys, _ = parse_addition(text, n)
        x, y = int(xs), int(ys)
        carry_into = [int(x % 10 ** p + y % 10 ** p >= 10 ** p) for p in range(n + 1)]  # place p receives a carry
        assert layout.carries[row].tolist() == carry_into
        for col in range(n):  # column 0 is the most significant digit, place n - 1
            p = n - 1 - col
            base = x // 10 ** p % 10 + y // 10 ** p % 10
            assert layout.base_adds[row, col] == base
            assert layout.make_carry1s[row, col] == carry_into[p + 1]
            assert layout.sum9s[row, col] == int(base == 9)
            assert layout.use_carry1s[row, col] == carry_into[p]
            assert layout.use_sum9s[row, col] == int(base == 9 and carry_into[p] == 1)


def test_notebook_layout_needs_full_rows():
    task = make_task("addition", n_digits=3)
    questions = task.encode(["123+456="])
    with pytest.raises(ValueError, match="from_questions"):
        task.notebook_layout(Batch(questions, questions[:, :0]))
    assert task.notebook_layout(task.from_questions(questions)).carries.tolist() == [[0, 0, 0, 0]]


# ---- arithmetic ----------------------------------------------------------------------------


@pytest.mark.parametrize("enrich", [False, True])
@pytest.mark.parametrize("op", ["add", "sub", "mul"])
def test_arithmetic_answers_match_python_integers(op, enrich):
    for n in range(1, ARITH_MAX + 1):
        task = make_task("arithmetic", n_digits=n, ops={op: 100}, enrich=enrich, op_per_batch=False)
        batch = task.sample(1000, gen(n))
        answers = task.answer_from_tokens(batch.tokens)
        for row, text in enumerate(task.decode(batch.tokens)):
            xs, sym, ys, sign, zs = parse_arithmetic(text, n)
            x, y = int(xs), int(ys)
            want = {"+": x + y, "-": x - y, "*": x * y}[sym]
            assert sym == {"add": "+", "sub": "-", "mul": "*"}[op]
            assert int(sign + zs) == want == answers[row], text
            assert sign == ("-" if want < 0 else "+")
            if op == "mul":
                assert xs[:n // 2] == ys[:n // 2] == "0" * (n // 2), text
        assert torch.equal(batch.targets, batch.tokens[:, task.pred_pos + 1])


def test_arithmetic_layout_and_notebook_examples():
    task = make_task("arithmetic", n_digits=6, ops={"add": 50, "sub": 30, "mul": 20})
    assert (task.n_ctx, task.d_vocab, task.d_vocab_out, task.n_question, task.n_answer) == (22, 15, 15, 14, 8)
    assert task.pred_pos.tolist() == list(range(13, 21))
    assert task.pred_labels == ["sign", "A6", "A5", "A4", "A3", "A2", "A1", "A0"]
    assert task.token_names[10:] == ["+", "-", "=", "*", "/"]
    examples = ["133357+182243=+0315600", "123450-345670=-0222220", "000345*000823=+0283935"]
    questions = task.encode([e[:14] for e in examples])
    assert task.decode(task.from_questions(questions).tokens) == examples
    assert task.decode(task.encode(examples)) == examples


@pytest.mark.parametrize("n", [1, 2, 3, 6, 10, ARITH_MAX])
def test_arithmetic_metadata_matches_per_digit_loops(n):
    task = make_task("arithmetic", n_digits=n, ops={"add": 40, "sub": 40, "mul": 20},
                     enrich=True, op_per_batch=False)
    batch = task.sample(1500, gen(n + 50))
    op_token = {"+": 10, "-": 11, "*": 13}
    for row, text in enumerate(task.decode(batch.tokens)):
        xs, sym, ys, _, _ = parse_arithmetic(text, n)
        assert batch.meta["op"][row].item() == op_token[sym]
        assert batch.meta["negative"][row].item() == (sym == "-" and int(xs) < int(ys))
        want = {"+": reference_addition_meta(xs, ys)["cascade"], "-": reference_borrow_class(xs, ys),
                "*": -1}[sym]
        assert batch.meta["cascade"][row].item() == want, text
    masks = task.case_masks(batch)
    assert set(masks) == {"add", "sub", "mul"}
    assert torch.equal(sum(m.long() for m in masks.values()), torch.ones(1500, n + 2, dtype=torch.int64))


def test_arithmetic_borrow_classes_on_handmade_questions():
    task = make_task("arithmetic", n_digits=6, ops="sub")
    questions = ["000000-000000=", "500000-000001=", "100000-000001=", "000100-000201=", "000000-900000=",
                 "123456-123457="]
    batch = task.from_questions(task.encode(questions))
    want = [reference_borrow_class(q[:6], q[7:13]) for q in questions]
    assert batch.meta["cascade"].tolist() == want == [0, 5, 5, 2, 1, 6]
    assert batch.meta["negative"].tolist() == [False, False, False, True, True, True]


def test_arithmetic_op_mix():
    per_question = make_task("arithmetic", n_digits=3, ops={"sub": 80, "add": 20}, op_per_batch=False)
    ops = per_question.sample(20000, gen(0)).meta["op"]
    assert abs((ops == 11).float().mean().item() - 0.8) < 0.02 and set(ops.tolist()) == {10, 11}
    per_batch = make_task("arithmetic", n_digits=3, ops={"sub": 80, "add": 20})
    generator, subs = gen(1), 0
    for _ in range(300):
        ops = per_batch.sample(16, generator).meta["op"]
        assert len(set(ops.tolist())) == 1  # one op per batch, as the notebook
        subs += int(ops[0] == 11)
    assert 0.7 < subs / 300 < 0.9


def test_arithmetic_enrichment_makes_rare_cases_common():
    def sample(enrich, ops):
        task = make_task("arithmetic", n_digits=6, ops=ops, enrich=enrich, op_per_batch=False)
        batch = task.sample(20000, gen(5))
        return batch, batch.tokens[:, :6], batch.tokens[:, 7:13]

    _, x, y = sample(False, "add")
    assert ((x + y) == 9).float().mean() < 0.12
    _, x, y = sample(True, "add")  # 40% of the digits of 60% of questions: about 0.1 + 0.24 * 0.9
    assert ((x + y) == 9).float().mean() > 0.25
    plain, x, y = sample(False, "sub")
    assert (x == y).float().mean() < 0.12 and abs((y - x).float().mean()) < 0.05
    rich, x, y = sample(True, "sub")
    assert (x == y).float().mean() > 0.25
    # a fifth of the questions raise y's digits (by 0.9 on average, before 40% are equalised)
    assert (y - x).float().mean() > 0.07
    assert rich.meta["negative"].float().mean() > plain.meta["negative"].float().mean()
    # the per-batch variant changes the same share of digits
    task = make_task("arithmetic", n_digits=6, ops="add", enrich=True)
    tokens = torch.cat([task.sample(64, gen(9 + i)).tokens for i in range(200)])
    assert ((tokens[:, :6] + tokens[:, 7:13]) == 9).float().mean() > 0.25


def test_arithmetic_from_questions_rejects_bad_questions():
    task = make_task("arithmetic", n_digits=4, ops="mul")
    with pytest.raises(ValueError, match="top 2 digits zero"):
        task.from_questions(task.encode(["1234*0012="]))
    with pytest.raises(ValueError, match="division"):
        task.from_questions(task.encode(["0012/0003="]))
    with pytest.raises(ValueError, match="0..14"):
        task.from_questions(torch.full((1, 10), 15))


# ---- skip-trigram --------------------------------------------------------------------------


def test_skip_trigram_layout():
    task = make_task("skip_trigram")
    assert (task.n_ctx, task.d_vocab, task.d_vocab_out) == (42, 22, 10)
    assert task.pred_pos.tolist() == [41]
    batch = task.sample(5000, gen(0))
    tokens, target = batch.tokens, batch.targets[:, 0]
    assert batch.targets.shape == (5000, 1) and torch.equal(batch.meta["target"], target)
    assert (tokens[:, 0] == 0).all() and (tokens[:, -1] == 1).all()
    middle = tokens[:, 1:-1]
    signal = middle >= 12
    assert (signal.sum(1) == 1).all()
    assert ((middle >= 2) & (middle <= 21)).all()
    assert torch.equal(middle[signal] - 12, target)
    assert torch.equal(signal.float().argmax(1) + 1, batch.meta["signal_pos"])
    assert set(target.tolist()) == set(range(10)) and set(batch.meta["signal_pos"].tolist()) == set(range(1, 41))
    masks = task.case_masks(batch)
    assert list(masks) == [f"target_{t}" for t in range(10)]
    assert torch.equal(sum(m.long() for m in masks.values()), torch.ones(5000, 1, dtype=torch.int64))


# ---- induction -----------------------------------------------------------------------------


@pytest.mark.parametrize("options", [{}, {"seq_len": 129, "subseq_len": 16, "num_repeats": 4},
                                     {"seq_len": 11, "subseq_len": 2, "num_repeats": 5, "vocab_size": 3}])
def test_induction_mask_marks_predictable_tokens(options):
    task = make_task("induction", **options)
    seq_len, sub, repeats = task.seq_len, task.subseq_len, task.num_repeats
    interval = (seq_len - 1) // repeats
    batch = task.sample(300, gen(1))
    assert batch.tokens.shape == (300, seq_len) and batch.mask.shape == (300, seq_len - 1)
    assert batch.mask.dtype == torch.bool and torch.equal(batch.targets, batch.tokens[:, 1:])
    assert (batch.tokens[:, 0] == 0).all() and (batch.tokens[:, 1:] >= 1).all()
    assert (batch.tokens < task.vocab_size).all()
    for tokens, mask, starts in zip(batch.tokens.tolist(), batch.mask.tolist(), batch.meta["starts"].tolist()):
        for i, start in enumerate(starts):
            assert 1 + i * interval <= start <= 1 + (i + 1) * interval - sub
            assert tokens[start:start + sub] == tokens[starts[0]:starts[0] + sub]
        assert sum(mask) == (repeats - 1) * (sub - 1)
        for pos in (p for p in range(seq_len - 1) if mask[p]):
            copy = [s for s in starts[1:] if s <= pos < s + sub - 1]
            assert len(copy) == 1
            assert tokens[pos + 1] == tokens[starts[0] + pos - copy[0] + 1]
            # and without the metadata: this token pair occurred earlier in the sequence
            assert any(tokens[k] == tokens[pos] and tokens[k + 1] == tokens[pos + 1] for k in range(pos))


# ---- modular -------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["add", "subtract", "x2xyy2", "rand"])
def test_modular_split_covers_every_pair_once(op):
    task = make_task("modular", p=113, op=op)
    assert (task.d_vocab, task.d_vocab_out, task.n_ctx, task.pred_pos.tolist()) == (114, 114, 3, [2])
    train, test = task.split(generator=gen(0))
    assert len(train) == int(0.3 * 113 ** 2) == 3830
    both = torch.cat([train.tokens, test.tokens])
    assert (both[:, 2] == 113).all()
    assert torch.equal((both[:, 0] * 113 + both[:, 1]).sort().values, torch.arange(113 ** 2))
    table = task.all_pairs()
    for batch in (train, test, task.sample(1000, gen(1))):
        for (a, b, _), (c,) in zip(batch.tokens.tolist(), batch.targets.tolist()):
            if op == "rand":
                assert c == table.targets[a * 113 + b, 0].item()
            else:
                assert c == {"add": (a + b) % 113, "subtract": (a - b) % 113,
                             "x2xyy2": (a * a + a * b + b * b) % 113}[op]
    again, _ = task.split(generator=gen(0))
    other, _ = task.split(generator=gen(1))
    assert torch.equal(again.tokens, train.tokens) and not torch.equal(other.tokens, train.tokens)


def test_modular_rand_table_is_seeded():
    table = make_task("modular", p=31, op="rand").all_pairs().targets
    assert torch.equal(table, make_task("modular", p=31, op="rand").all_pairs().targets)
    assert not torch.equal(table, make_task("modular", p=31, op="rand", rand_seed=1).all_pairs().targets)
    assert set(table[:, 0].tolist()) == set(range(31))


def test_modular_split_sizes():
    task = make_task("modular", p=7)
    train, test = task.split(10, gen(0))
    assert (len(train), len(test)) == (10, 39)
    with pytest.raises(ValueError, match="n_test"):
        task.split(10, gen(0), n_test=5)


# ---- every task: seeds, splits, text -------------------------------------------------------

ALL = [("addition", {"n_digits": 3}), ("arithmetic", {"n_digits": 3, "enrich": True}),
       ("arithmetic", {"n_digits": 4, "ops": {"mul": 50, "sub": 50}}), ("skip_trigram", {}),
       ("induction", {}), ("modular", {"p": 13})]


@pytest.mark.parametrize("name, options", ALL)
def test_same_seed_same_data_different_seed_different_data(name, options):
    task = make_task(name, **options)
    torch.manual_seed(0)
    first = task.sample(256, gen(42))
    torch.manual_seed(1)  # the global RNG must play no part
    again = task.sample(256, gen(42))
    other = task.sample(256, gen(43))
    assert torch.equal(first.tokens, again.tokens) and torch.equal(first.targets, again.targets)
    assert all(torch.equal(first.meta[k], again.meta[k]) for k in first.meta)
    assert not torch.equal(first.tokens, other.tokens)
    assert make_task(name, **task.options()).options() == task.options()


@pytest.mark.parametrize("name, options", [opt for opt in ALL if opt[0] != "modular"])
def test_splits_are_disjoint_and_seeded(name, options):
    task = make_task(name, **options)
    key = getattr(task, "n_question", task.n_ctx)
    train, test = task.split(500, gen(0), n_test=300)
    assert (len(train), len(test)) == (500, 300)
    train_q = {tuple(row) for row in train.tokens[:, :key].tolist()}
    test_q = {tuple(row) for row in test.tokens[:, :key].tolist()}
    assert len(train_q) == 500 and len(test_q) == 300 and not train_q & test_q
    again, again_test = task.split(500, gen(0), n_test=300)
    assert torch.equal(again.tokens, train.tokens) and torch.equal(again_test.tokens, test.tokens)
    assert not torch.equal(task.split(500, gen(1), n_test=300)[0].tokens, train.tokens)
    assert len(task.split(50, gen(0))[1]) == 50  # n_test defaults to n_train


def test_split_covers_a_small_question_space():
    task = make_task("addition", n_digits=1)
    train, test = task.split(70, gen(0), n_test=30)
    questions = {tuple(row) for row in torch.cat([train.tokens, test.tokens])[:, :4].tolist()}
    assert questions == {(x, 10, y, 11) for x in range(10) for y in range(10)}
    with pytest.raises(ValueError, match="only 100 distinct"):
        task.split(80, gen(0), n_test=30)


@pytest.mark.parametrize("name, options", ALL)
def test_encode_decode_round_trip(name, options):
    task = make_task(name, **options)
    tokens = task.sample(50, gen(0)).tokens
    texts = task.decode(tokens)
    assert torch.equal(task.encode(texts), tokens)
    assert task.decode(tokens[0]) == texts[:1]
    with pytest.raises(ValueError, match="'#'"):
        task.encode([texts[0][:5] + " #"])
    with pytest.raises(ValueError, match="list of strings"):
        task.encode(texts[0])


def test_encode_decode_questions_and_layout_errors():
    task = make_task("addition", n_digits=5)
    assert task.decode(task.encode(["12345+67890="])) == ["12345+67890="]
    assert task.encode(["12345+67890="]).dtype == torch.int64
    with pytest.raises(ValueError, match="layout"):
        task.encode(["1234+67890="])
    with pytest.raises(ValueError, match="'x'"):
        task.encode(["12x45+67890="])
    with pytest.raises(ValueError, match="outside"):
        task.decode(torch.tensor([[12]]))
    arith = make_task("arithmetic", n_digits=6)
    assert arith.decode(arith.encode(["123450-345670="])) == ["123450-345670="]
    with pytest.raises(ValueError, match="layout"):
        arith.encode(["123450=345670="])


# ---- options ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name, options, words", [
    ("addition", {"n_digits": 0}, "n_digits"),
    ("addition", {"n_digits": -3}, "n_digits"),
    ("addition", {"n_digits": ADD_MAX + 1}, "n_digits"),
    ("addition", {"n_digits": "5"}, "n_digits"),
    ("addition", {"n_digits": True}, "n_digits"),
    ("addition", {"digits": 5}, "unknown option 'digits'"),
    ("arithmetic", {"n_digits": 0}, "n_digits"),
    ("arithmetic", {"n_digits": ARITH_MAX + 1}, "n_digits"),
    ("arithmetic", {"ops": {"sub": 80, "add": 10}}, "sum to 100"),
    ("arithmetic", {"ops": {"div": 100}}, "unknown op 'div'"),
    ("arithmetic", {"ops": {"sub": 120, "add": -20}}, "percentage"),
    ("arithmetic", {"ops": ["add"]}, "ops must be"),
    ("arithmetic", {"enrich": "yes"}, "enrich"),
    ("skip_trigram", {"rand_size": 0}, "rand_size"),
    ("skip_trigram", {"seq_len": 0}, "seq_len"),
    ("induction", {"seq_len": 40}, "seq_len >= 49"),
    ("induction", {"num_repeats": 1}, "num_repeats"),
    ("induction", {"vocab_size": 1}, "vocab_size"),
    ("modular", {"p": 100}, "prime"),
    ("modular", {"op": "mul"}, "op must be one of"),
    ("modular", {"frac_train": 1.5}, "frac_train"),
    ("modular", {"frac_train": 0}, "frac_train"),
    ("parity", {}, "addition, arithmetic, skip_trigram, induction, modular"),
])
def test_bad_options_raise_clear_errors(name, options, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        make_task(name, **options)


def test_bad_sampling_arguments():
    task = make_task("addition")
    with pytest.raises(ValueError, match="batch_size"):
        task.sample(0, gen(0))
    with pytest.raises(ValueError, match="generator"):
        task.sample(8, None)
    with pytest.raises(ValueError, match="n_train"):
        task.split(0, gen(0))


def test_every_task_has_the_interface_and_a_benchmark_size():
    assert set(EXPERIMENTS) == set(TASKS)  # every task has a seed set-up, with its batch size
    assert seed_batch_size("modular") == int(0.3 * 113 ** 2)  # full batch: the whole training set
    for name in TASKS:
        task = make_task(name)
        batch = task.sample(4, gen(0))
        n_pred = len(task.pred_pos)
        assert batch.tokens.shape == (4, task.n_ctx) and batch.targets.shape == (4, n_pred)
        assert len(task.pred_labels) == n_pred and len(task.token_names) == task.d_vocab
        assert int(batch.tokens.max()) < task.d_vocab and int(batch.targets.max()) < task.d_vocab_out
        assert 0 <= int(task.pred_pos.min()) and int(task.pred_pos.max()) < task.n_ctx
        assert time_per_batch(task, 4, n_batches=2) > 0


def test_what_analyses_ask_of_a_task():
    """The task-specific knowledge analyses use: position names, enrichment, references, sizes."""
    for name in TASKS:
        task = make_task(name)
        assert len(task.position_names()) == task.n_ctx
        assert task.question_sampler() is task or name == "arithmetic"
    assert make_task("addition", n_digits=2).position_names() == ["D1", "D0", "OP", "D'1", "D'0", "=", "A2", "A1", "A0"]
    arithmetic = make_task("arithmetic", n_digits=2, ops={"sub": 50, "mul": 50})
    assert arithmetic.position_names()[6:] == ["sign", "A2", "A1", "A0"]
    assert arithmetic.truth_ops == ("sub", "mul") and arithmetic.variable_prefix("sub") == "sub."
    ops = torch.tensor([10, 11, 13])  # the '+', '-' and '*' tokens
    assert arithmetic.op_mask("mul", ops).tolist() == [False, False, True]
    with pytest.raises(ValueError, match="enriched questions exist"):
        make_task("modular").question_sampler(enrich=True)
    with pytest.raises(ValueError, match="no Fourier basis"):
        make_task("induction").fourier_basis()
    modular = make_task("modular", p=7, frac_train=0.5)
    assert modular.full_data_sizes() == (24, 49) and make_task("addition").full_data_sizes() == (1, 1)
    batch, position, n = modular.operand_grid()
    assert (n, position, len(batch)) == (7, 2, 49)
    induction = make_task("induction", vocab_size=16, seq_len=20, subseq_len=4)
    assert induction.reference_losses()["uniform, ln(vocab_size - 1)"] == pytest.approx(2.70805, abs=1e-5)
    assert make_task("addition").reference_losses() == {}
    enriched = make_task("addition", n_digits=5).question_sampler(enrich=True).sample(2000, gen(0))
    x, y = enriched.tokens[:, :5], enriched.tokens[:, 6:11]
    assert ((x + y) == 9).float().mean() > 0.25  # 3 in 5 questions have 40% of pairs summing to 9
