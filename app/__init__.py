"""The Gradio app of Visual Feature Search: `python -m app` (or `python app.py` on a Space).

`app.ui` builds the page (the only gradio import besides the analysis tab); `app.editor`,
`app.handlers`, `app.exports` and `app.compare` are the plain functions behind it; `app.library`
finds, opens and holds the caches (and builds the default ones on first start); `app.state` holds
the query/outcome types and the share string; `app.drawing` makes the pictures.
"""
