"""Sphinx settings for the course website; site/build.py writes the sources and runs Sphinx.

MyST-NB renders each notebook from its stored outputs (it executes nothing); Furo is the theme.
Both ship everything they need: no page loads a script, font or style from another host.
"""

project = "chatlab"
author = "chatlab"
copyright = "chatlab's authors (MIT licence)"
language = "en"

extensions = ["myst_nb"]

# The notebooks are rendered as stored, outputs and pictures included; nothing runs.
nb_execution_mode = "off"
nb_merge_streams = True
# A widget's output is a view of a model that lives in a kernel; without the kernel (and with
# no widget state stored) its text form is what can be shown. Drop the view and the scripts
# MyST-NB would otherwise load from a CDN for it; build.py adds a note under each widget.
nb_mime_priority_overrides = [
    ("html", "application/vnd.jupyter.widget-view+json", None),
    ("html", "application/javascript", None),
]
nb_ipywidgets_js = {}

myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3  # README.md#two-commands and the like lead to their heading

html_theme = "furo"
html_title = "chatlab: a course on sockets and threads"
html_copy_source = False  # the notebooks are in the repository; no second copy on the site
html_show_sourcelink = False
html_static_path = ["static"]
html_css_files = ["chatlab.css"]

# A heading that skips a level, or a code cell Pygments cannot colour, still reads well: those
# warnings are not shown. Any other warning is (a missing picture or link target, an unreadable
# notebook), and tests/browser/test_site.py fails on it.
suppress_warnings = ["myst.header", "misc.highlighting_failure"]
