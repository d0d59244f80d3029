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
    """What :func:`speculative_greedy` did: draft tokens proposed / accepted, target forwards."""

    proposed: int
    accepted: int
    target_calls: int

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / max(self.proposed, 1)


@torch.no_grad()
def speculative_greedy(target: Callable[[torch.Tensor], torch.Tensor], target_crop: Callable[[int], None],
                       draft: Callable[[torch.Tensor], torch.Tensor], draft_crop: Callable[[int], None],
                       prompt: torch.Tensor, max_new_tokens: int, num_draft_tokens: int = 4,
                       stop_token_ids: Sequence[int] = ()) -> tuple[torch.Tensor, SpeculativeStats]:
    """Speculative decoding (Leviathan et al. 2023; Chen et al. 2023) with greedy acceptance: returns
    exactly the target's greedy continuation, in fewer target forwards when the draft agrees with it.

    Per round the draft proposes ``num_draft_tokens`` tokens one by one; the target scores the last
    committed token and all proposals in one KV-cached forward; the longest prefix of proposals equal to
    the target's argmax is accepted, followed by the target's own next token (a correction, or a bonus
    token when everything was accepted); both caches are cropped back to the committed tokens.

    Args:
        target: ``forward(new_tokens (1, T)) -> logits (1, T, V)`` of every new position,
            appending to the model's KV cache (which starts empty).
        target_crop: ``crop(length)`` keeps the first ``length`` positions of the target's cache.
        draft: the draft model's ``forward``, as ``target``.
        draft_crop: ``crop(length)`` of the draft's cache.
        prompt: (1, P) token ids, P >= 1 (one sequence: acceptance differs between rows).
        stop_token_ids: the output ends after the first of these.
    Returns:
        ((1, P + n) tokens with n <= max_new_tokens, :class:`SpeculativeStats`).
    """
    if prompt.dim() != 2 or prompt.shape[0] != 1:
        raise ValueError(f"speculative decoding takes one sequence, prompt of shape (1, P); got {tuple(prompt.shape)}")
    if num_draft_tokens < 1:
        raise ValueError(f"num_draft_tokens must be >= 1, got {num_draft_tokens}")
    seq = prompt[0].tolist()
    P = len(seq)
    stops = set(stop_token_ids)
    t_len = d_len = 0  # positions held by each cache; invariant: caches hold a prefix of `seq`
    proposed = accepted = calls = 0
    while len(seq) - P < max_new_tokens:
        k = min(num_draft_tokens, max_new_tokens - (len(seq) - P))
        # draft: catch up on committed tokens it has not seen, then propose k tokens greedily
        new = torch.tensor([seq[d_len:]], dtype=prompt.dtype, device=prompt.device)
        proposal = []
        for i in range(k):
            nxt = int(draft(new)[0, -1].argmax())
            d_len += new.shape[1]
            proposal.append(nxt)
            new = torch.tensor([[nxt]], dtype=prompt.dtype, device=prompt.device)
        # target: every uncached committed token + all proposals in one forward
        pending = seq[t_len:]
        logits = target(torch.tensor([pending + proposal], dtype=prompt.dtype, device=prompt.device))[0]
        calls += 1
        greedy = logits[len(pending) - 1:].argmax(dim=-1).tolist()  # target's choice after each prefix
        m = 0
        while m < k and proposal[m] == greedy[m]:
            m += 1
        proposed, accepted = proposed + k, accepted + m
        commit = proposal[:m] + [greedy[m]]
        seq.extend(commit)
        # keep in the caches only committed tokens (the newest one is fed next round)
        t_len = len(seq) - 1
        target_crop(t_len)
        d_len = min(d_len, len(seq) - 1)
        draft_crop(d_len)
        hit = [i for i, t in enumerate(seq[P:]) if t in stops]
        if hit:
            del seq[P + hit[0] + 1:]
            break
    del seq[P + max_new_tokens:]
    return torch.tensor([seq], dtype=prompt.dtype, device=prompt.device), SpeculativeStats(proposed, accepted, calls)


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
