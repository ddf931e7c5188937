"""Inputs that killed the daemon while decoding: counted across restarts, given up at the limit."""

from __future__ import annotations

from pathlib import Path

from edge_runtime.decode_guard import CRASH_LIMIT, DecodeGuard, input_key


def test_deaths_are_counted_per_input_across_restarts(tmp_path: Path) -> None:
    key = input_key("big.png", 10, 20, 30, 40)
    other = input_key("big.png", 11, 20, 30, 40)  # same name, other content: another input
    for death in range(1, CRASH_LIMIT + 1):
        guard = DecodeGuard(tmp_path)
        guard.recover()
        assert guard.given_up(key) == (death - 1 if death - 1 >= CRASH_LIMIT else 0)
        guard.decoding(key)  # ... and the process dies here
        restarted = DecodeGuard(tmp_path)
        assert restarted.recover() == (key, death)
    assert restarted.given_up(key) == CRASH_LIMIT and restarted.given_up(other) == 0


def test_a_batch_read_to_the_end_accuses_no_input(tmp_path: Path) -> None:
    guard = DecodeGuard(tmp_path)
    guard.recover()
    guard.decoding(input_key("a.png", 1, 2, 3, 4))
    guard.clear()  # every input of the batch decoded; a crash in inference is nobody's fault
    assert DecodeGuard(tmp_path).recover() is None


def test_a_name_that_is_not_utf8_is_a_valid_key(tmp_path: Path) -> None:
    name = b"caf\xe9 x-ray.png".decode("utf-8", "surrogateescape")  # Latin-1 bytes from a Windows share
    key = input_key(name, 1, 2, 3, 4)
    guard = DecodeGuard(tmp_path)
    guard.recover()
    guard.decoding(key)
    assert DecodeGuard(tmp_path).recover() == (key, 1)
    assert key.startswith("caf\\xe9 x-ray.png\t")
