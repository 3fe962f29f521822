"""The web dashboard at /ui/: watch, submit and cancel agent runs in a browser.

Server-rendered pages (Jinja2, Markdown by markdown-it-py), one small script
of our own (no JavaScript library, nothing to build), a cookie session of its
own. Everything ships in this package: it works with no internet.
"""

from app.api.ui.routes import router

__all__ = ["router"]
