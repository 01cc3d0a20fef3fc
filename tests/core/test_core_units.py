import pytest

from ppcp.utils.units import human_size


@pytest.mark.parametrize(
    ("n", "shown"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (5 << 20, "5.0 MiB"),
        (3 << 30, "3.0 GiB"),
        (5 << 40, "5.0 TiB"),
        (-2048, "-2.0 KiB"),
        (123.4, "123 B"),
    ],
)
def test_human_size(n: float, shown: str) -> None:
    assert human_size(n) == shown
