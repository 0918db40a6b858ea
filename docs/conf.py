# Sphinx configuration for the txproxy documentation.
#
# Build (warnings are errors, as in CI):
#   python -m sphinx -W -q -b html docs docs/_build/html
#
# Only Sphinx itself is needed: the narrative is reStructuredText, the theme
# is the built-in alabaster, and the API is described by hand in
# hooks.rst (txproxy's docstrings are epytext, for pydoctor).

project = "txproxy"
author = "the txproxy developers"
copyright = "the txproxy developers"
release = "0.1.0.dev0"
version = "0.1"

extensions = []

root_doc = "index"
exclude_patterns = ["_build"]
highlight_language = "none"
pygments_style = "sphinx"

html_theme = "alabaster"
html_theme_options = {
    "description": "A proxy toolkit built on Twisted",
    "fixed_sidebar": True,
    "page_width": "1100px",
    "sidebar_width": "230px",
}
html_sidebars = {"**": ["about.html", "navigation.html", "searchbox.html"]}
html_static_path = []
html_show_sourcelink = False
