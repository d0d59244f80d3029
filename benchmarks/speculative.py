"""Speculative decoding with a trained draft: acceptance rate and speed-up over plain KV-cached decoding
of the same target, greedy (temperature 0) and sampling (temperature 1), over several seeds.

    PYTHONPATH=. python benchmarks/speculative.py --target RUN_T/checkpoints/last.ckpt \\
        --draft RUN_D/checkpoints/last.ckpt [--seeds 0 1 2 3 4] [--draft-tokens 2 4] [--new-tokens 96]

Train the pair first on the built-in corpus (same data, hence the same tokenizer):

    python train.py model=gpt model.name=gpt_tiny hydra.run.dir=RUN_T
    python train.py model=gpt model.name=gpt_tiny_draft hydra.run.dir=RUN_D

Each seed picks a prompt (the first ``--prompt-tokens`` tokens of a random held-out test document) and the
sampling generator. Decoding runs ``--new-tokens`` tokens without stopping at end-of-text, so every
method produces the same number of tokens. Baselines in the same run: plain decoding of the target
(speed-up 1) and an untrained draft of the same shape (what acceptance a draft gets without training).
Printed per temperature, draft and k: accepted / proposed draft tokens, alpha (the probability that the
rule accepts a proposal it tests), tokens per target forward, the measured speed-up and the one
Leviathan et al. (2023, eq. 1 / thm. 3.8) predict from alpha, k and the draft's cost relative to the
target, c. Times are the best of ``--repeats`` runs (identical outputs: same seed); the speed-up is reported on CPU
time (one thread: the work done, robust to other jobs on a shared machine) and on wall-clock time.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import torch

import mmzoo
from mmzoo.data import TextCorpusDataModule
from mmzoo.generate import load_tokenizer


def _interval(xs: list[float]) -> str:
    """mean +- half-width of the 95% t-interval over seeds."""
    if len(xs) < 2:
        return f"{xs[0]:.2f}"
    t95 = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57, 7: 2.45, 8: 2.36, 9: 2.31, 10: 2.26}.get(len(xs), 2.0)
    half = t95 * statistics.stdev(xs) / math.sqrt(len(xs))
    return f"{statistics.mean(xs):.2f} +- {half:.2f}"


def _best_time(fn, repeats: int):
    """(best wall seconds, best CPU seconds of this process, output). With one thread the CPU time is the
    work done, nearly independent of other jobs on a shared machine; the wall time is not."""
    wall = cpu = float("inf")
    out = None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        wall, cpu = min(wall, time.perf_counter() - t), min(cpu, time.process_time() - c)
    return wall, cpu, out


def _prompts(tokens: np.ndarray, eot: int, length: int, seeds: list[int]) -> list[torch.Tensor]:
    """The first ``length`` tokens of a random test document per seed (documents are EOT-separated)."""
    starts = np.flatnonzero(np.asarray(tokens) == eot) + 1
    out = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        while True:
            s = int(rng.choice(starts[:-1]))
            window = np.asarray(tokens[s:s + length], dtype=np.int64)
            if len(window) == length and eot not in window:
                out.append(torch.from_numpy(window)[None])
                break
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True, help="mmzoo checkpoint of the trained target (gpt_tiny)")
    ap.add_argument("--draft", required=True, help="mmzoo checkpoint of the trained draft (gpt_tiny_draft)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--draft-tokens", type=int, nargs="+", default=[4])
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 1.0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache-dir", default=None, help="data.cache_dir of the training runs (the test split)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    target = mmzoo.create_model(pretrained=args.target).eval()
    draft = mmzoo.create_model(pretrained=args.draft).eval()
    torch.manual_seed(0)
    untrained = mmzoo.create_model(draft.model_name, vocab_size=draft.cfg.vocab_size,
                                   context_length=draft.cfg.context_length).eval()
    tok = load_tokenizer(args.target)
    if load_tokenizer(args.draft).merges != tok.merges:
        raise SystemExit(f"--draft {args.draft} was trained with another tokenizer than --target {args.target}")
    dm = TextCorpusDataModule(cache_dir=args.cache_dir, vocab_size=target.cfg.vocab_size,
                                         context_length=target.cfg.context_length)
    if dm.tokenizer.merges != tok.merges:
        raise SystemExit("the corpus cache holds another tokenizer than the checkpoints: pass --cache-dir, the "
                         "data.cache_dir of the training runs")
    prompts = _prompts(dm.split_tokens("test"), tok.eot_token_id, args.prompt_tokens, args.seeds)
    n = args.new_tokens
    print(f"target {target.model_name} ({sum(p.numel() for p in target.parameters()):,} params), draft "
          f"{draft.model_name} ({sum(p.numel() for p in draft.parameters()):,} params); {n} new tokens after "
          f"{args.prompt_tokens}-token test prompts; seeds {args.seeds}; {args.threads} thread(s); "
          f"best of {args.repeats}")

    # cost of one cached draft forward relative to one of the target (c in Leviathan et al.'s eq. for the
    # expected speed-up (1 - alpha^(k+1)) / ((1 - alpha) (k c + 1))), from plain greedy decoding of each
    costs = []
    for prompt in prompts:
        t_draft = _best_time(lambda: draft.generate(prompt, n, eot_token_id=-1), args.repeats)[1]
        t_target = _best_time(lambda: target.generate(prompt, n, eot_token_id=-1), args.repeats)[1]
        costs.append(t_draft / t_target)
    c = statistics.mean(costs)
    print(f"draft / target cost per cached forward c = {_interval(costs)} (CPU time)")

    rows = []
    for temp in args.temperatures:
        strategy = "greedy" if temp == 0 else "sample"
        plain_ms, plain_wall_ms = [], []
        res: dict[tuple[str, int], dict[str, list[float]]] = {}
        for seed, prompt in zip(args.seeds, prompts):
            def plain():
                g = torch.Generator().manual_seed(seed)
                return target.generate(prompt, n, strategy, eot_token_id=-1, temperature=temp or 1.0, generator=g)

            w_plain, t_plain, ref = _best_time(plain, args.repeats)
            plain_ms.append(1e3 * t_plain / n)
            plain_wall_ms.append(1e3 * w_plain / n)
            for name, d in (("trained", draft), ("untrained", untrained)):
                for k in args.draft_tokens:
                    def spec():
                        g = torch.Generator().manual_seed(seed)
                        return target.generate_speculative(d, prompt, n, k, strategy, temp or 1.0, generator=g)

                    w_spec, t_spec, (out, stats) = _best_time(spec, args.repeats)
                    if strategy == "greedy":
                        assert torch.equal(out, ref), "speculative greedy output differs from the target's greedy"
                    r = res.setdefault((name, k), {"acc": [], "alpha": [], "tpc": [], "speedup": [], "wall": []})
                    r["acc"].append(stats.acceptance_rate)
                    r["alpha"].append(stats.token_acceptance)
                    r["tpc"].append(stats.tokens_per_target_call)
                    r["speedup"].append(t_plain / t_spec)
                    r["wall"].append(w_plain / w_spec)
        rows.append((temp, "plain decoding", "-", "-", "-", "1", "1", "1", "1",
                     f"{statistics.mean(plain_ms):.2f} ms/token CPU, {statistics.mean(plain_wall_ms):.2f} wall"))
        for (name, k), r in res.items():
            alpha = min(statistics.mean(r["alpha"]), 1 - 1e-9)
            predicted = (1 - alpha ** (k + 1)) / ((1 - alpha) * (k * c + 1))
            rows.append((temp, f"{name} draft", k, _interval(r["acc"]), _interval(r["alpha"]),
                         f"{statistics.mean(r['tpc']):.2f}", _interval(r["speedup"]), _interval(r["wall"]),
                         f"{predicted:.2f}", ""))
        if strategy == "sample":
            print(f"temperature {temp}: speculative samples are the target's law (tested: tests/models/"
                  "test_speculative.py); the same seed draws different tokens than plain sampling")
    print("\n| temperature | decoding | k | accepted / proposed | alpha | tokens / target forward "
          "| speed-up (CPU time) | speed-up (wall) | predicted from alpha, k, c | |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for temp, *cells in rows:
        print(f"| {temp:g} | " + " | ".join(str(x) for x in cells) + " |")


if __name__ == "__main__":
    main()
