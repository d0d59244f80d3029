"""Speculative decoding against exact references: the joint law of the first new tokens equals the target's
own sampling law computed from its conditionals (chi-square), greedy equals plain greedy decoding."""
from __future__ import annotations

import itertools

import pytest
import torch

import mmzoo

V, T = 5, 3  # vocabulary, new tokens whose joint law is tested (V ** T = 125 cells)
PROMPT = [[0, 1, 2]]
ALPHA = 1e-3  # significance of the chi-square tests (fixed seeds: the outcome is deterministic)


def _scramble(model, seed: int, scale: float):
    """Random weights of std ``scale``: next-token laws that vary with the prefix."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.data = torch.randn(p.shape, generator=g, dtype=torch.float64) * scale
    return model.eval()


@pytest.fixture(autouse=True)
def one_thread():
    """Test-size models: one thread is faster than two synchronising OpenMP threads on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pair():
    target = _scramble(mmzoo.create_model("gpt_nano", vocab_size=V, context_length=16).double(), 1, 0.25)
    draft = _scramble(mmzoo.create_model("gpt_nano", vocab_size=V, context_length=16, depth=1, embed_dim=16,
                                         num_heads=2).double(), 2, 0.25)
    return target, draft


def _reference_probs(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Sampling distribution of one position, written out token by token: softmax at ``temperature``,
    the ``top_k`` most likely tokens, then the smallest prefix of them whose renormalised mass reaches
    ``top_p``."""
    probs = (logits.double() / temperature).softmax(-1)
    order = sorted(range(len(probs)), key=lambda i: -float(probs[i]))
    keep = order[:top_k] if top_k else order
    mass = sum(float(probs[i]) for i in keep)
    nucleus, before = [], 0.0
    for i in keep:
        if before >= top_p:
            break
        nucleus.append(i)
        before += float(probs[i]) / mass
    out = torch.zeros_like(probs)
    out[nucleus] = probs[nucleus] / probs[nucleus].sum()
    return out


def _joint_law(model, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """P(x_1..x_T | prompt) = prod_t p(x_t | prompt, x_<t), from full forwards (no cache) of every prefix."""
    prefixes = torch.tensor(list(itertools.product(range(V), repeat=T - 1)))  # (V^(T-1), T-1)
    seqs = torch.cat([torch.tensor(PROMPT).expand(len(prefixes), -1), prefixes], dim=1)
    with torch.no_grad():
        logits = model(seqs).logits[:, len(PROMPT[0]) - 1:]  # (V^(T-1), T, V): conditionals of x_1..x_T
    law = torch.zeros((V,) * T, dtype=torch.float64)
    for row, prefix in enumerate(prefixes.tolist()):
        conds = [_reference_probs(logits[row, t], temperature, top_k, top_p) for t in range(T)]
        for last in range(V):
            x = (*prefix, last)
            law[x] = torch.prod(torch.stack([conds[t][x[t]] for t in range(T)]))
    # the T-1 prefixes enumerate each x_<T once per last token: every cell written once
    torch.testing.assert_close(law.sum(), torch.tensor(1.0, dtype=torch.float64))
    return law


def chi_square_pvalue(counts: torch.Tensor, law: torch.Tensor, min_expected: float = 5.0) -> float:
    """Pearson's chi-square goodness-of-fit p-value; cells expected below ``min_expected`` are pooled."""
    counts, law = counts.flatten().double(), law.flatten().double()
    if (counts[law == 0] > 0).any():
        return 0.0  # a draw the law forbids (e.g. outside top-k / top-p)
    n = counts.sum()
    counts, law = counts[law > 0], law[law > 0]
    expected = law * n
    big = expected >= min_expected
    obs = counts[big].tolist()
    exp = expected[big].tolist()
    if (~big).any():
        obs.append(float(counts[~big].sum()))
        exp.append(float(expected[~big].sum()))
    assert all(e > 0 for e in exp) and abs(sum(obs) - float(n)) < 1e-6
    stat = sum((o - e) ** 2 / e for o, e in zip(obs, exp))
    df = len(obs) - 1
    # chi-square survival function = regularised upper incomplete gamma Q(df/2, stat/2)
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


def _counts(samples: torch.Tensor) -> torch.Tensor:
    idx = (samples * torch.tensor([V ** (T - 1 - t) for t in range(T)])).sum(-1)
    return torch.bincount(idx, minlength=V ** T).view((V,) * T)


@pytest.mark.parametrize("rows,draws,k,temperature,top_k,top_p", [
    pytest.param(1, 600, 2, 1.0, 0, 1.0, id="one_row_per_call"),
    pytest.param(4000, 4000, 2, 0.8, 4, 0.9, id="batched_top_k_top_p"),
    pytest.param(1, 3000, 3, 0.8, 4, 0.9, id="one_row_top_k_top_p", marks=pytest.mark.slow),
    pytest.param(4, 4000, 1, 1.3, 0, 1.0, id="lockstep_rows", marks=pytest.mark.slow),
])
def test_speculative_sampling_has_the_target_law(pair, rows, draws, k, temperature, top_k, top_p):
    target, draft = pair
    law = _joint_law(target, temperature, top_k, top_p)
    draft_law = _joint_law(draft, temperature, top_k, top_p)
    assert 0.5 * (law - draft_law).abs().sum() > 0.25  # total variation: the draft disagrees with the target
    gen = torch.Generator().manual_seed(0)
    prompt = torch.tensor(PROMPT).expand(rows, -1)
    samples, proposed, accepted = [], 0, 0
    for _ in range(draws // rows):
        out, stats = target.generate_speculative(draft, prompt, T, num_draft_tokens=k, strategy="sample",
                                                 temperature=temperature, top_k=top_k, top_p=top_p, generator=gen)
        samples.append(out[:, -T:])
        proposed, accepted = proposed + stats.proposed, accepted + stats.accepted
    counts = _counts(torch.cat(samples))
    assert 0.2 < accepted / proposed < 0.95  # both acceptances and rejections (residual draws) happen
    assert chi_square_pvalue(counts, law) > ALPHA
    assert chi_square_pvalue(counts, draft_law) < 1e-6  # the test tells the draft's law apart


def test_chi_square_rejects_a_wrong_rule(pair):
    """Power check: accepting with min(1, p/q) but resampling a rejected token from p itself (not from the
    residual max(0, p - q)) is a common mistake; the same test with the same draws catches it."""
    target, draft = pair
    law = _joint_law(target)
    gen = torch.Generator().manual_seed(0)
    prompt = torch.tensor(PROMPT).expand(4000, -1)
    t_fwd, t_crop, _ = target.decoder_step_fns()
    d_fwd, d_crop, _ = draft.decoder_step_fns()
    out = _speculative_with_plain_resampling(t_fwd, t_crop, d_fwd, d_crop, prompt, gen)
    assert chi_square_pvalue(_counts(out[:, -T:]), law) < 1e-6


def _speculative_with_plain_resampling(t_fwd, t_crop, d_fwd, d_crop, prompt, gen):
    """The faulty rule (a rejected token redrawn from p), one proposal and one committed token per round."""
    from mmzoo.models.generation import _draw, _warp

    seq, B = prompt, prompt.shape[0]
    rows = torch.arange(B)
    t_len = d_len = 0
    while seq.shape[1] - prompt.shape[1] < T:
        q = _warp(d_fwd(seq[:, d_len:])[:, -1], False, 1.0, 0, 1.0)
        d_len = seq.shape[1]
        x = _draw(q, False, gen)
        p = _warp(t_fwd(torch.cat([seq[:, t_len:], x[:, None]], 1))[:, -2:], False, 1.0, 0, 1.0)
        u = torch.rand(B, generator=gen, dtype=torch.float64)
        ok = u * q[rows, x] < p[rows, 0, x]
        y = _draw(p[:, 0], False, gen)  # the mistake: p instead of norm(max(0, p - q))
        seq = torch.cat([seq, torch.where(ok, x, y)[:, None]], 1)
        t_len = seq.shape[1] - 1
        t_crop(t_len)
        d_crop(min(d_len, t_len))
        d_len = min(d_len, t_len)
    return seq


def test_greedy_equals_plain_greedy_decoding():
    target = _scramble(mmzoo.create_model("gpt_nano", vocab_size=64).double(), 1, 0.3)
    draft = _scramble(mmzoo.create_model("gpt_nano", vocab_size=64, depth=1, embed_dim=16).double(), 2, 0.3)
    prompts = torch.randint(0, 64, (3, 4), generator=torch.Generator().manual_seed(0))
    ref = target.generate(prompts, 20)  # plain KV-cached greedy decoding, row by row identical in a batch
    for strategy, temperature in (("greedy", 1.0), ("sample", 0.0)):  # greedy is the temperature-0 case
        out, stats = target.generate_speculative(draft, prompts, 20, num_draft_tokens=3, strategy=strategy,
                                                 temperature=temperature)
        assert torch.equal(out, ref)
        assert 0 < stats.accepted < stats.proposed and stats.new_tokens == 20
    one, _ = target.generate_speculative(draft, prompts[:1], 20, num_draft_tokens=3)
    assert torch.equal(one, ref[:1])


def test_sampling_is_reproducible_and_draft_equal_to_target_accepts_everything(pair):
    target, draft = pair
    prompt = torch.tensor(PROMPT)
    runs = [target.generate_speculative(draft, prompt, 12, strategy="sample", generator=torch.Generator().manual_seed(3))
            for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0])
    _, stats = target.generate_speculative(target, prompt, 12, num_draft_tokens=3, strategy="sample",
                                           generator=torch.Generator().manual_seed(0))
    # p == q up to rounding (cached one-token vs. block forwards): every proposal passes min(1, p/q)
    assert stats.acceptance_rate == 1.0 and stats.target_calls == 3 and stats.tokens_per_target_call == 4


def test_bad_arguments_name_the_fix(pair):
    target, draft = pair
    prompt = torch.tensor(PROMPT)
    with pytest.raises(ValueError, match="strategy 'greedy' or 'sample'"):
        target.generate_speculative(draft, prompt, 4, strategy="beam")
    with pytest.raises(ValueError, match="vocab_size"):
        target.generate_speculative(mmzoo.create_model("gpt_nano"), prompt, 4)
    with pytest.raises(ValueError, match="decoder-only.*draft is 'encoder'"):
        target.generate_speculative(mmzoo.create_model("bert_nano", vocab_size=V), prompt, 4)
    with pytest.raises(ValueError, match="num_draft_tokens"):
        target.generate_speculative(draft, prompt, 4, num_draft_tokens=0)
    with pytest.warns(UserWarning, match="context_length is 16"):
        out, _ = target.generate_speculative(draft, prompt, 40)
    assert out.shape[1] == 16
