"""Autoregressive decoding for any mmzoo decoder: greedy, top-k / top-p sampling, beam search.

A decoder is driven through two callables, so the same loops serve captioners and language models:

* ``step(new_tokens (B, T)) -> logits (B, V)``: feed the new tokens (the prompt first, then one token
  per call), updating the decoder's KV caches, and return the next-token logits of the last position;
* ``reorder(index (B',))``: select / repeat cache rows (beam search).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence

import torch

Step = Callable[[torch.Tensor], torch.Tensor]


def apply_repetition_penalty(logits: torch.Tensor, tokens: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty (Keskar et al. 2019): the logit of every token already in ``tokens``
    (B, T) is divided by ``penalty`` if positive, multiplied if negative. (B, V) -> (B, V)."""
    if penalty == 1.0:
        return logits
    seen = logits.gather(-1, tokens)  # (B, T)
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(-1, tokens, seen)


def top_k_top_p_filter(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set to -inf every logit outside the ``top_k`` largest and outside the smallest set of tokens whose
    probability mass reaches ``top_p`` (nucleus sampling, Holtzman et al. 2020). (B, V) -> (B, V)."""
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # mass of the tokens ranked before each one: a token is kept while that mass is still < top_p
        before = probs.cumsum(dim=-1) - probs
        drop_sorted = before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


@torch.no_grad()
def sample(step: Step, prompt: torch.Tensor, max_new_tokens: int, eot_token_id: int, pad_token_id: int = 0,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, greedy: bool = False,
           generator: Optional[torch.Generator] = None, repetition_penalty: float = 1.0,
           stop_token_ids: Sequence[int] = ()) -> torch.Tensor:
    """Greedy decoding (``greedy=True``) or sampling with temperature / top-k / top-p.

    ``repetition_penalty`` > 1 discourages tokens already in the sequence (prompt included);
    ``stop_token_ids`` end a sequence like ``eot_token_id`` (kept in the output).
    Returns (B, prompt_len + n) tokens; a sequence that produced ``eot_token_id`` is padded afterwards
    with ``pad_token_id``, and decoding stops once every sequence has ended.
    """
    tokens = prompt
    done = torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)
    stops = torch.tensor([eot_token_id, *stop_token_ids], dtype=prompt.dtype, device=prompt.device)
    logits = step(prompt)
    for _ in range(max_new_tokens):
        logits = apply_repetition_penalty(logits, tokens, repetition_penalty)
        if greedy:
            nxt = logits.argmax(dim=-1)
        else:
            probs = top_k_top_p_filter(logits / max(temperature, 1e-6), top_k, top_p).softmax(dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad_token_id), nxt)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        done |= torch.isin(nxt, stops)
        if bool(done.all()):
            break
        logits = step(nxt[:, None])
    return tokens


class SpeculativeStats(NamedTuple):
    """What :func:`speculative_decode` did, summed over the rows of the batch.

    proposed: draft tokens scored by the target; accepted: those the acceptance rule kept (a round's
    proposals after its first rejection count as proposed, not accepted); rejections: rounds that ended
    on a rejection; target_calls / draft_calls: forwards of each model; new_tokens: tokens appended per row.
    """

    proposed: int
    accepted: int
    target_calls: int
    draft_calls: int = 0
    new_tokens: int = 0
    rejections: int = 0

    @property
    def acceptance_rate(self) -> float:
        """Accepted / proposed draft tokens."""
        return self.accepted / max(self.proposed, 1)

    @property
    def token_acceptance(self) -> float:
        """The probability that the rule accepts a proposal it tests (Leviathan et al.'s alpha, estimated
        as accepted / (accepted + rejections))."""
        return self.accepted / max(self.accepted + self.rejections, 1)

    @property
    def tokens_per_target_call(self) -> float:
        return self.new_tokens / max(self.target_calls, 1)


def _warp(logits: torch.Tensor, greedy: bool, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Next-token distribution (..., V) in float64 that decoding draws from: one-hot on the argmax
    (greedy, the temperature-0 limit) or softmax(top-k / top-p filtered logits / temperature)."""
    logits = logits.double()
    if greedy:
        return torch.nn.functional.one_hot(logits.argmax(dim=-1), logits.shape[-1]).double()
    return top_k_top_p_filter(logits / temperature, top_k, top_p).softmax(dim=-1)


def _draw(probs: torch.Tensor, greedy: bool, generator: Optional[torch.Generator]) -> torch.Tensor:
    """One token per row of ``probs`` (B, V) -> (B,)."""
    if greedy:
        return probs.argmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def speculative_decode(target: Callable[[torch.Tensor], torch.Tensor], target_crop: Callable[[int], None],
                       draft: Callable[[torch.Tensor], torch.Tensor], draft_crop: Callable[[int], None],
                       prompt: torch.Tensor, max_new_tokens: int, num_draft_tokens: int = 4, greedy: bool = True,
                       temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                       generator: Optional[torch.Generator] = None, stop_token_ids: Sequence[int] = (),
                       pad_token_id: int = 0) -> tuple[torch.Tensor, SpeculativeStats]:
    """Speculative sampling (Leviathan et al. 2023, alg. 1; Chen et al. 2023, alg. 2): the output has
    exactly the target's sampling law (greedy: exactly the target's greedy continuation), produced in
    fewer target forwards when a cheaper draft model agrees with the target.

    One round: the draft proposes ``k`` tokens ``x_i ~ q_i`` one by one; the target scores the last
    committed token and all proposals in one KV-cached forward, giving ``p_1 .. p_{k+1}``; proposal
    ``x_i`` is accepted with probability ``min(1, p_i(x_i) / q_i(x_i))``, in order; at the first
    rejection a token is drawn from ``norm(max(0, p_i - q_i))`` and the round ends; when all ``k`` are
    accepted a bonus token is drawn from ``p_{k+1}``. ``p`` and ``q`` are the distributions decoding
    draws from: temperature, top-k and top-p act on both alike, and greedy decoding (the temperature-0
    limit) makes both one-hot, where the rule reduces to "accept while the draft's argmax is the
    target's, then take the target's argmax". Both KV caches are cropped back to the committed tokens.

    A batch advances in lockstep: every row commits the same number of tokens per round, the shortest
    accepted run (plus one) among the rows still decoding, so the caches stay rectangular. Cutting a
    row's round short is still exact: every committed token was drawn from the target's conditional
    given the tokens before it, and the next round samples the following one afresh. Batch size 1
    gains the most; larger batches trade accepted tokens for parallel rows.

    Args:
        target: ``forward(new_tokens (B, T)) -> logits (B, T, V)`` of every new position,
            appending to the model's KV cache (which starts empty).
        target_crop: ``crop(length)`` keeps the first ``length`` positions of the target's cache.
        draft: the draft model's ``forward``, as ``target``.
        draft_crop: ``crop(length)`` of the draft's cache.
        prompt: (B, P) token ids, P >= 1.
        max_new_tokens: most tokens appended to each row.
        num_draft_tokens: proposals per round (k).
        greedy: greedy decoding; else sampling with ``temperature`` (> 0), ``top_k``, ``top_p``.
        temperature: sampling temperature.
        top_k: keep the k most likely tokens (0: all).
        top_p: keep the smallest set of tokens with this probability mass (1: all).
        generator: random generator of the draws.
        stop_token_ids: a row ends after the first of these; later positions hold ``pad_token_id``.
        pad_token_id: filler after a row has stopped.
    Returns:
        ((B, P + n) tokens with n <= max_new_tokens, :class:`SpeculativeStats`).
    """
    if prompt.dim() != 2 or prompt.shape[1] < 1:
        raise ValueError(f"speculative decoding takes a prompt of shape (B, P) with P >= 1; got {tuple(prompt.shape)}")
    if num_draft_tokens < 1:
        raise ValueError(f"num_draft_tokens must be >= 1, got {num_draft_tokens}")
    if not greedy and temperature <= 0:
        raise ValueError(f"sampling needs temperature > 0 (temperature 0 is greedy decoding), got {temperature}")
    B, P = prompt.shape
    device = prompt.device
    rows = torch.arange(B, device=device)
    stops = torch.tensor(list(stop_token_ids), dtype=prompt.dtype, device=device)
    seq = prompt
    done = torch.zeros(B, dtype=torch.bool, device=device)
    t_len = d_len = 0  # positions held by each cache; invariant: both hold a prefix of `seq`
    proposed = accepted = rejected = t_calls = d_calls = 0
    while seq.shape[1] - P < max_new_tokens and not bool(done.all()):
        # k proposals + the token after them must fit in the budget
        k = min(num_draft_tokens, max_new_tokens - (seq.shape[1] - P) - 1)
        # draft: catch up on committed tokens it has not seen, then propose x_1..x_k, x_i ~ q_i
        new, qs, xs = seq[:, d_len:], [], []
        for _ in range(k):
            q = _warp(draft(new)[:, -1], greedy, temperature, top_k, top_p)  # (B, V)
            d_len += new.shape[1]
            new = _draw(q, greedy, generator)[:, None]
            qs.append(q)
            xs.append(new)
        d_calls += k
        x = torch.cat(xs, dim=1) if k else seq[:, :0]  # (B, k)
        # target: uncached committed tokens + all proposals in one forward -> p_1..p_{k+1}
        pending = seq[:, t_len:]
        p = _warp(target(torch.cat([pending, x], dim=1))[:, pending.shape[1] - 1:], greedy, temperature, top_k,
                  top_p)  # (B, k+1, V)
        t_calls += 1
        V = p.shape[-1]
        q = torch.cat([*(qi[:, None] for qi in qs), p.new_zeros(B, 1, V)], dim=1)  # (B, k+1, V); q_{k+1} = 0
        if k:
            px = p[:, :k].gather(-1, x[..., None])[..., 0]  # (B, k): p_i(x_i)
            qx = q[:, :k].gather(-1, x[..., None])[..., 0]  # q_i(x_i) > 0: x_i was drawn from q_i
            if greedy:
                ok = px >= qx  # one-hot p and q: the ratio is 1 (same argmax) or 0
            else:
                u = torch.rand(B, k, generator=generator, dtype=torch.float64, device=device)
                ok = u * qx < px  # u < p/q: probability min(1, p/q)
            m = ok.long().cumprod(dim=1).sum(dim=1)  # (B,): accepted proposals (up to the first rejection)
        else:
            m = torch.zeros(B, dtype=torch.long, device=device)
        # the token after the accepted run: residual norm(max(0, p_m - q_m)) after a rejection, p_{k+1}
        # (q_{k+1} = 0) as the bonus when all k were accepted
        resid = (p[rows, m] - q[rows, m]).clamp(min=0)  # (B, V)
        mass = resid.sum(dim=-1, keepdim=True)
        resid = torch.where(mass > 0, resid / mass.clamp(min=1e-300), p[rows, m])  # p == q: no rejection possible
        y = _draw(resid, greedy, generator)
        live = ~done
        proposed += k * int(live.sum())
        accepted += int(m[live].sum())
        rejected += int((m[live] < k).sum())
        # lockstep: commit the shortest run (+1) among live rows; rows cut short keep accepted proposals only
        n = int((m[live] + 1).min())
        out = torch.cat([x, y[:, None]], dim=1)  # (B, k+1)
        out[rows, m] = y
        commit = out[:, :n].to(seq.dtype)
        commit = torch.where(done[:, None], torch.full_like(commit, pad_token_id), commit)
        if stops.numel():
            is_stop = torch.isin(commit, stops)
            after = (is_stop.long().cumsum(dim=1) - is_stop.long()) > 0  # positions past a row's first stop
            commit = commit.masked_fill(after & live[:, None], pad_token_id)
            done |= is_stop.any(dim=1)
        seq = torch.cat([seq, commit], dim=1)
        # keep in the caches only committed tokens (the newest one is fed next round)
        t_len = seq.shape[1] - 1
        target_crop(t_len)
        d_len = min(d_len, seq.shape[1] - 1)
        draft_crop(d_len)
    stats = SpeculativeStats(proposed, accepted, t_calls, d_calls, seq.shape[1] - P, rejected)
    return seq, stats


@torch.no_grad()
def beam_search(step: Step, reorder: Callable[[torch.Tensor], None], prompt: torch.Tensor, max_new_tokens: int,
                eot_token_id: int, pad_token_id: int = 0, num_beams: int = 4,
                length_penalty: float = 1.0) -> torch.Tensor:
    """Beam search returning, per input, the finished hypothesis with the best
    ``sum log p / length ** length_penalty`` (hypotheses still open at the end count as finished).

    ``step`` / ``reorder`` act on a batch of B * num_beams rows; this function repeats the caches of the
    B inputs itself (through ``reorder``) after the prompt. Returns (B, prompt_len + n) tokens.
    """
    B, P = prompt.shape
    K = num_beams
    device = prompt.device
    logp = step(prompt).float().log_softmax(dim=-1)  # (B, V)
    V = logp.shape[-1]
    reorder(torch.arange(B, device=device).repeat_interleave(K))  # every input's cache -> K beams
    # first expansion: the K best tokens of each input (all beams are identical so far)
    scores, first = logp.topk(K, dim=-1)  # (B, K)
    seqs = torch.cat([prompt.repeat_interleave(K, dim=0), first.reshape(-1, 1)], dim=1)  # (B*K, P+1)
    scores = scores.reshape(-1)  # (B*K,)
    finished: list[list[tuple[float, torch.Tensor]]] = [[] for _ in range(B)]
    alive = torch.ones(B * K, dtype=torch.bool, device=device)

    def retire(rows: torch.Tensor) -> None:
        for r in rows.tolist():
            n = seqs.shape[1] - P
            finished[r // K].append((scores[r].item() / n ** length_penalty, seqs[r].clone()))

    ended = seqs[:, -1] == eot_token_id
    retire(ended.nonzero().flatten())
    alive &= ~ended
    for _ in range(max_new_tokens - 1):
        if not bool(alive.any()):
            break
        logp = step(seqs[:, -1:]).float().log_softmax(dim=-1)  # (B*K, V)
        cand = (scores[:, None] + logp).masked_fill(~alive[:, None], float("-inf"))  # dead beams stay dead
        cand = cand.view(B, K * V)
        top_scores, top_idx = cand.topk(K, dim=-1)  # (B, K)
        beam = top_idx // V + torch.arange(B, device=device)[:, None] * K  # source row of each new beam
        tok = top_idx % V
        beam, tok, top_scores = beam.reshape(-1), tok.reshape(-1), top_scores.reshape(-1)
        reorder(beam)
        seqs = torch.cat([seqs[beam], tok[:, None]], dim=1)
        scores = top_scores
        alive = torch.isfinite(scores)
        ended = alive & (tok == eot_token_id)
        retire(ended.nonzero().flatten())
        alive &= ~ended
    retire(alive.nonzero().flatten())
    out = []
    for hyps in finished:
        best = max(hyps, key=lambda h: h[0])[1]
        out.append(best)
    length = max(s.shape[0] for s in out)
    padded = torch.full((B, length), pad_token_id, dtype=prompt.dtype, device=device)
    for i, s in enumerate(out):
        padded[i, : s.shape[0]] = s
    return padded
