"""Sphinx configuration for the llama_lit site: myst-nb renders the notebooks (executing them), Furo the pages,
and a vendored MathJax the formulas, so that the built site loads nothing from the network."""
project = "llama_lit"
author = "llama_lit developers"
copyright = "2026, llama_lit developers"

extensions = ["myst_nb"]
root_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
html_theme = "furo"
html_title = "llama_lit"
html_static_path = ["_static"]
html_favicon = "_static/favicon.svg"   # without one the browser asks for /favicon.ico and logs a 404

# formulas: $...$ and $$...$$ in markdown cells, rendered by the local MathJax copy
myst_enable_extensions = ["dollarmath", "amsmath"]
mathjax_path = "mathjax/tex-chtml.js"

# notebooks are committed without outputs: execute them for the site, stop on the first error
nb_execution_mode = "force"
nb_execution_timeout = 600
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True
nb_render_markdown_format = "commonmark"
suppress_warnings = ["mystnb.unknown_mime_type"]
