"""Write each inline script of a page once.

Sphinx 7.4 registers a body-only script (``app.add_js_file(None, body=...)``) twice when an extension
adds it after the builder starts: once under the name ``None`` and again under ``''``. sphinx-thebe's
``const THEBE_JS_URL = ...`` then runs twice, and the browser reports a redeclaration error on every page.
"""


def _unique(app, pagename, templatename, context, doctree):
    seen, unique = set(), []
    for script in context.get("script_files", []):
        key = (script.filename or "", script.priority, tuple(sorted(script.attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app):
    app.connect("html-page-context", _unique, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
