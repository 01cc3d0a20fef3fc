"""``python -m ppcp.cli``: the same as the ``ppcp`` console script."""

from ppcp.cli import main

main()
