"""The command line, without a model."""

from __future__ import annotations

import subprocess
import sys

import pytest

import gramspec
from gramspec.cli import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"gramspec {gramspec.__version__}"


def test_help_lists_generate(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "generate" in capsys.readouterr().out


def test_generate_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["generate", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--model", "--max-new-tokens", "--temperature", "--seed", "--unlisted-keys"):
        assert option in out


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: gramspec" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args",
    [
        ["generate", "--max-new-tokens", "0", "hi"],
        ["generate", "--temperature", "-1", "hi"],
        ["generate", "--temperature", "nan", "hi"],
        ["generate"],
        ["nonsense"],
        ["generate", "--num-draft-tokens", "-1", "hi"],
        ["generate", "--num-draft-tokens", "many", "hi"],
        ["generate", "--drafter", "grammar+telepathy", "hi"],
        ["generate", "--unlisted-keys", "strict", "hi"],
    ],
)
def test_bad_arguments(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_unlisted_keys_needs_a_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "--unlisted-keys", "forbid", "--regex", "a+", "hi"]) == 1  # before loading a model
    assert "--unlisted-keys is an option of --schema" in capsys.readouterr().err


def test_missing_model_is_a_clean_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "--model", "/no/such/model.gguf", "hi"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gramspec: error:")
    assert "/no/such/model.gguf" in err


def test_console_script_is_fast_and_light() -> None:
    """`gramspec --help` and `import gramspec` do not import torch."""
    code = (
        "import sys\n"
        "from gramspec.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "generate" in result.stdout
