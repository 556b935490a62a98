"""Hugging Face Spaces entry point: `python app.py` serves the app on 0.0.0.0:7860 (see `python -m app --help`)."""

import os
import sys

from app.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["--host", os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"), *sys.argv[1:]]))
