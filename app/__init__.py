"""The Gradio app of Visual Feature Search: `python -m app` (or `python app.py` on a Space).

`app.ui` builds the page (the only gradio import); `app.handlers`, `app.exports` and `app.compare`
are the plain functions behind it; `app.library` finds and holds the caches.
"""
