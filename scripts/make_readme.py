"""Write README.md from nbs/index.ipynb (markdown cells as they are, code cells as fenced python,
chapter links made relative to the repository root).

nbdev's `nbdev_readme` does this through Quarto, which cannot be installed everywhere; this keeps the two in step.
`python scripts/make_readme.py --check` exits 1 if README.md is out of date."""
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def render(nb_path: Path = ROOT / "nbs" / "index.ipynb") -> str:
    cells = json.loads(nb_path.read_text(encoding="utf-8"))["cells"]
    parts = []
    for c in cells:
        src = "".join(c["source"]).strip("\n")
        if not src or src.startswith("#| hide"): continue
        parts.append(src if c["cell_type"] == "markdown" else f"```python\n{src}\n```")
    text = "\n\n".join(parts) + "\n"
    text = re.sub(r"\]\((\d\d[a-z]?_\w+\.ipynb)\)", r"](nbs/\1)", text)   # chapter links: relative to nbs/ -> to the repo root
    return re.sub(r"\]\((images/[\w.-]+)\)", r"](nbs/\1)", text)      # figures too


def main(argv):
    readme, text = ROOT / "README.md", render()
    if "--check" in argv:
        if not readme.exists() or readme.read_text(encoding="utf-8") != text:
            print("README.md is out of date: run `python scripts/make_readme.py`", file=sys.stderr)
            return 1
        return 0
    readme.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
