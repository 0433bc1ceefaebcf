"""Copy the notebooks into a Sphinx source folder with nbdev's cell directives applied, for myst-nb.

nbdev renders docs through Quarto, which cannot be installed everywhere; this step gives the same reading of the
notebooks to Sphinx: `#| hide` cells run but are not shown, `#| eval: false` cells are shown but not run, directive
lines (`#| export`, ...) are removed from what is shown, `#| slow` cells are shown but not run (as `nbdev_test`
without `--flags slow`), the cell that re-exports the package is dropped, and
after each `#| export` cell a `show_doc` cell (its input hidden) documents every public function and class the
cell defines. Usage: python docs/prepare.py OUT_DIR"""
import ast
import re
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"


# nbdev's show_doc renders Quarto-flavoured markdown (a `---` rule, a `{target=...}` source link, a `###` heading);
# inside a notebook output MyST wants plain markdown, so the hidden first cell of every page wraps it (under its
# own name: the notebooks' `from nbdev.showdoc import *` would shadow a wrapper called show_doc).
SHOW_DOC = """import re
from IPython.display import Markdown
from nbdev.showdoc import show_doc as _nbdev_show_doc
def _site_show_doc(o):
    md = _nbdev_show_doc(o)._repr_markdown_().lstrip("-\\n")
    md = re.sub(r"\\[source\\]\\([^)]*\\)\\{[^}]*\\}\\s*", "", md)
    parts = md.split("`")  # escape < and > outside code (docstrings mention <s> and </s>)
    md = "`".join(p if i % 2 else p.replace("<", "&lt;").replace(">", "&gt;") for i, p in enumerate(parts))
    return Markdown(re.sub(r"^### (.*)$", r"**`\\1`**", md, count=1, flags=re.M))"""


def directives(src: str) -> dict:
    "nbdev directives at the top of a cell: {'hide': [], 'export': [], 'eval:': ['false'], ...}."
    out = {}
    for line in src.splitlines():
        if not line.startswith("#|"): break
        words = line[2:].split()
        if words: out[words[0].rstrip(":")] = words[1:]
    return out


def _patched_class(f: ast.FunctionDef) -> str | None:
    "The class a function is added to by `@patch` (its first parameter's annotation) or `@patch_to(Cls, ...)`."
    for d in f.decorator_list:
        if isinstance(d, ast.Name) and d.id == "patch" and f.args.args and f.args.args[0].annotation is not None:
            ann = f.args.args[0].annotation
            return ann.value if isinstance(ann, ast.Constant) else ast.unparse(ann)
        if isinstance(d, ast.Call) and getattr(d.func, "id", None) == "patch_to" and d.args:
            return ast.unparse(d.args[0])
    return None


FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)     # `async def` too: the server's handlers


def public_names(code: str) -> list[str]:
    """Public functions and classes a code cell defines, and the public methods of its classes as `Cls.method`
    (written in the class body, or added with `@patch`/`@patch_to`)."""
    try: tree = ast.parse(code)
    except SyntaxError: return []
    out = []
    for n in tree.body:
        if not isinstance(n, (*FUNCTIONS, ast.ClassDef)) or n.name.startswith("_"): continue
        owner = _patched_class(n) if isinstance(n, FUNCTIONS) else None
        if owner: out.append(f"{owner}.{n.name}"); continue
        out.append(n.name)
        if isinstance(n, ast.ClassDef):
            out += [f"{n.name}.{m.name}" for m in n.body if isinstance(m, FUNCTIONS) and not m.name.startswith("_")
                    and not any("property" in ast.unparse(d) or "setter" in ast.unparse(d) for d in m.decorator_list)]
    return out


def cell(kind: str, source: str, tags=()) -> dict:
    c = {"cell_type": kind, "metadata": {"tags": list(tags)} if tags else {}, "source": source}
    if kind == "code": c.update(outputs=[], execution_count=None)
    return c


def process(nb: dict) -> dict:
    cells = [cell("code", SHOW_DOC, ["remove-cell"])]
    for c in nb["cells"]:
        src = "".join(c["source"])
        if c["cell_type"] != "code":
            cells.append(cell(c["cell_type"], src)); continue
        d = directives(src)
        body = "\n".join(l for l in src.splitlines() if not l.startswith("#|")).strip("\n")
        if not body or "nbdev.nbdev_export()" in body: continue
        tags = []
        if "hide" in d: tags.append("remove-cell")
        if d.get("eval") == ["false"] or "slow" in d: tags.append("skip-execution")   # slow: as nbdev_test, not run
        if d.get("code-fold") == ["true"]: tags.append("hide-input")   # Quarto's folded code: a toggle in myst-nb
        body = re.sub(r"^show_doc\(", "_site_show_doc(", body, flags=re.M)
        cells.append(cell("code", body, tags))
        if "export" in d and "hide" not in d:
            for name in public_names(body):
                cells.append(cell("code", f"_site_show_doc({name})", ["remove-input"]))
    return {**nb, "nbformat": 4, "nbformat_minor": 5, "cells": cells}


def main(out: Path) -> None:
    if out.exists(): shutil.rmtree(out)
    out.mkdir(parents=True)
    chapters = sorted(f for f in NBS.glob("*.ipynb") if f.stem != "index")
    for f in sorted(NBS.glob("*.ipynb")):
        nb = process(json.loads(f.read_text(encoding="utf-8")))
        if f.stem == "index":   # the site's navigation, in chapter order
            toc = "```{toctree}\n:maxdepth: 1\n:caption: Chapters\n:hidden:\n\n" + "\n".join(c.stem for c in chapters) + "\n```"
            nb["cells"].append(cell("markdown", toc))
        for i, c in enumerate(nb["cells"]): c["id"] = f"cell-{i}"
        (out / f.name).write_text(json.dumps(nb, indent=1), encoding="utf-8")
    for f in ("conf.py",):
        shutil.copy(ROOT / "docs" / f, out / f)
    shutil.copytree(ROOT / "docs" / "_static", out / "_static")
    if (NBS / "images").is_dir(): shutil.copytree(NBS / "images", out / "images")   # figures the pages link to


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "_docs_src")
