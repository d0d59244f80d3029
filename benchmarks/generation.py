"""Generation figures for the language models: KV cache vs recompute, cache size of MHA / GQA / MQA,
speculative decoding acceptance rate and speed-up.

    PYTHONPATH=. python benchmarks/generation.py [--new-tokens 256] [--target CKPT --draft CKPT]

Without checkpoints the models are random-init ``gpt_tiny`` / ``gpt_tiny_draft`` (a random draft agrees
with the target only by chance; pass trained checkpoints for meaningful acceptance rates).
"""
from __future__ import annotations

import argparse
import time

import torch

import mmzoo


def timed(fn, repeats: int = 1) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--target", default=None, help="mmzoo checkpoint of the target GPT")
    ap.add_argument("--draft", default=None, help="mmzoo checkpoint of the draft GPT")
    ap.add_argument("--draft-tokens", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n = args.new_tokens
    # context long enough for prompt + n new tokens
    target = (mmzoo.create_model(pretrained=args.target) if args.target
              else mmzoo.create_model("gpt_tiny", context_length=n + 8)).eval()
    draft = (mmzoo.create_model(pretrained=args.draft) if args.draft
             else mmzoo.create_model("gpt_tiny_draft", context_length=n + 8)).eval()
    n = min(n, target.cfg.context_length - 8)
    prompt = torch.randint(0, target.cfg.vocab_size - 40, (1, 8))

    cached = target.generate(prompt, n, use_cache=True)
    recomputed = target.generate(prompt, n, use_cache=False)
    assert torch.equal(cached, recomputed)
    t_cache = timed(lambda: target.generate(prompt, n, use_cache=True), 3)
    t_full = timed(lambda: target.generate(prompt, n, use_cache=False), 1)
    print(f"KV cache, {n} new tokens ({target.cfg.embed_dim}-wide, {target.cfg.depth} blocks): cached {t_cache:.3f} s, "
          f"recompute {t_full:.3f} s, speed-up {t_full / t_cache:.1f}x")

    for kv in (target.cfg.num_heads, 2, 1):
        m = mmzoo.create_model("gpt_tiny", num_kv_heads=kv, context_length=n + 8).eval()
        caches = m.new_kv_caches()
        with torch.no_grad():
            m.decode(torch.randint(0, 100, (1, n + 8)), kv_caches=caches)
        nbytes = sum(c.k.numel() * c.k.element_size() + c.v.numel() * c.v.element_size() for c, _ in caches)
        label = "MHA" if kv == m.cfg.num_heads else "MQA" if kv == 1 else "GQA"
        print(f"KV cache bytes at {n + 8} positions, {label} (num_kv_heads={kv}/{m.cfg.num_heads}): {nbytes:,}")

    ref = target.generate(prompt, n)
    out, stats = target.generate_speculative(draft, prompt, n, args.draft_tokens)
    assert torch.equal(out, ref), "speculative output differs from target greedy"
    t_greedy = timed(lambda: target.generate(prompt, n), 3)
    t_spec = timed(lambda: target.generate_speculative(draft, prompt, n, args.draft_tokens), 3)
    print(f"speculative decoding (k={args.draft_tokens}): acceptance rate {stats.acceptance_rate:.2f}, "
          f"{stats.target_calls} target forwards for {out.shape[1] - prompt.shape[1]} tokens, "
          f"greedy {t_greedy:.3f} s, speculative {t_spec:.3f} s, speed-up {t_greedy / t_spec:.2f}x")
    same, st = target.generate_speculative(target, prompt, n, args.draft_tokens)
    assert torch.equal(same, ref)
    print(f"speculative decoding with draft == target: acceptance rate {st.acceptance_rate:.2f}, "
          f"{st.target_calls} target forwards")


if __name__ == "__main__":
    main()
