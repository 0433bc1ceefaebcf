"""nbdev's Quarto route (`nbdev_docs`, for those who have Quarto) stays usable: its config files parse, the
sidebar lists every notebook once in chapter order (the order of the Sphinx site too), and nbdev keeps it."""
import configparser
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"


def test_quarto_files_parse_and_point_at_each_other():
    quarto = yaml.safe_load((NBS / "_quarto.yml").read_text())
    assert quarto["project"]["type"] == "website"
    for f in quarto["metadata-files"]:
        assert (NBS / f).is_file(), f
    assert (NBS / quarto["format"]["html"]["css"]).is_file()
    meta = yaml.safe_load((NBS / "nbdev.yml").read_text())
    cfg = configparser.ConfigParser(); cfg.read(ROOT / "settings.ini")
    assert meta["project"]["output-dir"] == cfg["DEFAULT"]["doc_path"]
    assert meta["website"]["site-url"] == cfg["DEFAULT"]["doc_host"] + cfg["DEFAULT"]["doc_baseurl"]


def test_sidebar_is_every_chapter_in_order():
    contents = yaml.safe_load((NBS / "sidebar.yml").read_text())["website"]["sidebar"]["contents"]
    chapters = sorted(p.name for p in NBS.glob("*.ipynb") if p.stem != "index")
    assert contents == ["index.ipynb"] + chapters
    cfg = configparser.ConfigParser(); cfg.read(ROOT / "settings.ini")
    assert cfg["DEFAULT"].getboolean("custom_sidebar"), "nbdev_docs would regenerate sidebar.yml"


def test_pages_workflow_is_nbdevs():
    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "deploy.yaml").read_text())
    assert wf["jobs"]["deploy"]["steps"] == [{"uses": "fastai/workflows/quarto-ghp@master"}]
