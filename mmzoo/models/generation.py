"""Autoregressive decoding for any mmzoo decoder: greedy, top-k / top-p sampling, beam search.

A decoder is driven through two callables, so the same loops serve captioners and language models:

* ``step(new_tokens (B, T)) -> logits (B, V)``: feed the new tokens (the prompt first, then one token
  per call), updating the decoder's KV caches, and return the next-token logits of the last position;
* ``reorder(index (B',))``: select / repeat cache rows (beam search).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

Step = Callable[[torch.Tensor], torch.Tensor]


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
           generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Greedy decoding (``greedy=True``) or sampling with temperature / top-k / top-p.

    Returns (B, prompt_len + n) tokens; a sequence that produced ``eot_token_id`` is padded afterwards
    with ``pad_token_id``, and decoding stops once every sequence has ended.
    """
    tokens = prompt
    done = torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)
    logits = step(prompt)
    for _ in range(max_new_tokens):
        if greedy:
            nxt = logits.argmax(dim=-1)
        else:
            probs = top_k_top_p_filter(logits / max(temperature, 1e-6), top_k, top_p).softmax(dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad_token_id), nxt)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        done |= nxt == eot_token_id
        if bool(done.all()):
            break
        logits = step(nxt[:, None])
    return tokens


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
