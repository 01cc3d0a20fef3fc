"""bench/instructions.py: every operation it counts still runs (valgrind itself is not needed)."""

from __future__ import annotations

import pytest

from bench import instructions


@pytest.mark.parametrize("operation", instructions.OPERATIONS)
def test_each_operation_runs(operation: str) -> None:
    instructions.run_operation(operation, 10)


def test_unknown_operations_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        instructions.main(["warm", "nonsense"])
    assert exit_info.value.code == 2
    assert "unknown operation(s) ['nonsense']" in capsys.readouterr().err
