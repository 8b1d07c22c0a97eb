"""Every schema stays backward compatible: a reader on the current .avsc reads data written with
any committed version of it (and, with no history yet, with itself)."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import avro.schema
import fastavro
import pytest
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.avro_strategies import datums, json_text_fields
from trovemeter.codec import AVRO_DIR, default_codec

REPO = AVRO_DIR.parent
SCHEMA_FILES = sorted(path.name for path in AVRO_DIR.glob("*.avsc"))


def committed_versions(name: str) -> dict[str, str]:
    """Every distinct committed text of avro/<name>, by short commit id (newest first)."""
    relative = f"{AVRO_DIR.relative_to(REPO)}/{name}"
    try:
        log = subprocess.run(["git", "-C", str(REPO), "log", "--format=%H", "--", relative],
                             capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}  # not a git checkout (an sdist): only the self-check below runs
    versions: dict[str, str] = {}
    for commit in log.split():
        shown = subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:{relative}"],
                               capture_output=True, text=True, timeout=30)
        if shown.returncode == 0 and shown.stdout not in versions.values():
            versions[commit[:10]] = shown.stdout
    return versions


def writer_versions(name: str) -> list[tuple[str, dict]]:
    current = (AVRO_DIR / name).read_text()
    versions = {"working tree": current, **committed_versions(name)}
    return [(label, json.loads(text)) for label, text in versions.items()]


@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_reader_schema_is_compatible_with_every_committed_writer(name):
    reader = avro.schema.parse((AVRO_DIR / name).read_text())
    for label, writer in writer_versions(name):
        result = ReaderWriterCompatibilityChecker().get_compatibility(
            reader, avro.schema.parse(json.dumps(writer)))
        assert result.compatibility is SchemaCompatibilityType.compatible, (
            f"{name}: cannot read data written with version {label}: "
            f"{result.incompatibilities} at {result.locations} ({result.messages})")


@pytest.mark.parametrize("name", SCHEMA_FILES)
@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_old_data_reads_with_the_current_schema_into_the_current_model(name, data):
    reader = fastavro.parse_schema(json.loads((AVRO_DIR / name).read_text()))
    registered = {entry.path.name: entry for entry in default_codec().entries()}
    entry = registered.get(name)
    json_fields = json_text_fields(entry.model) if entry else frozenset()
    for label, writer_json in writer_versions(name):
        datum = data.draw(datums(writer_json, json_fields=json_fields), label=label)
        writer = fastavro.parse_schema(writer_json)
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, writer, datum)
        buffer.seek(0)
        resolved = fastavro.schemaless_reader(buffer, writer, reader)
        if entry is not None:  # the consumer's path: old bytes become today's model
            assert isinstance(entry.from_avro(resolved), entry.model)


def test_history_is_read_from_git():
    # This file's schemas are committed, so at least one has a committed version; a broken git
    # call would silently reduce every check to the self-check.
    assert any(committed_versions(name) for name in SCHEMA_FILES) or not (REPO / ".git").exists()


def test_a_breaking_change_is_caught(tmp_path: Path):
    old = json.loads((AVRO_DIR / "notification.avsc").read_text())
    new = json.loads(json.dumps(old))
    new["fields"].append({"name": "region", "type": "string"})  # no default: old data lacks it
    result = ReaderWriterCompatibilityChecker().get_compatibility(
        avro.schema.parse(json.dumps(new)), avro.schema.parse(json.dumps(old)))
    assert result.compatibility is SchemaCompatibilityType.incompatible
