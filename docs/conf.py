"""Sphinx configuration of the medrecipes site: `make docs` (docs/build.py) stages the notebooks, the guide pages
(`docs/pages/*.md`, `benchmarks/README.md`) and the API pages into `_proc/` and builds `_docs/` with this file
(`sphinx-build -c docs _proc _docs`)."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))          # this checkout's medrecipes, not an installed copy
import medrecipes

project = 'medrecipes'
author = 'medrecipes developers'
release = version = medrecipes.__version__
copyright = 'medrecipes developers'

extensions = ['myst_nb', 'sphinx.ext.autodoc', 'sphinx.ext.viewcode']
source_suffix = {'.rst': 'restructuredtext', '.ipynb': 'myst-nb', '.md': 'myst-nb'}   # .md: the guide pages
root_doc = 'index'
exclude_patterns = ['.doctrees', 'jupyter_execute', 'screenshots', '**/.ipynb_checkpoints']

# myst-nb writes notebook outputs (images) to `<outdir>/../jupyter_execute`; keep them under _proc/ instead
# (an absolute path wins in its `Path.joinpath`), so a build leaves nothing beside _docs/
import myst_nb.sphinx_ext
myst_nb.sphinx_ext.OUTPUT_FOLDER = str(ROOT/'_proc'/'jupyter_execute')

# notebooks are shown with the outputs saved in them; the site build executes nothing
nb_execution_mode = 'off'
nb_merge_streams = True
nb_output_stderr = 'remove'             # warnings printed while the notebook ran are not documentation
myst_heading_anchors = 3                # README-style links ([Configs](#configs)) resolve on the home page
myst_enable_extensions = ['colon_fence']
suppress_warnings = ['myst.header', 'misc.highlighting_failure', 'myst.xref_missing']

# API reference: docstrings are written nbdev-style (Markdown backticks), so a single backtick is code
default_role = 'code'
autodoc_member_order = 'bysource'
autodoc_typehints = 'signature'
autodoc_default_options = {'member-order': 'bysource'}
autosummary_generate = False
add_module_names = False

html_theme = 'furo'
html_title = f'medrecipes {release}'
html_show_sourcelink = False
html_copy_source = False


def _docs_link(app, what, name, obj, options, lines):
    "A module docstring's `Docs: _docs/PAGE.html ...` line becomes a link to that page of this site."
    import re
    for i, line in enumerate(lines):
        m = re.match(r'^Docs: `_docs/(\S+)\.html`', line)
        if what == 'module' and m: lines[i] = f'Docs: :doc:`/{m.group(1)}`'


def setup(app):
    app.connect('autodoc-process-docstring', _docs_link)
