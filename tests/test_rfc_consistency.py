"""docs/rfc.md and docs/diagram.md agree with the code they describe.

* the state table equals ppcp.core.states.TRANSITIONS, row for row, both ways;
* the frame type registry lists exactly the FrameType members, with their limits;
* the close code table lists exactly the CloseCode members and the class raised for each;
* the key schedule labels and the PSK constants are the ones in the code;
* the Mermaid state diagrams are the ones generated from TRANSITIONS.

When the code changes, run ``python -m ppcp.utils.vectors --update`` to
regenerate the state table and diagrams; the registry tables are hand-written.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ppcp.control import exec as exec_service
from ppcp.core import errors
from ppcp.core.errors import CloseCode, PPCPError, error_for_code
from ppcp.core.states import TRANSITIONS, Role, State
from ppcp.crypto import psk, schedule
from ppcp.transport import connection, frames
from ppcp.transport.frames import HANDSHAKE_TYPES, FrameType, body_limit
from ppcp.utils import vectors

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture(scope="module")
def rfc() -> str:
    return (DOCS / "rfc.md").read_text(encoding="utf-8")


def table_rows(block: str) -> list[list[str]]:
    """Cells of a markdown table's body rows (header and separator skipped)."""
    rows = [line for line in block.splitlines() if line.strip().startswith("|")]
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in rows]
    return [r for r in cells[2:] if r and r[0]]


def transitions() -> set[tuple[str, str, str, str]]:
    return {
        (role.name, state.name, frame.name, nxt.name)
        for role, table in TRANSITIONS.items()
        for state, row in table.items()
        for frame, nxt in row.items()
    }


def test_state_table_matches_transitions(rfc: str) -> None:
    rows = table_rows(vectors.extract_block(rfc, "state-table"))
    assert all(len(r) == 4 for r in rows), "state table rows need 4 columns"
    listed = [(r[0], r[1], r[2], r[3]) for r in rows]
    assert len(listed) == len(set(listed)), "duplicate rows in the RFC state table"
    for role, state, frame, nxt in listed:
        assert role in Role.__members__ and state in State.__members__, (role, state)
        assert frame in FrameType.__members__ and nxt in State.__members__, (frame, nxt)
    code = transitions()
    hint = " (run `python -m ppcp.utils.vectors --update`)"
    assert not code - set(listed), f"missing from docs/rfc.md{hint}: {sorted(code - set(listed))}"
    assert not set(listed) - code, f"not in TRANSITIONS{hint}: {sorted(set(listed) - code)}"


def test_state_table_block_is_the_generated_one(rfc: str) -> None:
    assert vectors.extract_block(rfc, "state-table") == vectors.state_table()


def test_frame_type_registry(rfc: str) -> None:
    rows = table_rows(vectors.extract_block(rfc, "frame-types"))
    listed = {r[1]: r for r in rows}
    assert len(listed) == len(rows), "duplicate frame type rows"
    names = set(FrameType.__members__)
    assert not names - set(listed), f"frame types missing from the RFC: {names - set(listed)}"
    assert not set(listed) - names, f"RFC frame types not in the code: {set(listed) - names}"
    for ft in FrameType:
        value, _, kind, limit = listed[ft.name][:4]
        assert value == f"0x{ft.value:02X}", ft
        assert kind == ("handshake" if ft in HANDSHAKE_TYPES else "record"), ft
        assert int(limit) == body_limit(ft), ft


def test_length_limits(rfc: str) -> None:
    for name in ("MAX_HANDSHAKE_BODY", "MAX_RECORD_PLAINTEXT", "MAX_RECORD_BODY"):
        value = getattr(frames, name)
        assert re.search(rf"\| `{name}` \| {value}\b", rfc), name


def test_records_other_than_bulk_data_fit_the_earlier_draft(rfc: str) -> None:
    """RFC 4.4: peers of the draft with 1 MiB records take our MESSAGE fragments."""
    found = re.search(r"had\s+`MAX_RECORD_PLAINTEXT` = (\d+)", rfc)
    assert found is not None
    earlier_plaintext = int(found[1])
    assert earlier_plaintext == (1 << 20) + 1024
    assert connection.MESSAGE_CHUNK <= earlier_plaintext < frames.MAX_RECORD_PLAINTEXT
    bound = rf"at most {earlier_plaintext - 5},\s+which then bounds every CHANNEL_DATA"
    assert re.search(bound, rfc)


def expected_class(code: CloseCode) -> str:
    """The class raised for ``code``: what a receiver maps it to, or the local class."""
    cls = type(error_for_code(code, ""))
    if cls is PPCPError and code != CloseCode.INTERNAL_ERROR:
        local = [
            c
            for c in vars(errors).values()
            if isinstance(c, type) and issubclass(c, PPCPError) and c.code == code
        ]
        assert len(local) == 1, code
        cls = local[0]
    return cls.__name__


def test_close_code_table(rfc: str) -> None:
    rows = table_rows(vectors.extract_block(rfc, "close-codes"))
    listed = {r[1]: r for r in rows}
    assert len(listed) == len(rows), "duplicate close code rows"
    names = set(CloseCode.__members__)
    assert not names - set(listed), f"close codes missing from the RFC: {names - set(listed)}"
    assert not set(listed) - names, f"RFC close codes not in the code: {set(listed) - names}"
    for code in CloseCode:
        row = listed[code.name]
        assert row[0] == f"0x{code.value:04X}", code
        assert row[-1] == f"`{expected_class(code)}`", code


def test_key_schedule_labels(rfc: str) -> None:
    labels = {value for name, value in vars(schedule).items() if name.startswith("LABEL_")}
    assert len(labels) == 9
    for label in labels:
        assert f"| `{label.decode()}` | {len(label)} |" in rfc, label
        assert label.startswith(b"ppcp1 ")


def test_psk_constants(rfc: str) -> None:
    assert f'`"{psk.KEY_PREFIX}"`' in rfc
    assert f'salt = "{psk.PBKDF2_SALT.decode()}"' in rfc
    assert f"iterations = {psk.PBKDF2_ITERATIONS}," in rfc
    assert f"shorter than {psk.MIN_PASSPHRASE_CHARS} bytes" in rfc
    assert f"fewer than {psk.MIN_DISTINCT_CHARS} distinct byte values" in rfc


def test_exec_timing_constants(rfc: str) -> None:
    section = rfc[rfc.index("#### 15.10.2. exec") : rfc.index("#### 15.10.3.")]
    hold_ms = round(exec_service.LATE_ACCEPT_HOLD * 1000)
    assert f"longer than {hold_ms} ms after the process started" in section
    assert f"up to {hold_ms} ms later" in section
    assert f"if the command has not exited {exec_service.KILL_GRACE:g} s later" in section


@pytest.mark.parametrize("role", list(Role))
def test_mermaid_state_diagrams(role: Role) -> None:
    text = (DOCS / "diagram.md").read_text(encoding="utf-8")
    block = vectors.extract_block(text, f"state-diagram-{role.value}")
    assert block == vectors.state_diagram(role), (
        "docs/diagram.md is stale: run `python -m ppcp.utils.vectors --update`"
    )
