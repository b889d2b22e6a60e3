"""The README's examples run as they stand, so they cannot rot."""

import subprocess
import sys
from pathlib import Path

from ranvier.testing.network import free_port

README = (Path(__file__).parents[1] / "README.md").read_text("utf-8")
EXAMPLES = [block.split("```", 1)[0] for block in README.split("```python\n")[1:]]


def test_the_readme_has_both_examples():
    assert len(EXAMPLES) == 2
    assert "open_homeserver" in EXAMPLES[0]
    assert "hash_and_sign_event" in EXAMPLES[1]


def test_embedding_a_homeserver(tmp_path):
    """Run as a program of its own (it calls trio.run), on a free port."""
    port = free_port()
    code = EXAMPLES[0].replace("port = 8448\n", f"port = {port}\n")
    assert code != EXAMPLES[0]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    words = result.stdout.split()
    assert words[0] == "serving"
    assert words[1].startswith("!")
    assert words[2:] == ["on", "port", str(port)]
    # The server kept its data where the example said.
    assert (tmp_path / "ranvier-data" / "signing.key").is_file()


def test_the_protocol_example(capsys):
    exec(compile(EXAMPLES[1], "README.md", "exec"), {})
    printed = capsys.readouterr().out.split()
    assert printed[0].startswith("$")
    assert len(printed[0]) == 44
    assert printed[1:] == ["m.room.message", "hello"]
