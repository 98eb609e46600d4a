"""Every example in the README's "Embedding the daemon" section runs, as written, against a daemon."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import RunningDaemon

README = Path(__file__).resolve().parent.parent / "README.md"


def examples() -> list[tuple[str, str]]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Embedding the daemon", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(python|sh)\n(.*?)```", section, flags=re.S)


def test_the_section_has_python_openai_and_curl_examples() -> None:
    found = examples()
    assert [lang for lang, _ in found] == ["python", "python", "sh"]
    assert "import openai" in found[1][1] and "curl" in found[2][1]


@pytest.mark.parametrize("index", range(3), ids=["client", "openai", "curl"])
def test_example_runs(daemon: RunningDaemon, index: int) -> None:
    lang, code = examples()[index]
    env = {**os.environ, "RLHI_HOME": str(daemon.home),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = [sys.executable, "-c", code] if lang == "python" else ["bash", "-euo", "pipefail", "-c", code]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()
    if index == 2:
        first, _ = json.JSONDecoder().raw_decode(out.stdout)
        assert first["choices"][0]["message"]["content"]
        assert first["rlhi"]["conversation_id"] == "from-curl"
        assert "data: [DONE]" in out.stdout
