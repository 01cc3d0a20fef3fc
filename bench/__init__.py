"""PPCP benchmark harness: ``make bench`` / ``make bench-smoke`` (see bench/README.md)."""
