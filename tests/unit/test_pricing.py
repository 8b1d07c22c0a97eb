"""Price sheets: clear validation errors. Invoices: latest version per record id, no double
charge from duplicates or corrections, exact decimal amounts."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from trovemeter.accrual import (
    BACKUP_GB_SECONDS,
    EXISTS_SECONDS,
    INSTANCE_SECONDS,
    METERS,
    VOLUME_GB_SECONDS,
)
from trovemeter.model import ResourceType, UsageRecord
from trovemeter.pricing import (
    PriceSheet,
    PriceSheetError,
    UnpricedUsage,
    invoice_lines,
    lines_as_csv,
    lines_as_json,
    load_price_sheet,
    parse_price_sheet,
    tenant_totals,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "etc" / "prices.example.yaml"
SHEET = PriceSheet("EUR", {"1": Decimal("0.01"), "2": Decimal("0.04")},
                   volume_gb_hour=Decimal("0.00015"), backup_gb_hour=Decimal("0.00005"))
NOV = datetime(2026, 11, 2, tzinfo=UTC)


def usage(record_id: str, meter: str, quantity: float, *, version: int = 1,
          tenant: str = "tenant-a", flavor: str | None = None, hour: int = 0,
          start: datetime = NOV) -> UsageRecord:
    meter_type, unit = METERS[meter]
    window_start = start + timedelta(hours=hour)
    return UsageRecord(
        record_id=record_id, version=version, tenant_id=tenant,
        resource_type=ResourceType.BACKUP if meter == BACKUP_GB_SECONDS else ResourceType.INSTANCE,
        resource_id="r-1", meter=meter, meter_type=meter_type, unit=unit, quantity=quantity,
        window_start=window_start, window_end=window_start + timedelta(hours=1),
        derived_from=["m-1"], flavor_id=flavor,
        flavor_name={"1": "m1.tiny", "2": "m1.small"}.get(flavor or ""))


def valid() -> dict[str, Any]:
    return {"currency": "EUR", "flavor_hour": {"1": "0.01", 2: 0.04},
            "volume_gb_hour": "0.00015", "backup_gb_hour": "0.00005"}


# ------------------------------------------------------------------------- price sheets


def test_the_example_price_sheet_loads() -> None:
    sheet = load_price_sheet(EXAMPLE)
    assert sheet.currency == "EUR"
    assert sheet.flavor_hour["2"] == Decimal("0.0400")


def test_prices_are_read_as_decimals_and_flavor_ids_as_text() -> None:
    sheet = parse_price_sheet(valid())
    assert sheet.flavor_hour == {"1": Decimal("0.01"), "2": Decimal("0.04")}
    assert sheet.minor_unit_digits == 2


@pytest.mark.parametrize(("change", "message"), [
    ({"currency": "euro"}, "currency must be a three-letter ISO 4217 code"),
    ({"flavor_hour": {}}, "flavor_hour must map flavor ids to hourly prices"),
    ({"flavor_hour": {"2": "cheap"}}, "flavor_hour.2: price must be a non-negative decimal"),
    ({"flavor_hour": {"2": -1}}, "flavor_hour.2: price must be a non-negative decimal"),
    ({"volume_gb_hour": None}, "volume_gb_hour: price must be a non-negative decimal"),
    ({"backup_gb_hour": "NaN"}, "backup_gb_hour: price must be a non-negative decimal"),
    ({"minor_unit_digits": 9}, "minor_unit_digits must be a whole number from 0 to 6"),
    ({"discount": 0.1}, "unknown key(s) discount"),
])
def test_an_invalid_price_sheet_is_refused_with_a_clear_message(change: dict[str, Any],
                                                                message: str) -> None:
    with pytest.raises(PriceSheetError, match=r"^prices\.yaml: ") as caught:
        parse_price_sheet({**valid(), **change}, "prices.yaml")
    assert message in str(caught.value)


def test_a_missing_key_or_file_is_named(tmp_path: Path) -> None:
    data = valid()
    del data["backup_gb_hour"]
    with pytest.raises(PriceSheetError, match="missing key.*backup_gb_hour"):
        parse_price_sheet(data)
    with pytest.raises(PriceSheetError, match="cannot read the price sheet"):
        load_price_sheet(tmp_path / "absent.yaml")
    (tmp_path / "broken.yaml").write_text("currency: [EUR\n")
    with pytest.raises(PriceSheetError, match="broken.yaml: not valid YAML"):
        load_price_sheet(tmp_path / "broken.yaml")
    (tmp_path / "list.yaml").write_text("- EUR\n")
    with pytest.raises(PriceSheetError, match="list.yaml: expected a mapping"):
        load_price_sheet(tmp_path / "list.yaml")


# ----------------------------------------------------------------------------- invoices


def test_duplicates_and_corrections_never_double_charge() -> None:
    first = usage("a", INSTANCE_SECONDS, 3600.0, flavor="2")
    corrected = usage("a", INSTANCE_SECONDS, 1800.0, flavor="2", version=2)
    other_hour = usage("b", INSTANCE_SECONDS, 3600.0, flavor="2", hour=1)
    stream = [first, other_hour, corrected, first, other_hour, corrected]
    [line] = invoice_lines(stream, SHEET)
    assert (line.item, line.flavor_id, line.flavor_name, line.quantity, line.records) == \
        ("instance", "2", "m1.small", Decimal("1.5"), 2)
    assert line.amount == Decimal("0.06")  # 1.5 h x 0.04
    # The correction wins whatever the order it is read in.
    assert invoice_lines(list(reversed(stream)), SHEET) == [line]


def test_a_correction_to_zero_removes_the_charge() -> None:
    lines = invoice_lines([usage("a", VOLUME_GB_SECONDS, 36000.0),
                           usage("a", VOLUME_GB_SECONDS, 0.0, version=2)], SHEET)
    assert lines == []


def test_lines_per_tenant_period_and_item_with_exact_amounts() -> None:
    records = [
        usage("i1", INSTANCE_SECONDS, 3600.0, flavor="1"),
        usage("i2", INSTANCE_SECONDS, 1200.0, flavor="2"),
        usage("v1", VOLUME_GB_SECONDS, 20 * 3600.0),
        usage("b1", BACKUP_GB_SECONDS, 0.14 * 2700),
        usage("e1", EXISTS_SECONDS, 3600.0),  # an audit meter: never billed
        usage("i3", INSTANCE_SECONDS, 3600.0, flavor="1", tenant="tenant-b",
              start=datetime(2026, 12, 1, tzinfo=UTC)),
    ]
    lines = invoice_lines(records, SHEET)
    assert [(ln.tenant_id, ln.period, ln.item, ln.flavor_id, ln.quantity, ln.amount)
            for ln in lines] == [
        ("tenant-a", "2026-11", "backup", None, Decimal("0.105000"), Decimal("0.00")),
        ("tenant-a", "2026-11", "instance", "1", Decimal("1.000000"), Decimal("0.01")),
        ("tenant-a", "2026-11", "instance", "2", Decimal("0.333333"), Decimal("0.01")),
        ("tenant-a", "2026-11", "volume", None, Decimal("20.000000"), Decimal("0.00")),
        ("tenant-b", "2026-12", "instance", "1", Decimal("1.000000"), Decimal("0.01")),
    ]
    assert tenant_totals(lines) == {("tenant-a", "2026-11", "EUR"): Decimal("0.02"),
                                    ("tenant-b", "2026-12", "EUR"): Decimal("0.01")}
    assert [ln.period for ln in invoice_lines(records[:1], SHEET, "day")] == ["2026-11-02"]


def test_usage_of_an_unpriced_flavor_is_refused() -> None:
    with pytest.raises(UnpricedUsage, match="flavor.s. 9 has no price"):
        invoice_lines([usage("a", INSTANCE_SECONDS, 60.0, flavor="9")], SHEET)


def test_csv_and_json_carry_decimals_as_text() -> None:
    lines = invoice_lines([usage("a", INSTANCE_SECONDS, 5400.0, flavor="2")], SHEET)
    [row] = csv.DictReader(io.StringIO(lines_as_csv(lines)))
    assert (row["quantity"], row["amount"], row["flavor_id"], row["currency"]) == \
        ("1.500000", "0.06", "2", "EUR")
    [item] = json.loads(lines_as_json(lines))
    assert (item["amount"], item["unit_price"], item["records"]) == ("0.06", "0.04", 1)
