"""Generation engines for the JSONSchemaBench runner: gramspec and its peers.

Every engine compiles a schema (timed by the runner) and then generates one
reply for a prompt, reporting the tokens, the text, how generation ended and
when the first token came. Engines:

``gramspec``        :func:`gramspec.generate` (its own decode loop, opportunistic
                    masking; optionally a drafter and aligned sampling):
                    ``gramspec[grammar+ngram]`` names the drafter
``gramspec-forbid`` the same with ``unlisted_keys="forbid"`` (no object keys beyond
                    the listed ones where the schema says nothing of them,
                    as xgrammar's strict mode; docs/json_schema.md)
``unconstrained``   ``model.generate`` without a constraint (the reference the
                    paper compares with)
``xgrammar``        ``model.generate`` + ``xgrammar.contrib.hf.LogitsProcessor``
``llguidance``      ``model.generate`` + :class:`LLGuidanceProcessor` (llguidance
                    ships no transformers processor)
``outlines``        ``model.generate`` + :class:`OutlinesProcessor` (outlines-core's
                    regex index of the schema)

Peers are optional (``pip install 'gramspec[peers]'``); :func:`make_engine`
raises :class:`EngineUnavailable` for one that is not installed. All engines
get the same JSON whitespace: compact by default (xgrammar
``any_whitespace=False`` and separators ``(",", ":")``, llguidance
``whitespace_flexible=False``, outlines-core an empty whitespace pattern).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers import LogitsProcessor
from transformers.generation.streamers import BaseStreamer

from gramspec.errors import (
    GramspecError,
)
from gramspec.evaluation.metrics import CompileStatus, Finish
from gramspec.plugins.mask import apply_token_bitmask

Whitespace = Literal["compact", "flexible"]
PEERS: tuple[str, ...] = ("xgrammar", "llguidance", "outlines")
#: gramspec's engines, by the ``unlisted_keys`` option they compile schemas with.
GRAMSPEC_ENGINES: dict[str, str] = {"gramspec": "schema", "gramspec-forbid": "forbid"}


class EngineUnavailable(GramspecError, RuntimeError):
    """An engine whose package is not installed (or cannot serve this tokenizer)."""


@dataclass
class Target:
    """The model every engine generates with, and what they share about it."""

    model: Any
    tokenizer: Any
    eos_ids: frozenset[int]
    vocab_size: int  # the model's number of logits

    @classmethod
    def of(cls, model: Any, tokenizer: Any) -> Target:
        from gramspec.generation import _eos_ids, _model_vocab_size

        return cls(model, tokenizer, _eos_ids(model, tokenizer), _model_vocab_size(model) or len(tokenizer))

    @property
    def context_length(self) -> int | None:
        value = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        return int(value) if value else None

    def vocabulary(self) -> Any:
        from gramspec.plugins.hf import vocabulary_for

        return vocabulary_for(self.tokenizer, vocab_size=self.vocab_size, eos_token_ids=self.eos_ids)


@dataclass
class Generation:
    tokens: list[int]  # generated, EOS included when generated
    text: str
    finish: Finish
    first_token_s: float | None  # from the start of generation
    seconds: float
    stats: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 256
    max_time: float | None = 60.0
    temperature: float = 0.0  # 0: greedy
    seed: int = 0


class Engine:
    """Compile a schema, then generate under it."""

    name = ""
    constrained = True

    def __init__(self, target: Target, whitespace: Whitespace = "compact") -> None:
        self.target, self.whitespace = target, whitespace

    def compile(self, schema: Any, *, timeout: float) -> Any:
        """The engine's compiled form of ``schema``; raises when it cannot."""
        raise NotImplementedError

    def compile_status(self, error: BaseException) -> CompileStatus:
        """How to report a compile failure (peers raise untyped errors)."""
        return "error"

    def generate(self, compiled: Any, schema: Any, messages: Sequence[Mapping[str, str]], prompt_ids: list[int],
                 sampling: Sampling) -> Generation:
        raise NotImplementedError


class GramspecEngine(Engine):
    """:func:`gramspec.generate` with a drafter and aligned-sampling mode of choice."""

    def __init__(self, target: Target, whitespace: Whitespace = "compact", *, drafter: str | None = None,
                 num_draft_tokens: int | str = 4, aligned: str | None = None, unlisted_keys: str = "schema") -> None:
        super().__init__(target, whitespace)
        self.drafter, self.num_draft_tokens, self.aligned = drafter, num_draft_tokens, aligned
        self.unlisted_keys = unlisted_keys
        self.name = next(name for name, mode in GRAMSPEC_ENGINES.items() if mode == unlisted_keys)
        if drafter is not None:
            self.name += f"[{drafter}]"
        if aligned is not None:
            self.name += f"[{aligned}]"
        self._compile_options: dict[str, Any] = {"whitespace": whitespace, "unlisted_keys": unlisted_keys}
        # per-tokenizer preparation (vocabulary bytes, token table), as the peers do theirs at setup
        from gramspec.grammars.json_schema import compile_json_schema

        compile_json_schema({"type": "boolean"}, target.vocabulary()).matcher().allowed_tokens()

    def compile(self, schema: Any, *, timeout: float) -> Any:
        from gramspec.plugins.hf import compile_constraint

        # what gramspec.generate compiles, and then finds in its in-memory cache
        self._compile_options = {"whitespace": self.whitespace, "max_seconds": timeout, "unlisted_keys": self.unlisted_keys}
        return compile_constraint("schema", schema, self.target.vocabulary(), **self._compile_options)

    def compile_status(self, error: BaseException) -> CompileStatus:
        from gramspec.evaluation.conformance import compile_error_status

        status = compile_error_status(error)  # gramspec's typed errors, as the conformance runs report them
        return "error" if status == "crash" else status  # type: ignore[return-value]

    def generate(self, compiled: Any, schema: Any, messages: Sequence[Mapping[str, str]], prompt_ids: list[int],
                 sampling: Sampling) -> Generation:
        from gramspec.generation import generate

        result = generate(
            self.target.model, self.target.tokenizer, messages, schema=schema,
            max_new_tokens=sampling.max_new_tokens, max_time=sampling.max_time,
            temperature=sampling.temperature, seed=sampling.seed, compile_options=self._compile_options,
            drafter=self.drafter, num_draft_tokens=self.num_draft_tokens, aligned=self.aligned,  # type: ignore[arg-type]
        )
        return Generation(result.token_ids, result.text, result.finish_reason,
                          result.stats.get("first_token_us", 0) / 1e6, result.seconds, dict(result.stats))


class FirstTokenClock(BaseStreamer):
    """A streamer that notes when ``model.generate`` emits its first new token."""

    def __init__(self) -> None:
        self.calls = 0
        self.first: float | None = None

    def put(self, value: Any) -> None:
        self.calls += 1  # the first call carries the prompt
        if self.calls == 2:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


class HFEngine(Engine):
    """``model.generate`` with a logits processor (None: unconstrained)."""

    def processor(self, compiled: Any) -> LogitsProcessor | None:
        raise NotImplementedError

    def generate(self, compiled: Any, schema: Any, messages: Sequence[Mapping[str, str]], prompt_ids: list[int],
                 sampling: Sampling) -> Generation:
        target = self.target
        processor = self.processor(compiled)
        clock = FirstTokenClock()
        pad = target.tokenizer.pad_token_id
        options: dict[str, Any] = {"do_sample": False}
        if sampling.temperature > 0:
            torch.manual_seed(sampling.seed)
            options = {"do_sample": True, "temperature": sampling.temperature, "top_k": 0, "top_p": 1.0}
        ids = torch.tensor([prompt_ids], dtype=torch.long, device=next(target.model.parameters()).device)
        start = time.perf_counter()
        with torch.inference_mode():
            out = target.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=sampling.max_new_tokens,
                max_time=sampling.max_time, logits_processor=[processor] if processor is not None else None,
                streamer=clock, pad_token_id=pad if pad is not None else min(target.eos_ids),
                eos_token_id=sorted(target.eos_ids), **options,
            )
        seconds = time.perf_counter() - start
        tokens = [int(t) for t in out[0, len(prompt_ids):]]
        if tokens and tokens[-1] in target.eos_ids:
            finish: Finish = "eos"
        elif len(tokens) >= sampling.max_new_tokens:
            finish = "length"
        else:
            finish = "time"
        text = target.tokenizer.decode([t for t in tokens if t not in target.eos_ids], skip_special_tokens=True)
        first = None if clock.first is None else clock.first - start
        return Generation(tokens, text, finish, first, seconds)


class Unconstrained(HFEngine):
    name, constrained = "unconstrained", False

    def compile(self, schema: Any, *, timeout: float) -> Any:
        return None

    def processor(self, compiled: Any) -> LogitsProcessor | None:
        return None


class XGrammarSetup:
    """xgrammar's per-tokenizer compiler and its JSON Schema compile (shared with the MaskBench walker)."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: Iterable[int], whitespace: Whitespace) -> None:
        try:
            import xgrammar
            import xgrammar.contrib.hf
        except ImportError as exc:
            raise EngineUnavailable(f"xgrammar is not installed ({exc}): pip install 'gramspec[peers]'") from exc
        self.xgr, self.whitespace = xgrammar, whitespace
        info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(eos_ids))
        self.compiler = xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False)

    def compile(self, schema: Any) -> Any:
        text = json.dumps(schema)
        if self.whitespace == "flexible":
            return self.compiler.compile_json_schema(text)
        return self.compiler.compile_json_schema(text, any_whitespace=False, separators=(",", ":"))


class XGrammarEngine(HFEngine):
    name = "xgrammar"

    def __init__(self, target: Target, whitespace: Whitespace = "compact") -> None:
        super().__init__(target, whitespace)
        self.peer = XGrammarSetup(target.tokenizer, target.vocab_size, target.eos_ids, whitespace)

    def compile(self, schema: Any, *, timeout: float) -> Any:
        return self.peer.compile(schema)

    def processor(self, compiled: Any) -> LogitsProcessor | None:
        return self.peer.xgr.contrib.hf.LogitsProcessor(compiled)  # type: ignore[no-any-return]


class LLGuidanceProcessor(LogitsProcessor):
    """One generation, batch size 1: llguidance's matcher behind the transformers interface."""

    def __init__(self, tokenizer: Any, grammar: str, vocab_size: int) -> None:
        import llguidance
        import llguidance.torch

        self._fill = llguidance.torch.fill_next_token_bitmask
        self.matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        if self.matcher.is_error():
            raise ValueError(self.matcher.get_error())
        self.bitmask = torch.full((1, (vocab_size + 31) // 32), -1, dtype=torch.int32)
        self.started = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.started and not self.matcher.consume_token(int(input_ids[0, -1])):
            raise RuntimeError(f"llguidance rejected its own token: {self.matcher.get_error()}")
        self.started = True
        self._fill(self.matcher, self.bitmask, 0)
        return apply_token_bitmask(scores, self.bitmask)  # type: ignore[return-value]


class LLGuidanceSetup:
    """llguidance's per-tokenizer state and its JSON Schema compile (shared with the MaskBench walker)."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: Iterable[int], whitespace: Whitespace) -> None:
        try:
            import llguidance
            import llguidance.hf
            import llguidance.torch
        except ImportError as exc:
            raise EngineUnavailable(f"llguidance is not installed ({exc}): pip install 'gramspec[peers]'") from exc
        self.ll, self.whitespace = llguidance, whitespace
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=min(eos_ids))

    def compile(self, schema: Any) -> str:
        """The grammar text of ``schema``; raises what llguidance reports about it."""
        overrides = {"whitespace_flexible": self.whitespace == "flexible"}
        grammar = self.ll.LLMatcher.grammar_from_json_schema(json.dumps(schema), overrides=overrides)  # type: ignore[arg-type]
        matcher = self.ll.LLMatcher(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise ValueError(matcher.get_error())
        return grammar  # type: ignore[no-any-return]


class LLGuidanceEngine(HFEngine):
    name = "llguidance"

    def __init__(self, target: Target, whitespace: Whitespace = "compact") -> None:
        super().__init__(target, whitespace)
        self.peer = LLGuidanceSetup(target.tokenizer, target.vocab_size, target.eos_ids, whitespace)

    def compile(self, schema: Any, *, timeout: float) -> Any:
        return self.peer.compile(schema)

    def processor(self, compiled: Any) -> LogitsProcessor | None:
        return LLGuidanceProcessor(self.peer.tokenizer, compiled, self.target.vocab_size)


class OutlinesProcessor(LogitsProcessor):
    """One generation, batch size 1: an outlines-core guide behind the transformers interface."""

    def __init__(self, index: Any, vocab_size: int) -> None:
        from outlines_core import Guide  # type: ignore[import-untyped,unused-ignore]

        self.guide = Guide(index)
        self.bitmask = torch.zeros((1, (vocab_size + 31) // 32), dtype=torch.int32)
        self.started = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.started:
            self.guide.advance(int(input_ids[0, -1]))
        self.started = True
        self.bitmask.zero_()
        self.guide.write_mask_into(self.bitmask.data_ptr(), self.bitmask.numel(), self.bitmask.element_size())
        return apply_token_bitmask(scores, self.bitmask)  # type: ignore[return-value]


class OutlinesSetup:
    """outlines-core's vocabulary (gramspec's exact bytes per id, what it matches on) and its
    JSON Schema compile (shared with the MaskBench walker)."""

    def __init__(self, vocabulary: Callable[[], Any], eos_ids: Iterable[int], whitespace: Whitespace) -> None:
        """``vocabulary()`` gives the gramspec Vocabulary (built only once outlines-core imports)."""
        try:
            import outlines_core  # type: ignore[import-untyped,unused-ignore]
            from outlines_core.json_schema import build_regex_from_schema  # type: ignore[import-untyped,unused-ignore]
        except ImportError as exc:
            raise EngineUnavailable(f"outlines-core is not installed ({exc}): pip install 'gramspec[peers]'") from exc
        self.oc, self.build_regex, self.whitespace = outlines_core, build_regex_from_schema, whitespace
        vocab = vocabulary()
        eos = set(eos_ids)
        tokens: dict[bytes, list[int]] = {}
        for token_id, data in enumerate(vocab.token_bytes):
            if data and token_id not in vocab.special_token_ids and token_id not in eos:
                tokens.setdefault(data, []).append(token_id)
        self.vocabulary = outlines_core.Vocabulary(min(eos), tokens)

    def compile(self, schema: Any) -> Any:
        regex = self.build_regex(json.dumps(schema), None if self.whitespace == "flexible" else "")
        return self.oc.Index(regex, self.vocabulary)


class OutlinesEngine(HFEngine):
    name = "outlines"

    def __init__(self, target: Target, whitespace: Whitespace = "compact") -> None:
        super().__init__(target, whitespace)
        self.peer = OutlinesSetup(target.vocabulary, target.eos_ids, whitespace)

    def compile(self, schema: Any, *, timeout: float) -> Any:
        return self.peer.compile(schema)

    def processor(self, compiled: Any) -> LogitsProcessor | None:
        return OutlinesProcessor(compiled, self.target.vocab_size)


def make_engine(name: str, target: Target, *, whitespace: Whitespace = "compact", drafter: str | None = None,
                num_draft_tokens: int | str = 4, aligned: str | None = None) -> Engine:
    """The engine called ``name``: ``gramspec``, ``gramspec-forbid``, ``unconstrained`` or a peer."""
    if name in GRAMSPEC_ENGINES:
        return GramspecEngine(target, whitespace, drafter=drafter, num_draft_tokens=num_draft_tokens, aligned=aligned,
                              unlisted_keys=GRAMSPEC_ENGINES[name])
    classes: dict[str, type[Engine]] = {
        "unconstrained": Unconstrained, "xgrammar": XGrammarEngine, "llguidance": LLGuidanceEngine,
        "outlines": OutlinesEngine,
    }
    if name not in classes:
        raise ValueError(f"unknown engine {name!r}; choose from {', '.join([*GRAMSPEC_ENGINES, *classes])}")
    return classes[name](target, whitespace)
