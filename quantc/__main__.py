"""``python -m quantc ...``: the CLI without installing the console script (e.g. on a GPU image)."""

from .cli import main

main()
