"""Record types: msgspec ``Struct`` rather than ``dataclasses``.

A process start pays for every record class it defines.  A frozen dataclass
compiles six generated methods when its class is created (0.5-0.8 ms each class
on the benchmark host; the 43 records behind ``ppcp exec`` took 35 ms of a
180 ms command), a ``Struct`` is built in C (0.07 ms) and its instances are
also created 5x faster.  Both give ``__init__``, ``__eq__``, ``__repr__``,
``__match_args__`` and frozen instances; ``msgspec.structs.replace`` takes the
place of ``dataclasses.replace``.
"""

from __future__ import annotations

from msgspec import Struct


def repr_hiding(record: Struct, hidden: frozenset[str] | None = None) -> str:
    """The usual repr, with the values of the fields in ``hidden`` (default: all) left out.

    For records holding key material: ``Struct`` has no per-field ``repr=False``,
    and a key must never reach a log or a traceback.
    """
    shown = ", ".join(
        f"{name}=<hidden>"
        if hidden is None or name in hidden
        else f"{name}={getattr(record, name)!r}"
        for name in record.__struct_fields__
    )
    return f"{type(record).__name__}({shown})"
