"""Price sheets and invoice lines for `trovemeter bill`. Pure: no Kafka, no files but the sheet.

A price sheet is YAML (see ``etc/prices.example.yaml``)::

    currency: EUR
    flavor_hour:          # price of one hour of an instance, by flavor id (instance_type_id)
      "2": "0.040"
    volume_gb_hour: "0.00015"
    backup_gb_hour: "0.00005"

Prices are decimals (write them quoted to keep YAML from reading them as binary floats; plain
numbers are accepted and read by their decimal text). Every key is required, no other key is
allowed: a sheet that cannot price something refuses to load rather than bill it as zero.

Invoice lines are computed from the **latest version of each usage record id** (a duplicate
or a superseded correction never counts), per tenant, period (UTC calendar month or day of the
usage window) and priced item: one instance line per flavor, one for volume GB-hours, one for
backup GB-hours. Quantities are summed exactly, converted to hours, then priced; each line's
amount is rounded half-up to the currency's minor unit. ``instance.exists.seconds`` is an audit
meter (Ceilometer's ``trove.instance.exists``) and is not billed.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

import yaml

from trovemeter.accrual import (
    BACKUP_GB_SECONDS,
    EXISTS_SECONDS,
    INSTANCE_SECONDS,
    VOLUME_GB_SECONDS,
    latest_versions,
)
from trovemeter.model import UsageRecord

Period = Literal["month", "day"]
_SHEET_KEYS = {"currency", "flavor_hour", "volume_gb_hour", "backup_gb_hour", "minor_unit_digits"}
_REQUIRED_KEYS = _SHEET_KEYS - {"minor_unit_digits"}
_CURRENCY = re.compile(r"[A-Z]{3}\Z")
_SECONDS_PER_HOUR = Decimal(3600)
_QUANTITY_DIGITS = Decimal("0.000001")
# Billed meters -> invoice item.
_ITEMS = {INSTANCE_SECONDS: "instance", VOLUME_GB_SECONDS: "volume",
          BACKUP_GB_SECONDS: "backup"}
INVOICE_FIELDS = ("tenant_id", "period", "item", "flavor_id", "flavor_name", "quantity", "unit",
                  "unit_price", "amount", "currency", "records")


class PriceSheetError(ValueError):
    """A price sheet that cannot be used; the message names the file and the key."""


class UnpricedUsage(ValueError):
    """Usage of a flavor the price sheet has no price for."""


@dataclass(frozen=True, slots=True)
class PriceSheet:
    currency: str
    flavor_hour: Mapping[str, Decimal]  # flavor id -> price of one instance hour
    volume_gb_hour: Decimal
    backup_gb_hour: Decimal
    minor_unit_digits: int = 2  # amounts are rounded to 10^-digits of the currency


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    tenant_id: str
    period: str  # "2026-11" or "2026-11-02"
    item: str  # instance, volume or backup
    flavor_id: str | None
    flavor_name: str | None
    quantity: Decimal  # hours (instance) or GB-hours (volume, backup)
    unit: str
    unit_price: Decimal
    amount: Decimal
    currency: str
    records: int  # usage records (latest versions) summed into the line


# ------------------------------------------------------------------------------ price sheet


def load_price_sheet(path: str | Path) -> PriceSheet:
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PriceSheetError(f"{source}: cannot read the price sheet: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PriceSheetError(f"{source}: not valid YAML: {exc}") from exc
    return parse_price_sheet(data, source)


def parse_price_sheet(data: Any, source: str = "price sheet") -> PriceSheet:
    if not isinstance(data, dict):
        raise PriceSheetError(f"{source}: expected a mapping with keys "
                              f"{', '.join(sorted(_REQUIRED_KEYS))}")
    unknown = sorted(str(k) for k in data if k not in _SHEET_KEYS)
    if unknown:
        raise PriceSheetError(f"{source}: unknown key(s) {', '.join(unknown)}; allowed: "
                              f"{', '.join(sorted(_SHEET_KEYS))}")
    missing = sorted(_REQUIRED_KEYS - data.keys())
    if missing:
        raise PriceSheetError(f"{source}: missing key(s) {', '.join(missing)}")
    currency = data["currency"]
    if not isinstance(currency, str) or not _CURRENCY.match(currency):
        raise PriceSheetError(f"{source}: currency must be a three-letter ISO 4217 code such as "
                              f"EUR, got {currency!r}")
    flavors = data["flavor_hour"]
    if not isinstance(flavors, dict) or not flavors:
        raise PriceSheetError(f"{source}: flavor_hour must map flavor ids to hourly prices, "
                              f"got {flavors!r}")
    digits = data.get("minor_unit_digits", 2)
    if not isinstance(digits, int) or isinstance(digits, bool) or not 0 <= digits <= 6:
        raise PriceSheetError(f"{source}: minor_unit_digits must be a whole number from 0 to 6, "
                              f"got {digits!r}")
    return PriceSheet(
        currency=currency,
        flavor_hour={str(flavor): _price(price, f"{source}: flavor_hour.{flavor}")
                     for flavor, price in flavors.items()},
        volume_gb_hour=_price(data["volume_gb_hour"], f"{source}: volume_gb_hour"),
        backup_gb_hour=_price(data["backup_gb_hour"], f"{source}: backup_gb_hour"),
        minor_unit_digits=digits,
    )


def _price(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise PriceSheetError(f"{where}: price must be a non-negative decimal, got {value!r}")
    try:
        price = Decimal(str(value).strip())
    except InvalidOperation:
        raise PriceSheetError(f"{where}: price must be a non-negative decimal, "
                              f"got {value!r}") from None
    if not price.is_finite() or price < 0:
        raise PriceSheetError(f"{where}: price must be a non-negative decimal, got {value!r}")
    return price


# ----------------------------------------------------------------------------- invoicing


def invoice_lines(records: Iterable[UsageRecord], sheet: PriceSheet,
                  period: Period = "month") -> list[InvoiceLine]:
    """Invoice lines from usage records, of which only the latest version per id counts.
    Raises ``UnpricedUsage`` naming every flavor used but not priced."""
    sums: dict[tuple[str, str, str, str | None], Decimal] = defaultdict(Decimal)
    counts: dict[tuple[str, str, str, str | None], int] = defaultdict(int)
    names: dict[str, str] = {}
    unpriced: set[str] = set()
    for record in latest_versions(records).values():
        if record.meter == EXISTS_SECONDS or not record.quantity:
            continue
        item = _ITEMS.get(record.meter)
        if item is None:
            continue  # a meter this price sheet has no item for
        flavor = record.flavor_id if record.meter == INSTANCE_SECONDS else None
        if record.meter == INSTANCE_SECONDS:
            if flavor is None or flavor not in sheet.flavor_hour:
                unpriced.add(flavor or "<unknown flavor>")
            if flavor is not None and record.flavor_name:
                names[flavor] = record.flavor_name
        key = (record.tenant_id, _period_of(record, period), item, flavor)
        sums[key] += Decimal(repr(record.quantity))  # the shortest text of the double
        counts[key] += 1
    if unpriced:
        raise UnpricedUsage(f"usage of flavor(s) {', '.join(sorted(unpriced))} has no price in "
                            f"the price sheet (flavor_hour)")
    minor_unit = Decimal(1).scaleb(-sheet.minor_unit_digits)
    lines = []
    for key in sorted(sums, key=lambda k: (k[0], k[1], k[2], k[3] or "")):
        tenant, billed_period, item, flavor = key
        hours = sums[key] / _SECONDS_PER_HOUR
        unit_price = _unit_price(sheet, item, flavor)
        lines.append(InvoiceLine(
            tenant_id=tenant, period=billed_period, item=item, flavor_id=flavor,
            flavor_name=names.get(flavor) if flavor else None,
            quantity=hours.quantize(_QUANTITY_DIGITS, ROUND_HALF_UP),
            unit="hour" if item == "instance" else "GB-hour",
            unit_price=unit_price,
            amount=(hours * unit_price).quantize(minor_unit, ROUND_HALF_UP),
            currency=sheet.currency, records=counts[key]))
    return lines


def _unit_price(sheet: PriceSheet, item: str, flavor: str | None) -> Decimal:
    if item == "instance":
        assert flavor is not None
        return sheet.flavor_hour[flavor]
    return sheet.volume_gb_hour if item == "volume" else sheet.backup_gb_hour


def _period_of(record: UsageRecord, period: Period) -> str:
    start = record.window_start
    return f"{start:%Y-%m}" if period == "month" else f"{start:%Y-%m-%d}"


def tenant_totals(lines: Iterable[InvoiceLine]) -> dict[tuple[str, str, str], Decimal]:
    """(tenant, period, currency) -> total amount: the terminal summary."""
    totals: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
    for line in lines:
        totals[(line.tenant_id, line.period, line.currency)] += line.amount
    return dict(sorted(totals.items()))


def lines_as_csv(lines: Iterable[InvoiceLine]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=INVOICE_FIELDS, lineterminator="\n")
    writer.writeheader()
    for line in lines:
        writer.writerow({k: "" if v is None else str(v) for k, v in asdict(line).items()})
    return out.getvalue()


def lines_as_json(lines: Iterable[InvoiceLine]) -> str:
    """A JSON array; decimals as strings, so that no amount passes through a binary float."""
    rows = [{k: v if v is None or isinstance(v, int) else str(v)
             for k, v in asdict(line).items()} for line in lines]
    return json.dumps(rows, indent=2) + "\n"
