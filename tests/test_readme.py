"""README.md is generated from nbs/index.ipynb and must not drift from it."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_in_step_with_index():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_readme.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_readme_names_both_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "bash scripts/demo.sh" in text and "bash scripts/test.sh" in text and "bash scripts/docs.sh" in text


def test_readme_shows_the_two_process_command():
    "The command tests/test_shipped_mp.py runs is the one the README shows."
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert 'torchrun --nproc_per_node 2 -m llama_lit generate "ROMEO:"' in text
