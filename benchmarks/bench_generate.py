#!/usr/bin/env python
"""End-to-end constrained generation speed on SmolLM2-135M-Instruct (CPU, greedy, one thread).

Same prompts, same MaskBench schemas, same machine, one run, for:

* ``unconstrained``      ``model.generate`` with no processor (``min_new_tokens = max_new_tokens``,
                         so every generation decodes the full length: the baseline rate)
* ``gs-generate-free``   ``gramspec.generate`` with no constraint (its own decode loop's baseline)
* ``gs-generate``        ``gramspec.generate(schema=...)``: opportunistic masking (full masks counted)
* ``gs-processor``       ``model.generate`` + ``JSONSchemaLogitsProcessor`` (full masks)
* ``gs-processor-greedy``  the same with ``assume_greedy=True`` (one-token mask when the argmax is allowed)
* ``xgrammar``           ``model.generate`` + ``xgrammar.contrib.hf.LogitsProcessor``
* ``llguidance``         ``model.generate`` + a minimal adapter (llguidance ships no HF processor):
                         ``LLMatcher`` per generation, ``consume_token`` + ``fill_next_token_bitmask``
                         (``llguidance.torch``), mask applied with the same torch unpack gramspec uses

Each generation is timed end to end (prompt forward included) and, from the
first logits-processor call (after the prompt's forward) to the end, as
*decode* time per token; the constraint's own time is timed inside its
processor (for ``gramspec.generate``: the pipeline's choose + advance).
Every constrained output must validate with python-jsonschema or be truncated
(no EOS within ``max_new_tokens``); gramspec's variants are also checked to
produce the same greedy tokens as ``gs-processor``.

Run ``python benchmarks/bench_generate.py --help``; docs/benchmarks.md explains the table.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import argparse
import json
import statistics
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from bench_masks import GcWatch, machine_info, note, shared_path
from transformers.generation.logits_process import LogitsProcessor

from gramspec.evaluation.engines import LLGuidanceProcessor

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "bench_generate.json"
ENGINES = (
    "unconstrained",
    "gs-generate-free",
    "gs-generate",
    "gs-processor",
    "gs-processor-greedy",
    "xgrammar",
    "llguidance",
)
BASELINES = ("unconstrained", "gs-generate-free")
GRAMSPEC = ("gs-generate", "gs-processor", "gs-processor-greedy")
PEERS = ("xgrammar", "llguidance")
PROMPTS = [
    "Give me an example record as JSON.",
    "Describe a typical entry, as JSON, briefly.",
    "Fill in the form as JSON with realistic values.",
    "Return one JSON object that a real user of this API might send.",
]
#: Subsets visited in turn when picking schemas (the first files, sorted, that every engine compiles).
SUBSETS = ["Github_easy", "Glaiveai2K", "Snowplow", "Github_medium", "JME", "Handwritten", "Synthesized"]


class Skip(Exception):
    pass


class Clock(LogitsProcessor):
    """First in the list: notes when the first call comes (the prompt's forward is done)."""

    def __init__(self) -> None:
        self.first: float | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.first is None:
            self.first = time.perf_counter()
        return scores


class Timed(LogitsProcessor):
    """Times the wrapped processor's calls, and the garbage collections that ran inside them."""

    def __init__(self, inner: Any, watch: GcWatch) -> None:
        self.inner, self.watch, self.ns, self.gc_ns, self.calls = inner, watch, 0, 0, 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        gc_before = self.watch.ns
        start = time.perf_counter_ns()
        out = self.inner(input_ids, scores)
        self.ns += time.perf_counter_ns() - start
        self.gc_ns += self.watch.ns - gc_before
        self.calls += 1
        return out


# --------------------------------------------------------------------------
# engines: compile once per schema, then one generation per prompt


class Engine:
    name = ""
    constrained = True

    def __init__(self, ctx: dict[str, Any]) -> None:
        self.ctx = ctx

    def compile(self, schema: Any) -> Any:
        return None

    def generate(self, compiled: Any, schema: Any, messages: list[dict[str, str]], batch: Any) -> dict[str, Any]:
        raise NotImplementedError

    def hf_generate(self, batch: Any, processor: Any | None, **extra: Any) -> dict[str, Any]:
        model, n, watch = self.ctx["model"], self.ctx["max_new_tokens"], self.ctx["gc"]
        clock = Clock()
        timed = Timed(processor, watch) if processor is not None else None
        processors = [clock] + ([timed] if timed is not None else [])
        gc_before = watch.ns
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                **batch, logits_processor=processors, max_new_tokens=n, do_sample=False,
                pad_token_id=self.ctx["pad_id"], eos_token_id=sorted(self.ctx["eos"]), **extra,
            )
        end = time.perf_counter()
        tokens = out[0, batch["input_ids"].shape[1]:].tolist()
        return {
            "tokens": tokens,
            "seconds": end - start,
            "decode_seconds": end - (clock.first or start),
            "constraint_seconds": (timed.ns / 1e9) if timed else 0.0,
            "gc_seconds": (watch.ns - gc_before) / 1e9,
            "constraint_gc_seconds": (timed.gc_ns / 1e9) if timed else 0.0,
        }


class Unconstrained(Engine):
    name, constrained = "unconstrained", False

    def generate(self, compiled: Any, schema: Any, messages: Any, batch: Any) -> dict[str, Any]:
        return self.hf_generate(batch, None, min_new_tokens=self.ctx["max_new_tokens"])


class GramspecGenerate(Engine):
    name = "gs-generate"

    def compile(self, schema: Any) -> Any:
        from gramspec.plugins.hf import compile_constraint, vocabulary_for

        # what gramspec.generate compiles (and then finds in its in-memory cache)
        vocab = vocabulary_for(self.ctx["tokenizer"], vocab_size=self.ctx["vocab_size"], eos_token_ids=self.ctx["eos"])
        return compile_constraint("schema", schema, vocab, whitespace=self.ctx["whitespace"])

    def generate(self, compiled: Any, schema: Any, messages: Any, batch: Any) -> dict[str, Any]:
        import gramspec

        watch = self.ctx["gc"]
        gc_before = watch.ns
        result = gramspec.generate(
            self.ctx["model"], self.ctx["tokenizer"], messages, schema=schema if self.constrained else None,
            max_new_tokens=self.ctx["max_new_tokens"], compile_options={"whitespace": self.ctx["whitespace"]},
        )
        first = result.stats.get("first_token_us", 0) / 1e6
        return {
            "tokens": result.token_ids,
            "seconds": result.seconds,
            "decode_seconds": result.seconds - first,
            "constraint_seconds": result.stats.get("pipeline_us", 0) / 1e6,
            "gc_seconds": (watch.ns - gc_before) / 1e9,  # those inside the pipeline are not told apart
            "full_masks": result.stats.get("full_masks", 0),
            "fast_path_hits": result.stats.get("fast_path_hits", 0),
        }


class GramspecGenerateFree(GramspecGenerate):
    name, constrained = "gs-generate-free", False

    def compile(self, schema: Any) -> Any:
        return None


class GramspecProcessor(Engine):
    name = "gs-processor"
    assume_greedy = False

    def compile(self, schema: Any) -> Any:
        from gramspec.grammars.json_schema import compile_json_schema
        from gramspec.plugins.hf import vocabulary_for

        vocab = vocabulary_for(self.ctx["tokenizer"], vocab_size=self.ctx["vocab_size"], eos_token_ids=self.ctx["eos"])
        # its own grammar object: its own mask caches
        return compile_json_schema(schema, vocab, whitespace=self.ctx["whitespace"])

    def generate(self, compiled: Any, schema: Any, messages: Any, batch: Any) -> dict[str, Any]:
        from gramspec.plugins.hf import GrammarConstraintLogitsProcessor

        processor = GrammarConstraintLogitsProcessor(compiled, assume_greedy=self.assume_greedy)
        out = self.hf_generate(batch, processor)
        out["full_masks"], out["fast_path_hits"] = processor.full_masks, processor.fast_path_hits
        return out


class GramspecProcessorGreedy(GramspecProcessor):
    name, assume_greedy = "gs-processor-greedy", True


class XGrammar(Engine):
    name = "xgrammar"

    def __init__(self, ctx: dict[str, Any]) -> None:
        super().__init__(ctx)
        try:
            import xgrammar
            import xgrammar.contrib.hf
        except ImportError as exc:
            raise Skip(f"not installed ({exc})") from exc
        self.xgr = xgrammar
        start = time.perf_counter()
        info = xgrammar.TokenizerInfo.from_huggingface(
            ctx["tokenizer"], vocab_size=ctx["vocab_size"], stop_token_ids=sorted(ctx["eos"])
        )
        self.compiler = xgrammar.GrammarCompiler(info, max_threads=1)
        self.prep_s = time.perf_counter() - start

    def compile(self, schema: Any) -> Any:
        if self.ctx["whitespace"] == "flexible":
            return self.compiler.compile_json_schema(json.dumps(schema))  # any_whitespace=True, its default
        return self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, separators=(",", ":"))

    def generate(self, compiled: Any, schema: Any, messages: Any, batch: Any) -> dict[str, Any]:
        return self.hf_generate(batch, self.xgr.contrib.hf.LogitsProcessor(compiled))  # one per generation


class LLGuidance(Engine):
    name = "llguidance"

    def __init__(self, ctx: dict[str, Any]) -> None:
        super().__init__(ctx)
        try:
            import llguidance
            import llguidance.hf
            import llguidance.torch
        except ImportError as exc:
            raise Skip(f"not installed ({exc})") from exc
        self.ll = llguidance
        start = time.perf_counter()
        self.tokenizer = llguidance.hf.from_tokenizer(
            ctx["tokenizer"], n_vocab=ctx["vocab_size"], eos_token=min(ctx["eos"])
        )
        self.prep_s = time.perf_counter() - start

    def compile(self, schema: Any) -> Any:
        flexible = self.ctx["whitespace"] == "flexible"  # whitespace_flexible=True is its default
        grammar = self.ll.LLMatcher.grammar_from_json_schema(json.dumps(schema), overrides={"whitespace_flexible": flexible})
        LLGuidanceProcessor(self.tokenizer, grammar, self.ctx["vocab_size"])  # errors surface here
        return grammar

    def generate(self, compiled: Any, schema: Any, messages: Any, batch: Any) -> dict[str, Any]:
        return self.hf_generate(batch, LLGuidanceProcessor(self.tokenizer, compiled, self.ctx["vocab_size"]))


ENGINE_CLASSES: dict[str, Callable[[dict[str, Any]], Engine]] = {
    "unconstrained": Unconstrained,
    "gs-generate-free": GramspecGenerateFree,
    "gs-generate": GramspecGenerate,
    "gs-processor": GramspecProcessor,
    "gs-processor-greedy": GramspecProcessorGreedy,
    "xgrammar": XGrammar,
    "llguidance": LLGuidance,
}


# --------------------------------------------------------------------------
# workload


def pick_schemas(root: Path, count: int, engines: dict[str, Engine]) -> tuple[list[dict[str, Any]], list[str]]:
    """The first ``count`` schemas (subsets in turn, files sorted) that every engine compiles, compiled."""
    pools = [sorted((root / s).glob("*.json")) for s in SUBSETS if (root / s).is_dir()]
    cursors = [0] * len(pools)
    picked: list[dict[str, Any]] = []
    rejected: list[str] = []
    while len(picked) < count and any(c < len(p) for c, p in zip(cursors, pools)):
        for i, pool in enumerate(pools):
            if len(picked) >= count or cursors[i] >= len(pool):
                continue
            path = pool[cursors[i]]
            cursors[i] += 1
            name = f"{path.parent.name}/{path.name}"
            schema = json.loads(path.read_text(encoding="utf-8"))["schema"]
            compiled, compile_ms = {}, {}
            for engine_name, engine in engines.items():
                if not engine.constrained:
                    continue
                start = time.perf_counter()
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        compiled[engine_name] = engine.compile(schema)
                except Exception as exc:  # noqa: BLE001  (any engine may refuse any schema)
                    rejected.append(f"{name}: {engine_name}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
                    break
                compile_ms[engine_name] = (time.perf_counter() - start) * 1e3
            else:
                picked.append({"name": name, "schema": schema, "compiled": compiled, "compile_ms": compile_ms})
                note(f"  schema {name}: " + ", ".join(f"{k} {v:.0f} ms" for k, v in compile_ms.items()))
    return picked, rejected


def check_output(ctx: dict[str, Any], schema: Any, tokens: list[int]) -> tuple[str, str]:
    """('valid' | 'truncated' | 'INVALID', text)."""
    from gramspec.generation import validate

    eos = ctx["eos"]
    end = next((i for i, t in enumerate(tokens) if t in eos), None)
    text_tokens = tokens if end is None else tokens[:end]
    text = ctx["vocab"].decode(text_tokens).decode("utf-8", errors="replace")
    if end is None:
        return "truncated", text
    ok, _, _ = validate("schema", schema, text)
    return ("valid" if ok else "INVALID"), text


# --------------------------------------------------------------------------
# report


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    tokens = sum(len(r["tokens"]) for r in runs)
    seconds = sum(r["seconds"] for r in runs)
    decode_tokens = sum(max(len(r["tokens"]) - 1, 0) for r in runs)
    decode_seconds = sum(r["decode_seconds"] for r in runs)
    out: dict[str, Any] = {
        "generations": len(runs),
        "tokens": tokens,
        "tokens_per_generation": tokens / len(runs) if runs else 0,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds if seconds else None,
        "decode_ms_per_token": 1e3 * decode_seconds / decode_tokens if decode_tokens else None,
        "constraint_ms_per_token": 1e3 * sum(r["constraint_seconds"] for r in runs) / tokens if tokens else None,
        "gc_ms_per_token": 1e3 * sum(r["gc_seconds"] for r in runs) / tokens if tokens else None,
        "constraint_gc_ms_per_token": 1e3 * sum(r["constraint_gc_seconds"] for r in runs) / tokens
        if tokens and all("constraint_gc_seconds" in r for r in runs)
        else None,
        "decode_ms_per_token_median_of_runs": statistics.median(
            1e3 * r["decode_seconds"] / (len(r["tokens"]) - 1) for r in runs if len(r["tokens"]) > 1
        )
        if any(len(r["tokens"]) > 1 for r in runs)
        else None,
    }
    for key in ("full_masks", "fast_path_hits"):
        if any(key in r for r in runs):
            out[key] = sum(r.get(key, 0) for r in runs)
    outcomes = [r["outcome"] for r in runs if "outcome" in r]
    if outcomes:
        out["outcomes"] = {k: outcomes.count(k) for k in ("valid", "truncated", "INVALID")}
    same = [r["same_tokens_as_gs_processor"] for r in runs if "same_tokens_as_gs_processor" in r]
    if same:
        out["same_tokens_as_gs_processor"] = f"{sum(same)}/{len(same)}"
    return out


def fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render(report: dict[str, Any]) -> str:
    p, res = report["parameters"], report["engines"]
    lines = [
        (
            f"bench_generate: SmolLM2-135M-Instruct, CPU, torch threads {p['torch_threads']}, greedy, "
            f"{len(report['workload']['schemas'])} schemas x {len(p['prompts'])} prompts, "
            f"max_new_tokens {p['max_new_tokens']}, JSON whitespace {p['whitespace']}"
        ),
        (
            f"machine: {report['machine'].get('cpu')}, {report['machine'].get('cpus_usable')} usable cores, "
            f"load average at start {report['machine'].get('load_average_at_start')}"
        ),
        "",
    ]
    base = res.get("unconstrained", {}).get("decode_ms_per_token")
    free = res.get("gs-generate-free", {}).get("decode_ms_per_token")
    rows = []
    for name, r in res.items():
        d = r["decode_ms_per_token"]
        own_base = free if name in ("gs-generate",) else base
        rows.append([
            name, r["generations"], r["tokens"], r["tokens_per_s"], d, r["constraint_ms_per_token"],
            (d - own_base) if d is not None and own_base else None,
            f"{100 * (d / own_base - 1):+.1f}%" if d is not None and own_base else "-",
            f"{100 * (d / base - 1):+.1f}%" if d is not None and base else "-",
            r["gc_ms_per_token"], r["constraint_gc_ms_per_token"],
            r.get("full_masks", "-"), r.get("fast_path_hits", "-"),
            "/".join(str(r["outcomes"][k]) for k in ("valid", "truncated", "INVALID")) if "outcomes" in r else "-",
            r.get("same_tokens_as_gs_processor", "-"),
        ])
    lines.append(table(
        ["engine", "gens", "tokens", "tok/s", "decode ms/tok", "constraint ms/tok", "delta ms/tok", "overhead",
         "vs unconstr.", "gc ms/tok", "gc in constraint", "full masks", "fast hits", "valid/trunc/INVALID", "same tokens"],
        rows,
    ))
    lines.append(
        "decode ms/tok: from the first logits call (prompt forward done) to the end, per later token; "
        "constraint ms/tok: time inside the constraint (processor call, or gramspec.generate's choose+advance) per token; "
        "overhead: decode ms/tok over the engine's own baseline (gs-generate vs gs-generate-free, the others vs unconstrained); "
        "gc ms/tok: Python's garbage-collection pauses during the generations (a full collection scans every object of "
        "the process: torch's and transformers' too), and those inside the processor's calls (counted in its constraint "
        "time; gramspec.generate's are not told apart)."
    )
    ratio_rows = []
    for g in GRAMSPEC:
        for peer in PEERS:
            if g in res and peer in res:
                a, b = res[g], res[peer]
                without_gc = [
                    r["constraint_ms_per_token"] - r["constraint_gc_ms_per_token"]
                    if r["constraint_gc_ms_per_token"] is not None else None
                    for r in (a, b)
                ]
                ratio_rows.append([
                    f"{g} / {peer}",
                    a["decode_ms_per_token"] / b["decode_ms_per_token"],
                    a["constraint_ms_per_token"] / b["constraint_ms_per_token"] if b["constraint_ms_per_token"] else None,
                    without_gc[0] / without_gc[1] if None not in without_gc and without_gc[1] else None,
                    b["tokens_per_s"] / a["tokens_per_s"],
                ])
    if ratio_rows:
        lines.append("")
        lines.append("Ratios gramspec / peer (>1: gramspec slower)")
        lines.append(table(["pair", "decode ms/tok", "constraint ms/tok", "constraint w/o gc", "1 / tok/s"], ratio_rows))
    compile_rows = [
        [s["name"], *(s["compile_ms"].get(e) for e in report["compile_engines"])] for s in report["workload"]["schemas"]
    ]
    lines.append("")
    lines.append("Compile ms per schema (before the generations; gramspec's may come from its on-disk grammar cache)")
    lines.append(table(["schema", *report["compile_engines"]], compile_rows))
    if report.get("skipped"):
        lines.append("")
        lines.extend(f"skipped: {s}" for s in report["skipped"])
    if report["workload"].get("rejected"):
        lines.append(f"schemas left out (an engine did not compile them): {len(report['workload']['rejected'])}")
        lines.extend(f"  {r}" for r in report["workload"]["rejected"][:10])
    if report.get("problems"):
        lines.append("")
        lines.append("PROBLEMS:")
        lines.extend(f"  {x}" for x in report["problems"])
    return "\n".join(lines)


# --------------------------------------------------------------------------
# main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="End-to-end constrained generation speed on SmolLM2 (CPU, greedy), with peers.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--schemas", type=int, default=4, help="MaskBench schemas (the first every engine compiles)")
    parser.add_argument("--prompts", type=int, default=3, help=f"prompts per schema (at most {len(PROMPTS)})")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument(
        "--whitespace", choices=("flexible", "compact"), default="flexible",
        help="JSON whitespace for every engine: flexible (the peers' default; gramspec whitespace='flexible') "
        "or compact (gramspec's default; xgrammar any_whitespace=False, separators (',', ':'); "
        "llguidance whitespace_flexible=False)",
    )
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"from {ENGINES} (missing peers are skipped)")
    parser.add_argument("--shared", default=None, help="the shared/ folder (default $GRAMSPEC_SHARED or ../shared)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON results file")
    parser.add_argument("--quick", action="store_true", help="2 schemas x 1 prompt, max_new_tokens 32 (about a minute)")
    args = parser.parse_args(argv)
    if args.quick:
        args.schemas, args.prompts, args.max_new_tokens = min(args.schemas, 2), 1, min(args.max_new_tokens, 32)
    args.prompts = max(1, min(args.prompts, len(PROMPTS)))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    root = shared_path(args.shared) / "maskbench-dev"
    if not root.is_dir():
        raise SystemExit(f"{root} not found: pass --shared or set $GRAMSPEC_SHARED")
    names = [e.strip() for e in args.engines.split(",") if e.strip()]
    if set(names) - set(ENGINES):
        raise SystemExit(f"--engines must name some of {ENGINES}")

    import gramspec
    from gramspec.generation import _eos_ids, _model_vocab_size
    from gramspec.plugins.hf import vocabulary_for

    start = time.perf_counter()
    model, tokenizer = gramspec.load_default()
    load_s = time.perf_counter() - start
    eos = _eos_ids(model, tokenizer)
    vocab_size = _model_vocab_size(model)
    ctx: dict[str, Any] = {
        "model": model, "tokenizer": tokenizer, "eos": eos, "vocab_size": vocab_size,
        "pad_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos),
        "max_new_tokens": args.max_new_tokens,
        "whitespace": args.whitespace,
        "vocab": vocabulary_for(tokenizer, vocab_size=vocab_size, eos_token_ids=eos),
        "gc": GcWatch(),  # installed for the measured generations
    }
    report: dict[str, Any] = {
        "benchmark": "bench_generate",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),
        "parameters": {
            "model": "SmolLM2-135M-Instruct (gramspec.load_default, float32)",
            "torch_threads": torch.get_num_threads(),
            "decoding": "greedy (do_sample=False, one beam), batch size 1",
            "max_new_tokens": args.max_new_tokens,
            "whitespace": args.whitespace,
            "prompts": PROMPTS[: args.prompts],
            "engines": names,
            "quick": args.quick,
            "model_load_s": load_s,
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
        },
        "skipped": [],
        "problems": [],
    }
    engines: dict[str, Engine] = {}
    for name in names:
        try:
            engines[name] = ENGINE_CLASSES[name](ctx)
        except Skip as exc:
            report["skipped"].append(f"{name}: {exc}")
            note(f"{name} skipped: {exc}")
    report["compile_engines"] = [n for n, e in engines.items() if e.constrained]

    note("picking schemas")
    schemas, rejected = pick_schemas(root, args.schemas, engines)
    if not schemas:
        raise SystemExit("no schema compiled with every engine")
    report["workload"] = {
        "schemas": [{"name": s["name"], "compile_ms": s["compile_ms"]} for s in schemas],
        "rejected": rejected,
    }

    # warm-up (first forward passes, first processor calls), not counted
    warm_messages = [{"role": "user", "content": "Hi."}]
    warm_batch = tokenizer.apply_chat_template(warm_messages, add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)
    with torch.inference_mode():
        model.generate(**warm_batch, max_new_tokens=4, do_sample=False, pad_token_id=ctx["pad_id"])
    # and each engine's one-time costs in a process (vocabulary tables, kernels
    # loaded or compiled), on a schema of its own so that no mask cache is warmed
    warm_schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    ctx["max_new_tokens"] = 4
    for name, engine in engines.items():
        try:
            engine.generate(engine.compile(warm_schema), warm_schema, warm_messages, warm_batch)
        except Exception as exc:  # noqa: BLE001  (an engine that fails here fails in the runs too, reported there)
            note(f"{name}: warm-up failed: {type(exc).__name__}: {exc}")
    ctx["max_new_tokens"] = args.max_new_tokens

    ctx["gc"].install()
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in engines}
    order = list(engines)
    cell = 0
    total = len(schemas) * args.prompts
    t0 = time.perf_counter()
    for s in schemas:
        for prompt in PROMPTS[: args.prompts]:
            messages = [{"role": "user", "content": prompt}]
            batch = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                  return_dict=True)
            rotated = order[cell % len(order):] + order[: cell % len(order)]  # spread drift in machine load
            cell_runs: dict[str, dict[str, Any]] = {}
            for name in rotated:
                engine = engines[name]
                try:
                    run = engine.generate(s["compiled"].get(name), s["schema"], messages, batch)
                except Exception as exc:  # noqa: BLE001
                    report["problems"].append(f"{name} on {s['name']}: {type(exc).__name__}: {exc}")
                    report.setdefault("tracebacks", []).append(traceback.format_exc())
                    continue
                run.update(schema=s["name"], prompt=prompt)
                if engine.constrained:
                    run["outcome"], run["text"] = check_output(ctx, s["schema"], run["tokens"])
                    if run["outcome"] == "INVALID":
                        report["problems"].append(f"{name} on {s['name']}: INVALID output {run['text'][:200]!r}")
                cell_runs[name] = run
                runs[name].append(run)
            ref = cell_runs.get("gs-processor")
            if ref is not None:
                for name in ("gs-generate", "gs-processor-greedy"):
                    if name in cell_runs:
                        same = cell_runs[name]["tokens"] == ref["tokens"]
                        cell_runs[name]["same_tokens_as_gs_processor"] = same
                        if not same:
                            report["problems"].append(f"{name} on {s['name']} / {prompt!r}: tokens differ from gs-processor")
            cell += 1
            note(f"  {cell}/{total} cells, {time.perf_counter() - t0:.0f} s")
    ctx["gc"].remove()
    report["gc"] = ctx["gc"].summary()
    report["generation_seconds"] = time.perf_counter() - t0
    report["engines"] = {n: summarize(r) for n, r in runs.items() if r}
    report["runs"] = {n: [{k: v for k, v in r.items()} for r in rs] for n, rs in runs.items()}

    text = render(report)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    note(f"results written to {out}")
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
