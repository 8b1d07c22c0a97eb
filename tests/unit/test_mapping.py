"""The event mapping: all three families, unmapped types counted, user extensions, bad YAML."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from trovemeter.envelope import OsloMessage
from trovemeter.mapping import BUILTIN_MAPPING, MappingError, load_mapping
from trovemeter.model import Phase, ResourceType
from trovemeter.normalise import OTHER_UNKNOWN, UNKNOWN_TYPES_TRACKED, Normaliser
from trovemeter.settings import CommonSettings

MAPPING = load_mapping()
I, C, B = ResourceType.INSTANCE, ResourceType.CLUSTER, ResourceType.BACKUP
S, E, X, P = Phase.START, Phase.END, Phase.ERROR, Phase.POINT


@pytest.mark.parametrize("event_type, expected", [
    # Family 1: API notifications
    ("dbaas.instance_create.start", (I, "create", S)),
    ("dbaas.instance_create.error", (I, "create", X)),
    ("dbaas.instance_resize_instance.end", (I, "resize_flavor", E)),
    ("dbaas.instance_resize_volume.start", (I, "resize_volume", S)),
    ("dbaas.instance_restart.end", (I, "restart", E)),
    ("dbaas.instance_reboot.start", (I, "reboot", S)),
    ("dbaas.instance_promote.end", (I, "promote", E)),
    ("dbaas.instance_eject.start", (I, "eject", S)),
    ("dbaas.instance_attach_configuration.end", (I, "attach_configuration", E)),
    ("dbaas.cluster_create.end", (C, "create", E)),
    ("dbaas.cluster_grow.start", (C, "grow", S)),
    ("dbaas.backup_create.start", (B, "create", S)),
    ("dbaas.backup_delete.end", (B, "delete", E)),
    ("dbaas.database_create.start", (ResourceType.DATABASE, "create", S)),
    ("dbaas.user_change_password.end", (ResourceType.USER, "change_password", E)),
    ("dbaas.configuration_update.start", (ResourceType.CONFIGURATION, "update", S)),
    ("dbaas.quota", (ResourceType.QUOTA, "quota", P)),
    # Family 2: usage notifications
    ("trove.instance.create", (I, "create", P)),
    ("trove.instance.modify_flavor", (I, "resize_flavor", P)),
    ("trove.instance.modify_volume", (I, "resize_volume", P)),
    ("trove.instance.delete", (I, "delete", P)),
    ("trove.instance.exists", (I, "exists", P)),
    # Family 3: the design note's names
    ("instance.create.start", (I, "create", S)),
    ("trove.instance.delete.end", (I, "delete", E)),
    ("instance.migrate.error", (I, "migrate", X)),
    ("instance.reboot.end", (I, "reboot", E)),
    ("instance.resize.start", (I, "resize", S)),
    ("resize.flavor.end", (I, "resize_flavor", E)),
    ("trove.resize.volume.start", (I, "resize_volume", S)),
    ("cluster.create.end", (C, "create", E)),
    ("trove.cluster.resize.error", (C, "resize", X)),
    ("trove.backup.create.start", (B, "create", S)),
    ("backup.delete.end", (B, "delete", E)),
])
def test_families_map_onto_one_model(event_type, expected):
    event = MAPPING.classify(event_type)
    assert (event.resource_type, event.operation, event.phase) == expected
    assert event.known


@pytest.mark.parametrize("event_type", ["compute.instance.create.end", "dbaas.instance_create",
                                        "trove.instance.frobnicate", "instance.create.begin", "",
                                        "dbaas.instance_frobnicate.start", "dbaas.widget_create.end"])
def test_unmapped_event_types_are_unknown_points(event_type):
    event = MAPPING.classify(event_type)
    assert (event.resource_type, event.operation, event.phase) == \
        (ResourceType.UNKNOWN, event_type, Phase.POINT)
    assert not event.known


def message(event_type: str, payload: dict | None = None, context: dict | None = None):
    return OsloMessage("m-1", "taskmanager.h1", event_type, "INFO",
                       datetime(2026, 1, 1, tzinfo=UTC), payload or {}, context or {})


def test_unmapped_type_is_kept_and_counted():
    normaliser = Normaliser(MAPPING)
    for _ in range(3):
        n = normaliser.normalise(message("nova.thing.happened", {"instance_id": "i-1"}))
    assert n.resource_type is ResourceType.UNKNOWN
    assert n.event_type == n.operation == "nova.thing.happened"
    assert n.resource_id == "i-1"
    assert normaliser.unknown_counts == {"nova.thing.happened": 3}
    normaliser.normalise(message("dbaas.instance_create.start"))
    assert sum(normaliser.unknown_counts.values()) == 3


def test_unknown_counter_is_bounded():
    normaliser = Normaliser(MAPPING)
    for index in range(UNKNOWN_TYPES_TRACKED + 5):
        normaliser.normalise(message(f"garbage.{index}"))
    assert len(normaliser.unknown_counts) == UNKNOWN_TYPES_TRACKED + 1
    assert normaliser.unknown_counts[OTHER_UNKNOWN] == 5


def test_identifiers_fall_back_from_payload_to_context():
    n = Normaliser(MAPPING).normalise(message(
        "dbaas.instance_delete.start", {"instance_id": "i-1"},
        {"request_id": "req-ctx", "project_id": "p-ctx", "user": "u-ctx", "tenant": "ignored"}))
    assert (n.request_id, n.tenant_id, n.user_id, n.resource_id) == \
        ("req-ctx", "p-ctx", "u-ctx", "i-1")


def test_payload_identifiers_win_over_context():
    n = Normaliser(MAPPING).normalise(message(
        "dbaas.instance_delete.start",
        {"instance_id": "i-1", "request_id": "req-p", "tenant_id": "t-p", "user_id": "u-p"},
        {"request_id": "req-ctx", "project_id": "p-ctx", "user_id": "u-ctx"}))
    assert (n.request_id, n.tenant_id, n.user_id) == ("req-p", "t-p", "u-p")


def test_design_note_payloads_use_plain_id():
    backup = {"id": "b-1", "instance_id": "i-1", "tenant_id": "t", "status": "NEW"}
    cluster = {"id": "c-1", "instances": [{"instance_id": "i-2"}], "tenant_id": "t"}
    normaliser = Normaliser(MAPPING)
    assert normaliser.normalise(message("backup.create.start", backup)).resource_id == "b-1"
    assert normaliser.normalise(message("cluster.create.end", cluster)).resource_id == "c-1"


def test_cluster_create_start_has_no_resource_id_yet():
    n = Normaliser(MAPPING).normalise(message("dbaas.cluster_create.start", {"name": "c"}))
    assert n.resource_id is None


def test_quota_is_keyed_by_tenant():
    payload = {"tenant_id": "t-1", "resource": "instances", "in_use": 2, "reserved": 0,
               "limit": 10, "updated": "2026-01-01T00:00:00"}
    n = Normaliser(MAPPING).normalise(message("dbaas.quota", payload))
    assert (n.resource_type, n.phase, n.resource_id) == (ResourceType.QUOTA, Phase.POINT, "t-1")


def test_design_note_error_carries_exception_text():
    n = Normaliser(MAPPING).normalise(message(
        "trove.backup.create.error", {"id": "b-1", "exception": "Swift is unreachable"}))
    assert (n.phase, n.exception_class, n.error_message) == (X, None, "Swift is unreachable")


USER_EXTENSION = """
operation_aliases:
  grow: resize
events:
  - name: mgmt-heartbeat
    event_type: trove.guest.heartbeat
    resource_type: instance
    operation: heartbeat
    phase: point
    resource_id: payload.guest.instance
  - name: override-exists
    event_type: trove.instance.exists
    resource_type: instance
    operation: audit
    phase: point
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "events.yaml"
    path.write_text(text)
    return path


def test_user_file_extends_and_overrides_the_builtin(tmp_path):
    mapping = load_mapping(write(tmp_path, USER_EXTENSION))
    n = Normaliser(mapping).normalise(message("trove.guest.heartbeat",
                                              {"guest": {"instance": "i-9"}}))
    assert (n.resource_type, n.operation, n.resource_id) == (I, "heartbeat", "i-9")
    assert mapping.classify("trove.instance.exists").operation == "audit"
    assert mapping.classify("dbaas.cluster_grow.end").operation == "resize"
    assert mapping.classify("dbaas.instance_create.start").operation == "create"  # built-in kept


def test_user_file_can_replace_the_builtin(tmp_path):
    mapping = load_mapping(write(tmp_path, "replace_builtin: true\n" + USER_EXTENSION))
    assert not mapping.classify("dbaas.instance_create.start").known


def test_event_mapping_setting_points_at_the_user_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TROVEMETER_EVENT_MAPPING", str(write(tmp_path, USER_EXTENSION)))
    normaliser = Normaliser.from_settings(CommonSettings())
    assert normaliser.mapping.classify("trove.guest.heartbeat").known


def test_glob_event_types(tmp_path):
    mapping = load_mapping(write(tmp_path, """
events:
  - event_type: [trove.guest.*, trove.agent.ping]
    resource_type: instance
    operation: guest
    phase: point
"""))
    assert mapping.classify("trove.guest.started").operation == "guest"
    assert mapping.classify("trove.agent.ping").known
    assert not mapping.classify("trove.agent.pong").known


@pytest.mark.parametrize("text, words", [
    ("events: [", "not valid YAML (line"),
    ("- just a list", "must be a YAML mapping"),
    ("evnets: []", "unknown top-level key(s): evnets"),
    ("version: 2", "unsupported mapping version 2"),
    ("events: {a: 1}", "events must be a list"),
    ("events: [x]", "events[0] must be a mapping"),
    ("events: [{event_type: a, pattern: b, resource_type: instance, operation: o, phase: point}]",
     "exactly one of event_type or pattern"),
    ("events: [{name: n, event_type: a, resource_type: instance, operation: o, phase: point, "
     "colour: red}]", "events[0] (n): unknown key(s) colour"),
    ("events: [{pattern: '(', resource_type: instance, operation: o, phase: point}]",
     "not a valid regex"),
    ("events: [{event_type: a, resource_type: server, operation: o, phase: point}]",
     "'server' is not a resource type"),
    ("events: [{event_type: a, resource_type: instance, operation: o, phase: later}]",
     "phase 'later' is not one of"),
    ("events: [{event_type: a, resource_type: instance, phase: point}]", "no operation"),
    ("events: [{pattern: 'a\\.(?P<x>b)', resource_type: instance, operation: '{y}', "
     "phase: point}]", "uses group(s) y"),
    ("events: [{event_type: a, resource_type: instance, operation: '{0!r}', phase: point}]",
     "plain {group} references"),
    ("events: [{event_type: a, resource_type: instance, operation: o, phase: point, "
     "resource_id: instance_id}]", "'instance_id' is not a path"),
    ("identifiers: {request: [payload.request_id]}", "unknown identifier(s) request"),
    ("resource_id: {server: [payload.id]}", "'server' is not a resource type"),
    ("operation_aliases: {grow: 3}", "operation_aliases must map"),
])
def test_invalid_mapping_is_rejected_with_a_clear_message(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(MappingError) as caught:
        load_mapping(path)
    assert str(path) in str(caught.value)
    assert words in str(caught.value)


def test_missing_mapping_file(tmp_path):
    with pytest.raises(MappingError, match="cannot read event mapping"):
        load_mapping(tmp_path / "absent.yaml")


def test_builtin_file_is_package_data():
    assert BUILTIN_MAPPING.name == "events.yaml" and BUILTIN_MAPPING.parent.name == "mapping"
    assert BUILTIN_MAPPING.is_file()
