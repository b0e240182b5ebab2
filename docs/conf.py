"""Sphinx configuration: the guide pages are Markdown (MyST), the API
reference comes from the docstrings (autodoc, Google style through napoleon).
Built by .ci/parts/30-docs with warnings as errors."""
import poolguard

project = "poolguard"
copyright = "the poolguard authors (MIT License)"
release = poolguard.__version__
version = release

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autoclass_content = "class"          # constructor arguments: in the class docstring
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

myst_heading_anchors = 3             # #anchors of ## and ### headings, as on GitHub

html_theme = "furo"
html_title = f"poolguard {release}"
