"""Typeset the formulas in the search page's snippets.

Sphinx's search shows, under each result, about 240 characters of the page's text. That text holds
the formulas as their TeX source (``\\(\\mathbf{x}\\)``), because MathJax typesets a page in the browser
and the search reads the page as written. This extension loads the book's MathJax on the search page,
with ``search_math.js``, which typesets each snippet's formulas and drops one cut in half at either end.
"""

import json


def _search_page(app, pagename, templatename, context, doctree):
    if pagename != "search":
        return
    if app.config.mathjax3_config:
        app.builder.add_js_file("", body=f"window.MathJax = {json.dumps(app.config.mathjax3_config)}")
    app.builder.add_js_file(app.config.mathjax_path, defer="defer")
    app.builder.add_js_file("search_math.js", defer="defer")  # after searchtools.js, which defines Search


def setup(app):
    app.connect("html-page-context", _search_page)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
