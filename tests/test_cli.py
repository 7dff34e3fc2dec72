"""The entry points report user errors in one line, without a traceback."""

import subprocess
import sys

import pytest


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


@pytest.mark.parametrize("args,message", [
    (["ldlm", "data", "--set", "data.blok_len=64"], "unknown config key 'data.blok_len'"),
    (["ldlm", "data", "--set", "data.block_len=1"], "cannot hold one token plus EOS"),
    (["ldlm", "data", "--set", "data.block_len=x"], "expects int"),
    (["ldlm", "data", "--preset", "huge"], "unknown preset 'huge'"),
    (["ldlm", "data", "--set", "data.tfds_name=nope"], "no TFDS data set named 'nope'"),
    (["ldlm", "data", "--set", "data.source=text_folder", "--set", "data.path=/nonexistent"],
     "is not a folder"),
])
def test_user_errors_are_one_clear_line(tmp_path, args, message):
    r = _run(*args, "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_stage_without_its_input_names_the_make_target(tmp_path):
    r = _run("ldlm", "tokenizer", "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 2 and "run `make data` first" in r.stderr
    assert "Traceback" not in r.stderr
