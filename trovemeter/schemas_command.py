"""`trovemeter schemas`: list the Avro schemas (full name, fingerprint, model, file), or with
``--check`` verify that every schema in ``avro/`` parses (fastavro and Apache avro agree on its
canonical form) and has a registered model that agrees with it."""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from trovemeter.codec import AVRO_DIR, MODELS, Codec, CodecError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check", action="store_true",
                        help="validate every schema and its model; exit 1 on any problem")
    parser.add_argument("--show", action="store_true",
                        help="also print each schema's Parsing Canonical Form")


def run(args: argparse.Namespace) -> int:
    codec, problems = _build_codec()
    if args.check:
        problems += _unregistered_files(codec) + _cross_library_problems(codec)
    for entry in codec.entries():
        print(f"{entry.full_name}  fingerprint={entry.fingerprint.hex()}  "
              f"model={entry.model.__module__}.{entry.model.__qualname__}  "
              f"file=avro/{entry.path.name}")
        if args.show:
            print(f"  {entry.canonical_form}")
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    if args.check and not problems:
        print(f"ok: {len(codec.entries())} schemas parse and agree with their models")
    return 1 if problems else 0


def _build_codec() -> tuple[Codec, list[str]]:
    """Register every pair, collecting problems instead of stopping at the first."""
    codec, problems = Codec(), []
    for model, avsc in MODELS:
        try:
            codec.register(model, avsc)
        except (CodecError, ValueError, OSError) as exc:
            problems.append(f"{avsc}: {exc}")
    return codec, problems


def _unregistered_files(codec: Codec) -> list[str]:
    registered = {entry.path.name for entry in codec.entries()}
    return [f"{path.name}: no model registered for this schema (trovemeter.codec.MODELS)"
            for path in sorted(AVRO_DIR.glob("*.avsc")) if path.name not in registered]


# Apache avro's Python canonical_form (1.12) keeps a logical type's primitive as {"type":"long"};
# the specification (and Java, and fastavro) write "long". Undo that before comparing.
_WRAPPED_PRIMITIVE = re.compile(r'\{"type":"(null|boolean|int|long|float|double|bytes|string)"\}')


def apache_canonical_form(schema: dict[str, Any]) -> str:
    """Apache avro's Parsing Canonical Form of ``schema``, with its logical-type quirk undone."""
    import avro.schema  # the reference implementation other consumers may use

    return _WRAPPED_PRIMITIVE.sub(r'"\1"', avro.schema.parse(json.dumps(schema)).canonical_form)


def _cross_library_problems(codec: Codec) -> list[str]:
    problems = []
    for entry in codec.entries():
        try:
            canonical = apache_canonical_form(entry.schema)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the finding
            problems.append(f"{entry.path.name}: Apache avro cannot parse it: {exc}")
            continue
        if canonical != entry.canonical_form:
            problems.append(f"{entry.path.name}: fastavro and Apache avro disagree on the "
                            "Parsing Canonical Form, so on the fingerprint")
    return problems
