#!/usr/bin/env python
"""Grammar-aligned sampling: how close masking, ASAp and CARS come to P(w | w in L(G)).

Two parts, one run:

* ``toy``: skewed binary languages of the Grammar-Aligned Decoding paper's kind
  on a :class:`~gramspec.evaluation.toy.ToyLM` whose conditioned law can be
  enumerated exactly. For each method, KL(empirical law of the first t samples ||
  exact law) at growing t, plotted like the paper's figures, and the model forward
  passes per sample.
* ``smollm2``: a small Lark grammar on SmolLM2; every sample must parse; the
  expectation plot puts each distinct output's model probability (normalized over
  the distinct outputs seen) against its empirical frequency, per method.

Writes ``benchmarks/results/eval_aligned.json`` and two PNGs next to it
(matplotlib needed for the plots: ``pip install -e .[bench]``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gramspec import Vocabulary
from gramspec.evaluation.toy import ToyLM
from gramspec.grammars import compile_regex
from gramspec.plugins import CARS, AlignedStore, ASAp, GrammarMask, Pipeline, Plugin, RejectedSample
from gramspec.specdec import decode

OUT_DIR = Path(__file__).resolve().parent / "results"
METHODS = ("mask", "asap", "cars")
CHECKPOINTS = (10, 20, 50, 100, 200, 500, 1000, 2000, 5000)

# the toy vocabulary: 0 "0", 1 "1", 2 <eos>, 3 "x" (prompt only)
TOKENS = [b"0", b"1", b"", b"x"]
EOS = 2
PROMPT = [3, 3]


def make_plugin(method: str, grammar: Any) -> Plugin:
    """A fresh plugin of ``method`` (one of METHODS) over ``grammar``."""
    if method == "mask":
        return GrammarMask(grammar)
    return {"asap": ASAp, "cars": CARS}[method](grammar, AlignedStore())


def skewed(length: int) -> tuple[str, Callable[[tuple[int, ...]], torch.Tensor]]:
    """The language ``1 0^(n-1) | 0 [01]^(n-1)``; the model starts with "1" 95% of the time and,
    after a "1", keeps writing "1"s (masked), so masking nearly always emits the one "10...0"."""
    regex = f"10{{{length - 1}}}|0[01]{{{length - 1}}}"

    def logits(prefix: tuple[int, ...]) -> torch.Tensor:
        generated = prefix[len(PROMPT) :]
        if not generated:
            probs = [0.05, 0.95, 1e-3, 1e-3]
        elif generated[0] == 1:
            probs = [0.1, 0.85, 0.05, 1e-3]
        else:
            probs = [0.45, 0.45, 0.1, 1e-3]
        return torch.log(torch.tensor(probs))

    return regex, logits


def conditioned(model: ToyLM, grammar: Any) -> dict[tuple[int, ...], float]:
    law: dict[tuple[int, ...], float] = {}
    matcher = grammar.matcher()

    def visit(prefix: list[int], prob: float) -> None:
        if prefix and prefix[-1] == EOS:
            law[tuple(prefix)] = prob
            return
        probs = torch.softmax(model.logits_after(tuple(PROMPT + prefix)).double(), -1)
        for token in range(len(TOKENS)):
            if matcher.advance(token):
                visit(prefix + [token], prob * float(probs[token]))
                matcher.rollback(1)

    visit([], 1.0)
    total = sum(law.values())
    return {w: p / total for w, p in law.items()}


def kl_empirical(counts: Counter[tuple[int, ...]], exact: dict[tuple[int, ...], float]) -> float:
    n = sum(counts.values())
    return sum((c / n) * math.log((c / n) / exact[w]) for w, c in counts.items() if c)


def toy(samples: int, lengths: list[int], seed: int) -> dict[str, Any]:
    vocab = Vocabulary.from_token_bytes(TOKENS, eos_token_ids=[EOS])
    out: dict[str, Any] = {}
    for length in lengths:
        regex, fn = skewed(length)
        grammar = compile_regex(regex, vocab, disk_cache=False)
        model = ToyLM(0, len(TOKENS), logits_fn=fn)
        exact = conditioned(model, grammar)
        rows: dict[str, Any] = {}
        for method in METHODS:
            plugin = make_plugin(method, grammar)
            pipeline = Pipeline([plugin])
            generator = torch.Generator().manual_seed(seed)
            counts: Counter[tuple[int, ...]] = Counter()
            curve: list[tuple[int, float]] = []
            calls0, attempts = model.calls, 0
            for i in range(1, samples + 1):
                while True:
                    attempts += 1
                    pipeline.reset(PROMPT)
                    try:
                        result = decode(model, PROMPT, pipeline, eos_ids=frozenset([EOS]), max_new_tokens=length + 1,
                                        greedy=False, generator=generator)
                        break
                    except RejectedSample:
                        pipeline.finish()
                counts[tuple(result.tokens)] += 1
                if i in CHECKPOINTS or i == samples:
                    curve.append((i, kl_empirical(counts, exact)))
            rows[method] = {"kl_curve": curve, "forwards_per_sample": (model.calls - calls0) / samples,
                            "attempts_per_sample": attempts / samples}
            print(f"toy n={length} {method:5s} KL at {curve[-1][0]} samples {curve[-1][1]:.4f}, "
                  f"{rows[method]['forwards_per_sample']:.2f} forwards/sample", file=sys.stderr)
        out[f"n={length}"] = {"regex": regex, "strings": len(exact), "methods": rows}
    return out


SMOL_GRAMMAR = 'start: "The " ANIMAL " is " COLOR "."\nANIMAL: "cat" | "dog" | "fox" | "owl" | "crab"\nCOLOR: "red" | "blue" | "green" | "black" | "white"\n'
SMOL_PROMPT = "Write one short sentence about an animal and its color."


def smollm2(samples: int, seed: int) -> dict[str, Any]:
    import gramspec
    from gramspec.generation import validate

    model, tokenizer = gramspec.load_default()
    out: dict[str, Any] = {"grammar": SMOL_GRAMMAR, "prompt": SMOL_PROMPT, "methods": {}}
    outputs: dict[str, Counter[tuple[int, ...]]] = {}
    for method in METHODS:
        store = AlignedStore()
        counts: Counter[tuple[int, ...]] = Counter()
        forwards = attempts = invalid = 0
        start = time.perf_counter()
        for i in range(samples):
            r = gramspec.generate(model, tokenizer, [{"role": "user", "content": SMOL_PROMPT}], grammar=SMOL_GRAMMAR,
                                  temperature=1.0, seed=seed + i, max_new_tokens=24,
                                  aligned=None if method == "mask" else method, aligned_store=store)
            counts[tuple(r.token_ids)] += 1
            forwards += int(r.stats["target_forwards"])
            attempts += int(r.stats["attempts"])
            invalid += not validate("grammar", SMOL_GRAMMAR, r.text)[0] and not r.truncated
        outputs[method] = counts
        out["methods"][method] = {"distinct": len(counts), "invalid": invalid, "forwards_per_sample": forwards / samples,
                                  "attempts_per_sample": attempts / samples, "seconds": time.perf_counter() - start}
        print(f"smollm2 {method:5s} {len(counts)} distinct, {invalid} invalid, {forwards / samples:.1f} forwards/sample",
              file=sys.stderr)
    # the model's probability of each distinct output (prompt + output, EOS included)
    prompt_ids = tokenizer.apply_chat_template([{"role": "user", "content": SMOL_PROMPT}], add_generation_prompt=True,
                                               return_dict=True)["input_ids"]
    distinct = sorted(set().union(*outputs.values()))
    logp: dict[tuple[int, ...], float] = {}
    with torch.inference_mode():
        for w in distinct:
            ids = torch.tensor([list(prompt_ids) + list(w)])
            logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].double()
            logp[w] = float(torch.log_softmax(logits, -1).gather(-1, torch.tensor(w)[:, None]).sum())
    top = max(logp.values())
    z = sum(math.exp(v - top) for v in logp.values())
    model_share = {w: math.exp(v - top) / z for w, v in logp.items()}
    out["points"] = {
        method: [{"text": tokenizer.decode(list(w), skip_special_tokens=True), "model": model_share[w],
                  "empirical": counts[w] / samples} for w in distinct]
        for method, counts in outputs.items()
    }
    for method, points in out["points"].items():
        out["methods"][method]["l1_to_model"] = sum(abs(p["model"] - p["empirical"]) for p in points)
    return out


def plot(report: dict[str, Any], out_dir: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install -e .[bench])", file=sys.stderr)
        return []
    written = []
    if report.get("toy"):
        parts = report["toy"]
        fig, axes = plt.subplots(1, len(parts), figsize=(5 * len(parts), 3.6), squeeze=False)
        for ax, (name, part) in zip(axes[0], parts.items()):
            for method, row in part["methods"].items():
                xs, ys = zip(*row["kl_curve"])
                ax.plot(xs, ys, marker="o", label=method)
            ax.set_xscale("log")
            ax.set_xlabel("samples")
            ax.set_ylabel("KL(empirical || exact)")
            ax.set_title(f"{part['regex']} ({part['strings']} strings)")
            ax.legend()
        fig.tight_layout()
        path = out_dir / "aligned_kl.png"
        fig.savefig(path, dpi=120)
        written.append(str(path))
    if report.get("smollm2"):
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        for method, points in report["smollm2"]["points"].items():
            ax.scatter([p["model"] for p in points], [p["empirical"] for p in points], label=method, alpha=0.7)
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
        ax.set_xlabel("model probability (normalized over outputs seen)")
        ax.set_ylabel("empirical frequency")
        ax.set_title("SmolLM2: expectation plot")
        ax.legend()
        fig.tight_layout()
        path = out_dir / "aligned_expectation.png"
        fig.savefig(path, dpi=120)
        written.append(str(path))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--toy-samples", type=int, default=2000)
    parser.add_argument("--lengths", default="4,6", help="lengths of the toy languages (default 4,6)")
    parser.add_argument("--smollm2-samples", type=int, default=100, help="0 skips the SmolLM2 part")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT_DIR / "eval_aligned.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {"toy": toy(args.toy_samples, [int(n) for n in args.lengths.split(",")], args.seed)}
    if args.smollm2_samples:
        report["smollm2"] = smollm2(args.smollm2_samples, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report["plots"] = plot(report, args.out.parent)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    print("toy languages: KL(empirical || exact) after all samples, forwards per sample")
    for part in report["toy"].values():
        cells = ", ".join(f"{m} {r['kl_curve'][-1][1]:.4f} ({r['forwards_per_sample']:.2f} fwd)" for m, r in part["methods"].items())
        print(f"  {part['regex']:18s} {cells}")
    if "smollm2" in report:
        print("SmolLM2: distinct outputs, invalid, forwards/sample, L1(model share, empirical)")
        for m, r in report["smollm2"]["methods"].items():
            print(f"  {m:5s} {r['distinct']:3d} distinct, {r['invalid']} invalid, {r['forwards_per_sample']:.1f} fwd, "
                  f"{r['attempts_per_sample']:.2f} attempts, L1 {r['l1_to_model']:.3f}")
    print(f"wrote {args.out}" + "".join(f", {p}" for p in report["plots"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
