"""One atheris (libFuzzer) harness per target: ``python -m tests.fuzz.harness TARGET [ARGS]``.

ARGS are libFuzzer's (a corpus directory, ``-max_total_time=60``...).  Only
PPCP's own modules are instrumented for coverage.  Normally started by
``python -m tests.fuzz.run`` (``make fuzz``), which seeds the corpus and
collects the statistics.
"""

from __future__ import annotations

import sys


def main() -> None:
    import atheris

    if len(sys.argv) < 2:
        sys.exit("usage: python -m tests.fuzz.harness TARGET [libFuzzer args]")
    name = sys.argv[1]
    with atheris.instrument_imports(include=["ppcp", "tests.fuzz"]):
        from tests.fuzz import targets

    target = targets.TARGETS[name]
    targets.conversation()  # build the genuine handshake once, outside the timed runs
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
