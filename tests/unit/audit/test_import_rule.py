"""The one import rule (`plan_import`, pure) and the pieces an import derives from a record's bytes alone."""

from __future__ import annotations

import pytest

from gateway.audit.errors import ImportConflict
from gateway.audit.log import Columns, Entry, origin_prefixes, restore, seal
from gateway.audit.records import ChainHead
from gateway.store.base import ImportedLog, plan_import

ORIGIN = "aegress.test/d-1/tenant/acme"
T = "2026-01-02T03:04:05.000000Z"


def _log(n: int, actor: str = "op") -> list[bytes]:
    sealed, _ = seal([Entry(ORIGIN, "token_revoked", T, {"token_id": f"tok_{i}", "actor": actor}) for i in range(n)],
                     {})
    return [s.record.canonical for s in sealed]


def _imported(records: list[bytes], start: int = 0, prev: bytes | None = None,
              checkpoints: tuple[tuple[int, bytes, str], ...] = ()) -> ImportedLog:
    return ImportedLog(ORIGIN, start, prev, tuple(restore(r, "acme") for r in records[start:]), checkpoints)


def _head(records: list[bytes], size: int) -> ChainHead | None:
    return ChainHead.after(records[size - 1]) if size else None


def test_origin_prefixes_name_both_readings_of_an_ambiguous_origin() -> None:
    assert origin_prefixes("aegress.local/d-1/tenant/acme") == ["aegress.local/d-1"]
    assert origin_prefixes("aegress.local/d-1/security") == ["aegress.local/d-1"]
    assert origin_prefixes("p/tenant/security") == ["p", "p/tenant"]  # tenant `security`, or P/tenant's log
    assert origin_prefixes("someone/else") == []


def test_restore_keeps_the_bytes_and_derives_the_columns() -> None:
    data = _log(1)[0]
    sealed = restore(data, "acme")
    assert sealed.record.canonical is data and sealed.record.seq == 0 and sealed.entry.time == T
    assert sealed.entry.columns == Columns(tenant="acme", actor="op", verdict="token_revoked")


def test_empty_continued_overlapping_and_repeated() -> None:
    records = _log(6)
    created = plan_import(_imported(records[:4]), None, [], {})
    assert (created.result.status, created.result.first, created.result.end) == ("created", 0, 4)
    assert created.head == _head(records, 4)
    continued = plan_import(_imported(records, 4, _head(records, 4).last_hash), _head(records, 4), [], {})
    assert (continued.result.status, continued.result.first, len(continued.records)) == ("extended", 4, 2)
    overlapping = plan_import(_imported(records), _head(records, 4), records[:4], {})
    assert [s.record.seq for s in overlapping.records] == [4, 5] and overlapping.head == _head(records, 6)
    repeated = plan_import(_imported(records[:3]), _head(records, 4), records[:3], {})
    assert repeated.result.status == "unchanged" and repeated.head is None and repeated.records == ()
    empty = plan_import(_imported([]), _head(records, 4), [], {})
    assert empty.result.status == "unchanged" and empty.result.records == 0


def test_what_is_refused() -> None:
    records, other = _log(6), _log(6, actor="someone else")  # two logs of one origin, different from seq 0 on
    with pytest.raises(ImportConflict, match=r"records 2\.\.3 would be missing") as gap:
        plan_import(_imported(records, 4, _head(records, 4).last_hash), _head(records, 2), [], {})
    assert gap.value.code == "import-gap"
    with pytest.raises(ImportConflict, match="does not link") as fork:
        plan_import(_imported(records, 4, b"\x00" * 32), _head(records, 4), [], {})
    assert fork.value.code == "import-fork"
    with pytest.raises(ImportConflict, match="other bytes at seq 0"):
        plan_import(_imported(records), _head(other, 2), other[:2], {})
    with pytest.raises(ImportConflict, match="missing records it counts"):
        plan_import(_imported(records), _head(records, 4), records[:3], {})
    with pytest.raises(ImportConflict, match="another root"):
        plan_import(_imported(records, checkpoints=((4, b"\x01" * 32, "note"),)), None, [], {4: b"\x02" * 32})
    same = plan_import(_imported(records, checkpoints=((4, b"\x01" * 32, "n4"), (6, b"\x03" * 32, "n6"))), None,
                       [], {4: b"\x01" * 32})
    assert same.checkpoints == ((6, b"\x03" * 32, "n6"),) and same.result.checkpoints == 1
