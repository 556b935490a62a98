"""Files the page refuses before the editor takes them, said in the page in words (a script for `<head>`).

Two kinds of upload never reach a server handler, so no `gr.Error` can speak for them:

- a file over gradio's upload limit (`launch(max_file_size=...)`, `editor.MAX_UPLOAD_MB`): the
  ImageEditor loads it into its canvas, then its export to the server is refused (HTTP 413) or never
  happens, and the only trace is in the browser's console;
- a file the browser cannot decode (a damaged image, a PDF renamed .png): the editor's canvas cannot
  show it, so nothing is sent and a later Search says "there is no query image".

The script below listens, before the editor does, to files chosen, dropped or pasted on the editor
(`#vfs-editor`): one over the limit is stopped there; every file is decoded once by the browser
(`createImageBitmap`) and one that cannot be is named. Either way a message (`#vfs-upload-refused`,
role "alert") appears above the editor and says what to do; the next file that is taken removes it.
No gradio here: `app.ui.launch` passes `head()` to gradio.
"""

from __future__ import annotations

import json

from app.editor import MAX_SIDE, MAX_UPLOAD_MB

EDITOR = "#vfs-editor"  # the painted editor's elem_id (app.search_tab)
MESSAGE_ID = "vfs-upload-refused"
SHOWN = ("PNG", "JPEG", "WEBP", "GIF", "BMP")  # what a browser's canvas shows (the server reads TIFF too)


def too_large(name: str = "{name}", size_mb: str = "{size}") -> str:
    return (f"{name} is {size_mb} MB; the upload limit is {MAX_UPLOAD_MB} MB: save it smaller (as JPEG, or "
            f"downscaled to about {MAX_SIDE} px on the longer side, which is plenty) and upload that")


def unreadable(name: str = "{name}") -> str:
    return (f"{name} cannot be shown: it is not an image a browser can show ({', '.join(SHOWN)}), or it is "
            "damaged. A PDF or a document renamed to .png is not an image: export a PNG or JPEG and upload that")


SCRIPT = """
(() => {
  const EDITOR = %(editor)s, ID = %(id)s, LIMIT = %(limit)d * 1024 * 1024;
  const TOO_LARGE = %(too_large)s, UNREADABLE = %(unreadable)s;
  const say = (editor, text) => {
    let box = document.getElementById(ID);
    if (!text) { if (box) box.remove(); return; }
    if (!box) {
      box = document.createElement("div");
      box.id = ID;
      box.setAttribute("role", "alert");
      box.style.cssText = "color: var(--error-text-color, #b91c1c); background: var(--error-background-fill, #fef2f2);" +
        "border: 1px solid var(--error-border-color, #fca5a5); border-radius: 6px; padding: 6px 10px; margin: 4px 0;";
      editor.parentElement.insertBefore(box, editor);
    }
    box.textContent = text;
  };
  const fill = (template, file) => template.replace("{name}", JSON.stringify(file.name || "this file"))
    .replace("{size}", (file.size / 1024 / 1024).toFixed(1));
  const check = (event, files) => {
    const editor = event.target instanceof Element && event.target.closest(EDITOR);
    if (!editor || !files || !files.length) return;
    const file = files[0];
    if (file.size > LIMIT) {
      event.preventDefault();
      event.stopPropagation();  // the editor never takes it
      if (event.target instanceof HTMLInputElement) event.target.value = "";
      say(editor, fill(TOO_LARGE, file));
      return;
    }
    say(editor, "");
    createImageBitmap(file).then((bitmap) => bitmap.close(), () => say(editor, fill(UNREADABLE, file)));
  };
  document.addEventListener("change", (event) => {
    if (event.target instanceof HTMLInputElement && event.target.type === "file") check(event, event.target.files);
  }, true);
  document.addEventListener("drop", (event) => check(event, event.dataTransfer && event.dataTransfer.files), true);
  document.addEventListener("paste", (event) => check(event, event.clipboardData && event.clipboardData.files), true);
})();
"""


def head() -> str:
    """The `<script>` for gradio's `launch(head=...)`."""
    script = SCRIPT % {
        "editor": json.dumps(EDITOR),
        "id": json.dumps(MESSAGE_ID),
        "limit": MAX_UPLOAD_MB,
        "too_large": json.dumps(too_large()),
        "unreadable": json.dumps(unreadable()),
    }
    return f"<script>{script}</script>"
