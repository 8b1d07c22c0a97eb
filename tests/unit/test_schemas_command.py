"""`trovemeter schemas`: lists every schema with its fingerprint; --check fails on problems."""

from __future__ import annotations

import argparse

from trovemeter import schemas_command
from trovemeter.codec import default_codec


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    schemas_command.add_arguments(parser)
    return schemas_command.run(parser.parse_args(list(argv)))


def test_lists_full_names_and_fingerprints(capsys):
    assert run() == 0
    out = capsys.readouterr().out
    for entry in default_codec().entries():
        assert f"{entry.full_name}  fingerprint={entry.fingerprint.hex()}" in out


def test_check_passes_on_the_repository_schemas(capsys):
    assert run("--check", "--show") == 0
    captured = capsys.readouterr()
    assert "ok:" in captured.out and captured.err == ""
    assert '{"name":"trovemeter.Notification","type":"record"' in captured.out


def test_check_fails_on_a_schema_without_model(tmp_path, monkeypatch, capsys):
    (tmp_path / "orphan.avsc").write_text('{"type": "record", "name": "Orphan", "fields": []}')
    for _, avsc in schemas_command.MODELS:
        (tmp_path / avsc).write_text((schemas_command.AVRO_DIR / avsc).read_text())
    monkeypatch.setattr(schemas_command, "AVRO_DIR", tmp_path)
    assert run("--check") == 1
    assert "orphan.avsc: no model registered" in capsys.readouterr().err


def test_check_fails_on_a_model_mismatch(monkeypatch, capsys):
    from trovemeter.model import DeadLetter

    monkeypatch.setattr(schemas_command, "MODELS", ((DeadLetter, "notification.avsc"),))
    assert run("--check") == 1
    assert "notification.avsc:" in capsys.readouterr().err
