"""Seeded Trove notification scenarios: the wire messages oslo.messaging would publish, and
the totals a correct pipeline must derive from them.

Pure: no broker clients here. ``connectors/simulator.py`` publishes what this module builds.

How a scenario is built
-----------------------
1. *Lifecycles*: instances, backups and clusters live through creates, resizes, restarts,
   backups, deletes, failures and starts that never end, on a simulated clock that begins at
   ``ScenarioConfig.start`` (an hour boundary). Every event gets its own message_id and
   _unique_id. Billing truth is accumulated while the lifecycles are planned.
2. *Noise*: duplicates, reordering, v1 bodies and garbage are laid over the lifecycle stream by
   an RNG of their own, so the same seed gives the same lifecycles (and the same billing
   truth) whatever the noise rates.
3. *Rendering*: bodies are serialised lazily in ``Scenario.messages()``, so a dry run and the
   expected totals never pay for JSON encoding.

Accounting rules (see ``ExpectedTotals``)
-----------------------------------------
- The accounting horizon is ``start + hours``, an hour boundary. Usage is billed over
  ``[start, horizon)``. Every operation event is timestamped before the horizon. After it come
  only the last audit round (period ``[horizon - 1h, horizon]``, 15-75 s after the horizon)
  and, ``closing_delay_s`` (default 900 s) after the horizon, one ``dbaas.quota`` per tenant:
  a stream processor's event time passes the horizon by that much once it has seen the whole
  scenario, so it can close the last hour even while it waits for late events.
- Billing-relevant events carry whole-second timestamps equal to the times in their payloads:
  ``dbaas.instance_create.end`` = ``trove.instance.create`` = ``launched_at``;
  ``dbaas.instance_resize_instance.end`` = ``trove.instance.modify_flavor`` = ``modify_at``
  (likewise for volumes); ``dbaas.instance_delete.end`` = ``trove.instance.delete`` =
  ``deleted_at``; backup create/delete ends. Whichever of the pair a pipeline uses, it gets the
  same second. Other events carry microseconds like real ``str(datetime.utcnow())`` values.
- An instance is billed from ``launched_at`` to ``deleted_at`` (or the horizon), under the
  flavor in force: a flavor resize applies from its end's timestamp. Volume GB-seconds follow
  ``volume_size`` the same way. A backup is billed ``size`` GB from its create end to its
  delete end (dbaas or design-note family) or the horizon, even after its instance is gone.
- Outcomes: *succeeded* = the start has an ``.end``; *failed* = it has an ``.error``;
  *abandoned* = a start whose end never comes. A failed or abandoned create bills nothing; a
  failed or abandoned resize changes nothing; a failed or abandoned delete leaves the instance
  billed to the horizon. An instance stuck by an abandoned operation gets no further
  operations but keeps being audited.
- Clusters are operations only: their member instances are not modelled as billable
  instances. ``dbaas.instance_frobnicate.*`` events are deliberately unknown and are counted in
  ``unknown_event_types``, not in ``operations``.
"""

from __future__ import annotations

import gc
import hashlib
import heapq
import json
import random
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from operator import attrgetter, itemgetter
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

MessageKind = Literal["valid", "duplicate", "garbage"]
Outcome = Literal["succeeded", "failed", "abandoned"]

EXPECTED_FORMAT = "trovemeter.expected/1"
DEFAULT_START = datetime(2026, 11, 2, tzinfo=UTC)
ROUTING_KEY_PREFIX = "notifications"

# Exactly what oslo.messaging's rabbit driver sets (../shared/fixtures/*.meta.json); every
# other AMQP property stays unset.
AMQP_PROPERTIES: Mapping[str, Any] = MappingProxyType(
    {
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "delivery_mode": 2,
        "priority": 0,
        "headers": {},
    }
)

_US = 1_000_000
_HOUR_US = 3600 * _US
_EPOCH = datetime(1970, 1, 1)  # naive UTC, like oslo's utcnow()
REGION = "RegionOne"
AVAILABILITY_ZONE = "nova"

# Trove sends its error phase at INFO; a share goes out at ERROR so that the
# `notifications.error` routing key (fixture priority-error.v2) is exercised too.
_ERROR_PRIORITY_SHARE = 0.25
_DELETE_SHARE = 0.35  # instances whose owner deletes them before the horizon
_BACKUP_DELETE_SHARE = 0.5
_DESIGN_NOTE_BACKUP_DELETE_SHARE = 0.3  # backup deletes sent as `backup.delete.*`
_CLUSTER_DELETE_SHARE = 0.4
_DUPLICATE_MAX_LAG = 8  # a duplicate is republished up to this many messages later
_NON_ASCII_NAME_SHARE = 0.1


@dataclass(frozen=True, slots=True)
class Flavor:
    id: str
    name: str
    ram_mb: int


@dataclass(frozen=True, slots=True)
class Datastore:
    name: str
    version: str
    image_id: str
    has_volumes: bool


FLAVORS: tuple[Flavor, ...] = (
    Flavor("1", "m1.tiny", 512),
    Flavor("2", "m1.small", 2048),
    Flavor("3", "m1.medium", 4096),
    Flavor("4", "m1.large", 8192),
    Flavor("5", "m1.xlarge", 16384),
)
DATASTORES: tuple[Datastore, ...] = (
    Datastore("mysql", "8.0", "2c3d4e5f-6a7b-4c8d-9e0f-1a2b3c4d5e6f", True),
    Datastore("postgresql", "16", "5b6c7d8e-9f0a-4b1c-8d2e-3f4a5b6c7d8e", True),
    Datastore("mariadb", "10.11", "8e9f0a1b-2c3d-4e4f-9a5b-6c7d8e9f0a1b", True),
    # Without volume support: no volume_size in payloads, nothing billed as volume.
    Datastore("redis", "7.2", "1f2a3b4c-5d6e-4f7a-8b9c-0d1e2f3a4b5c", False),
)
CLUSTER_DATASTORES: tuple[Datastore, ...] = (
    Datastore("mariadb", "10.11", "8e9f0a1b-2c3d-4e4f-9a5b-6c7d8e9f0a1b", True),
    Datastore("cassandra", "4.1", "4a5b6c7d-8e9f-4a0b-9c1d-2e3f4a5b6c7d", True),
)
_VOLUME_SIZES_GB = (1, 2, 5, 10, 20, 50)


@dataclass(frozen=True, slots=True)
class _Host:
    publisher_id: str
    server_ip: str
    server_type: str


_API_HOSTS = (_Host("api.trove-api-01", "192.0.2.11", "api"),
              _Host("api.trove-api-02", "192.0.2.21", "api"))
_TASKMANAGER_HOSTS = (_Host("taskmanager.trove-tm-01", "192.0.2.12", "taskmanager"),
                      _Host("taskmanager.trove-tm-02", "192.0.2.22", "taskmanager"))
_CONDUCTOR_HOSTS = (_Host("conductor.trove-cond-01", "192.0.2.13", "conductor"),)
_AUDIT_HOST = _TASKMANAGER_HOSTS[0]


# ------------------------------------------------------------------------------- failures

_DIST = "/usr/lib/python3/dist-packages"
_Frame = tuple[str, int, str, str]  # file (under dist-packages), line, function, source line


@dataclass(frozen=True, slots=True)
class _Failure:
    """One way an operation fails: the exception and the traceback Trove formats for it."""

    exception_class: str
    message: str  # str.format fields: {uuid} {hex} {n} {nova_id}
    frames: tuple[_Frame, ...]

    def render(self, rng: random.Random, nova_id: str) -> tuple[str, str]:
        message = self.message.format(
            uuid=_uuid4(rng), hex=_hex32(rng), n=rng.randrange(2, 9), nova_id=nova_id
        )
        lines = ["Traceback (most recent call last):\n"]
        for path, line, function, source in self.frames:
            lines.append(f'  File "{_DIST}/{path}", line {line}, in {function}\n    {source}\n')
        lines.append(f"{self.exception_class}: {message}\n")
        return message, "".join(lines)


_RPC_CALL_FRAMES: tuple[_Frame, ...] = (
    ("trove/guestagent/api.py", 88, "_call",
     "result = cctxt.call(self.context, method_name, **kwargs)"),
    ("oslo_messaging/rpc/client.py", 190, "call", "result = self.transport._send("),
    ("oslo_messaging/transport.py", 123, "_send", "return self._driver.send(target, ctxt, message,"),
    ("oslo_messaging/_drivers/amqpdriver.py", 789, "send",
     "return self._send(target, ctxt, message, wait_for_reply, timeout,"),
    ("oslo_messaging/_drivers/amqpdriver.py", 778, "_send", "result = self._waiter.wait(msg_id, timeout,"),
    ("oslo_messaging/_drivers/amqpdriver.py", 641, "wait",
     "message = self.waiters.get(msg_id, timeout=timeout)"),
    ("oslo_messaging/_drivers/amqpdriver.py", 509, "get", "raise oslo_messaging.MessagingTimeout("),
)
_NOVA_POST_FRAMES: tuple[_Frame, ...] = (
    ("novaclient/base.py", 364, "_create", "resp, body = self.api.client.post(url, body=body)"),
    ("keystoneauth1/adapter.py", 401, "post", "return self.request(url, 'POST', **kwargs)"),
    ("novaclient/client.py", 77, "request", "raise exceptions.from_response(resp, body, url, method)"),
)
_TIMEOUT_MESSAGE = "Timed out waiting for a reply to message ID {hex}"
_QUOTA_MESSAGE = ("Quota exceeded for cores: Requested {n}, but already used 20 of 20 cores "
                  "(HTTP 403) (Request-ID: req-{uuid})")
_MESSAGING_TIMEOUT = "oslo_messaging.exceptions.MessagingTimeout"
_TROVE_ERROR = "trove.common.exception.TroveError"
_NOVA_FORBIDDEN = "novaclient.exceptions.Forbidden"
_SWIFT_ERROR = "swiftclient.exceptions.ClientException"

_FAILURES: dict[tuple[str, str], tuple[_Failure, ...]] = {
    ("instance", "create"): (
        _Failure(_TROVE_ERROR, "Server creation failed: No valid host was found.", (
            ("trove/taskmanager/models.py", 512, "create_instance",
             "self._create_server(flavor, image_id, datastore_manager)"),
            ("trove/taskmanager/models.py", 790, "_create_server", "raise TroveError(msg)"),
        )),
        _Failure(_NOVA_FORBIDDEN, _QUOTA_MESSAGE, (
            ("trove/taskmanager/models.py", 512, "create_instance",
             "self._create_server(flavor, image_id, datastore_manager)"),
            ("trove/taskmanager/models.py", 771, "_create_server",
             "server = self.nova_client.servers.create("),
            ("novaclient/v2/servers.py", 1644, "create",
             "return self._boot(response_key, *boot_args, **boot_kwargs)"),
            ("novaclient/v2/servers.py", 1010, "_boot",
             "return self._create('/servers', body, response_key,"),
            *_NOVA_POST_FRAMES,
        )),
        _Failure("trove.common.exception.VolumeCreationFailure",
                 "Failed to create a volume in Nova.", (
            ("trove/taskmanager/models.py", 497, "create_instance",
             "volume_info = self._build_volume_info(datastore_manager, volume_size=volume_size,"),
            ("trove/taskmanager/models.py", 1004, "_build_volume_info",
             "volume_info = self._create_volume(volume_size, volume_type, datastore_manager)"),
            ("trove/taskmanager/models.py", 1061, "_create_volume", "raise VolumeCreationFailure()"),
        )),
        _Failure(_MESSAGING_TIMEOUT, _TIMEOUT_MESSAGE, (
            ("trove/taskmanager/models.py", 540, "create_instance",
             "self._guest_prepare(flavor['ram'], volume_info, packages, databases, users,"),
            ("trove/taskmanager/models.py", 702, "_guest_prepare", "self.guest.prepare("),
            ("trove/guestagent/api.py", 312, "prepare", "self._cast_with_consumer("),
            *_RPC_CALL_FRAMES,
        )),
    ),
    ("instance", "resize_flavor"): (
        _Failure(_NOVA_FORBIDDEN, _QUOTA_MESSAGE, (
            ("trove/taskmanager/models.py", 1384, "resize_flavor", "action.execute()"),
            ("trove/taskmanager/models.py", 2097, "_initiate_nova_action",
             "self.instance.server.resize(self.new_flavor_id)"),
            ("novaclient/v2/servers.py", 2010, "resize",
             "return self._action('resize', server, info=info, **kwargs)"),
            *_NOVA_POST_FRAMES,
        )),
        _Failure(_MESSAGING_TIMEOUT, _TIMEOUT_MESSAGE, (
            ("trove/taskmanager/models.py", 1384, "resize_flavor", "action.execute()"),
            ("trove/taskmanager/models.py", 2050, "_assert_guest_is_ok", "self.instance.guest.restart()"),
            ("trove/guestagent/api.py", 402, "restart",
             "self._call(\"restart\", self.agent_high_timeout, version=version)"),
            *_RPC_CALL_FRAMES,
        )),
        _Failure(_TROVE_ERROR,
                 "Resize of instance failed: server status is ERROR, expected VERIFY_RESIZE.", (
            ("trove/taskmanager/models.py", 1384, "resize_flavor", "action.execute()"),
            ("trove/taskmanager/models.py", 2115, "_wait_for_nova_action", "raise TroveError(msg)"),
        )),
    ),
    ("instance", "resize_volume"): (
        _Failure("cinderclient.exceptions.OverLimit",
                 "VolumeSizeExceedsAvailableQuota: Requested volume or snapshot exceeds allowed "
                 "gigabytes quota. (HTTP 413) (Request-ID: req-{uuid})", (
            ("trove/taskmanager/models.py", 1402, "resize_volume", "action.execute()"),
            ("trove/taskmanager/models.py", 1952, "_extend",
             "self.instance.volume_client.volumes.extend(volume_id, new_size)"),
            ("cinderclient/v3/volumes.py", 163, "extend",
             "return self._action('os-extend', volume, {'new_size': new_size})"),
            ("cinderclient/client.py", 226, "request",
             "raise exceptions.from_response(resp, body)"),
        )),
        _Failure(_TROVE_ERROR, "Volume resize failed: volume {uuid} went to error_extending.", (
            ("trove/taskmanager/models.py", 1402, "resize_volume", "action.execute()"),
            ("trove/taskmanager/models.py", 1966, "_verify_extend", "raise TroveError(msg)"),
        )),
        _Failure(_MESSAGING_TIMEOUT, _TIMEOUT_MESSAGE, (
            ("trove/taskmanager/models.py", 1402, "resize_volume", "action.execute()"),
            ("trove/taskmanager/models.py", 1930, "_unmount_volume",
             "self.instance.guest.unmount_volume(device_path=self.old_device)"),
            ("trove/guestagent/api.py", 511, "unmount_volume", "self._call(\"unmount_volume\","),
            *_RPC_CALL_FRAMES,
        )),
    ),
    ("instance", "restart"): (
        _Failure(_MESSAGING_TIMEOUT, _TIMEOUT_MESSAGE, (
            ("trove/taskmanager/models.py", 1460, "restart", "self.guest.restart()"),
            ("trove/guestagent/api.py", 402, "restart",
             "self._call(\"restart\", self.agent_high_timeout, version=version)"),
            *_RPC_CALL_FRAMES,
        )),
        _Failure("trove.common.exception.GuestTimeout",
                 "Timeout trying to connect to the Guest Agent.", (
            ("trove/taskmanager/models.py", 1460, "restart", "self.guest.restart()"),
            ("trove/guestagent/api.py", 402, "restart",
             "self._call(\"restart\", self.agent_high_timeout, version=version)"),
            ("trove/guestagent/api.py", 96, "_call", "raise exception.GuestTimeout()"),
        )),
    ),
    ("instance", "delete"): (
        _Failure("trove.common.exception.PollTimeOut", "Polling request timed out.", (
            ("trove/taskmanager/models.py", 1288, "_delete_resources",
             "utils.poll_until(server_is_finished, sleep_time=2,"),
            ("trove/common/utils.py", 215, "poll_until", "raise exception.PollTimeOut"),
        )),
        _Failure("novaclient.exceptions.Conflict",
                 "Cannot 'delete' instance {nova_id} while it is in task_state rebuilding "
                 "(HTTP 409) (Request-ID: req-{uuid})", (
            ("trove/taskmanager/models.py", 1265, "_delete_resources", "self.server.delete()"),
            ("novaclient/v2/servers.py", 1751, "delete",
             "return self._delete(\"/servers/%s\" % base.getid(server))"),
            ("novaclient/base.py", 390, "_delete", "resp, body = self.api.client.delete(url)"),
            ("novaclient/client.py", 77, "request", "raise exceptions.from_response(resp, body, url, method)"),
        )),
    ),
    ("backup", "create"): (
        _Failure(_SWIFT_ERROR, "Object PUT failed: http://swift.example.net:8080/v1/AUTH_{hex}/"
                 "database_backups/{uuid}.xbstream.gz.enc 503 Service Unavailable", (
            ("trove/conductor/manager.py", 148, "update_backup", "self._verify_backup(backup)"),
            ("trove/backup/models.py", 410, "verify_swift_auth_token",
             "client.head_container(CONF.backup_swift_container)"),
            ("swiftclient/client.py", 1801, "_retry", "raise ClientException.from_response(resp,"),
        )),
        _Failure("trove.common.exception.BackupCreationError", "Unable to create backup.", (
            ("trove/conductor/manager.py", 152, "update_backup", "backup.save()"),
            ("trove/backup/models.py", 88, "create", "raise exception.BackupCreationError()"),
        )),
        _Failure(_MESSAGING_TIMEOUT, _TIMEOUT_MESSAGE, (
            ("trove/taskmanager/models.py", 1520, "create_backup",
             "self.guest.create_backup(backup_info)"),
            ("trove/guestagent/api.py", 437, "create_backup", "self._call(\"create_backup\","),
            *_RPC_CALL_FRAMES,
        )),
    ),
    ("backup", "delete"): (
        _Failure(_SWIFT_ERROR, "Object DELETE failed: http://swift.example.net:8080/v1/AUTH_{hex}/"
                 "database_backups/{uuid}.xbstream.gz.enc 503 Service Unavailable", (
            ("trove/taskmanager/models.py", 2610, "delete_backup", "_delete(backup)"),
            ("trove/taskmanager/models.py", 2598, "_delete", "storage.delete_object(container, obj)"),
            ("swiftclient/client.py", 1801, "_retry", "raise ClientException.from_response(resp,"),
        )),
        _Failure(_TROVE_ERROR, "Failed to delete backup {uuid}: backup is in use by a restore.", (
            ("trove/taskmanager/models.py", 2610, "delete_backup", "_delete(backup)"),
            ("trove/taskmanager/models.py", 2590, "_delete", "raise TroveError(msg)"),
        )),
    ),
    ("cluster", "create"): (
        _Failure(_TROVE_ERROR, "Some instances of cluster {uuid} failed to become active.", (
            ("trove/common/strategies/cluster/experimental/galera_common/taskmanager.py", 121,
             "create_cluster", "self._all_instances_ready(instance_ids, cluster_id)"),
            ("trove/taskmanager/models.py", 318, "_all_instances_ready", "raise TroveError(msg)"),
        )),
        _Failure(_NOVA_FORBIDDEN, _QUOTA_MESSAGE, (
            ("trove/taskmanager/models.py", 771, "_create_server",
             "server = self.nova_client.servers.create("),
            ("novaclient/v2/servers.py", 1644, "create",
             "return self._boot(response_key, *boot_args, **boot_kwargs)"),
            *_NOVA_POST_FRAMES,
        )),
    ),
    ("cluster", "grow"): (
        _Failure(_MESSAGING_TIMEOUT, _TIMEOUT_MESSAGE, (
            ("trove/common/strategies/cluster/experimental/galera_common/taskmanager.py", 211,
             "grow_cluster", "guest.install_cluster(replication_user, cluster_configuration,"),
            ("trove/guestagent/api.py", 620, "install_cluster", "self._call(\"install_cluster\","),
            *_RPC_CALL_FRAMES,
        )),
        _Failure(_TROVE_ERROR, "Timeout for all instance service statuses to become ready.", (
            ("trove/common/strategies/cluster/experimental/galera_common/taskmanager.py", 198,
             "grow_cluster", "self._all_instances_ready(new_instance_ids, cluster_id)"),
            ("trove/taskmanager/models.py", 318, "_all_instances_ready", "raise TroveError(msg)"),
        )),
    ),
    ("cluster", "delete"): (
        _Failure("trove.common.exception.PollTimeOut", "Polling request timed out.", (
            ("trove/taskmanager/models.py", 402, "delete_cluster",
             "utils.poll_until(all_instances_marked_deleted,"),
            ("trove/common/utils.py", 215, "poll_until", "raise exception.PollTimeOut"),
        )),
    ),
}
_FAILURES[("instance", "reboot")] = _FAILURES[("instance", "restart")]


# ------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class ScenarioConfig:
    """Everything that determines a scenario; equal configs give byte-identical output."""

    seed: int = 1
    tenants: int = 3
    instances: int = 20  # instance lifecycles (more when message_budget asks for them)
    hours: int = 24  # simulated duration; the accounting horizon is start + hours
    start: datetime = DEFAULT_START  # must be an hour boundary, timezone-aware
    failure_rate: float = 0.05  # share of operations that end in `.error`
    abandon_rate: float = 0.02  # share of operations whose start never gets an end
    duplicate_rate: float = 0.01  # share of valid messages published a second time
    reorder_rate: float = 0.02  # share of starts held back past their end; of adjacent swaps
    garbage_rate: float = 0.005  # chance of a garbage body before each published message
    v1_share: float = 0.0  # share of valid messages sent with driver `messaging` (no envelope)
    backups: bool = True
    clusters: bool = True
    exists_audits: bool = True
    message_budget: int | None = None  # add instance lifecycles until ~this many messages
    # The scenario's last messages (one dbaas.quota per tenant) are this long after the horizon,
    # so that a stream processor waiting this long for late events still closes the last hour.
    closing_delay_s: int = 900
    exchange: str = "trove"

    def __post_init__(self) -> None:
        for name in ("failure_rate", "abandon_rate", "duplicate_rate", "reorder_rate",
                     "garbage_rate", "v1_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}")
        if self.failure_rate + self.abandon_rate > 1.0:
            raise ValueError("failure_rate + abandon_rate must not exceed 1")
        if self.tenants < 1 or self.instances < 0 or self.hours < 1:
            raise ValueError("need tenants >= 1, instances >= 0 and hours >= 1")
        if self.message_budget is not None and self.message_budget < 1:
            raise ValueError("message_budget must be positive")
        if self.closing_delay_s < 0:
            raise ValueError("closing_delay_s must not be negative")
        if self.start.utcoffset() != timedelta(0):
            raise ValueError("start must be timezone-aware UTC")
        if self.start.minute or self.start.second or self.start.microsecond:
            raise ValueError("start must be on an hour boundary")

    @property
    def horizon(self) -> datetime:
        return self.start + timedelta(hours=self.hours)

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed, "tenants": self.tenants, "instances": self.instances,
            "hours": self.hours, "start": _iso_z(self.start), "horizon": _iso_z(self.horizon),
            "failure_rate": self.failure_rate, "abandon_rate": self.abandon_rate,
            "duplicate_rate": self.duplicate_rate, "reorder_rate": self.reorder_rate,
            "garbage_rate": self.garbage_rate, "v1_share": self.v1_share,
            "backups": self.backups, "clusters": self.clusters,
            "exists_audits": self.exists_audits, "message_budget": self.message_budget,
            "closing_delay_s": self.closing_delay_s, "exchange": self.exchange,
        }


# ------------------------------------------------------------------------------- output


class WireMessage(NamedTuple):  # a NamedTuple: immutable and cheap to make, 100k+ per run
    """One AMQP publish, exactly as oslo.messaging would make it."""

    body: bytes
    routing_key: str
    exchange: str
    properties: Mapping[str, Any]
    event_type: str | None  # None for garbage
    kind: MessageKind
    # Simulated seconds after the scenario start at which it is sent; never decreases along
    # the stream (a held-back start is sent when its end is), so a compressed clock can pace it.
    sent_offset: float


@dataclass(frozen=True)
class DurationStats:
    count: int
    p50_s: float
    p95_s: float
    max_s: float


@dataclass(frozen=True)
class ExpectedTotals:
    """What a correct pipeline must derive from the scenario. ``to_json()`` is the file format:

    - ``messages``: published ``total`` = ``valid`` + ``duplicate`` + ``garbage``; ``v1``/``v2``
      (of valid), ``garbage_by_reason``, ``by_event_type`` (valid), ``by_routing_key`` (all),
      ``ends_before_starts`` (operations whose end/error is published before the start),
      ``adjacent_swaps``.
    - ``message_ids``: ``count`` and ``sha256`` of ``"\\n".join(sorted(valid message_ids))``.
    - ``operations``: ``[{resource_type, operation, outcome, count}]``, every outcome listed
      (0 too) for each (resource_type, operation) that occurs; ``failures``:
      ``[{tenant_id, resource_type, operation, exception_class, count}]``.
    - ``billing``: ``horizon`` and, per tenant, ``instance_seconds`` {flavor_id: s},
      ``volume_gb_seconds``, ``backup_gb_seconds``, ``exists_seconds``; absent means 0.
    - ``operation_durations``: ``{"instance.create": {count, p50_s, p95_s, max_s}, ...}``
      (start to end or error, nearest-rank percentiles).
    """

    scenario: dict[str, Any]
    messages: dict[str, Any]  # counts: total, valid, duplicate, garbage, v1, v2, ... (to_json)
    message_id_count: int
    message_id_sha256: str  # sha256 of "\n".join(sorted(valid message_ids))
    operations: dict[tuple[str, str, Outcome], int]  # (resource_type, operation, outcome)
    failures: dict[tuple[str, str, str, str], int]  # (tenant, resource_type, operation, class)
    unknown_event_types: dict[str, int]
    resources: dict[str, int]
    instance_seconds: dict[str, dict[str, int]]  # tenant -> flavor_id -> seconds
    volume_gb_seconds: dict[str, int]  # tenant -> GB * seconds
    backup_gb_seconds: dict[str, float]  # tenant -> GB * seconds (sizes have 2 decimals)
    exists_seconds: dict[str, int]  # tenant -> sum of audit period lengths (Ceilometer meter)
    operation_durations: dict[str, DurationStats]  # "instance.create" -> stats

    def to_json(self) -> dict[str, Any]:
        return {
            "format": EXPECTED_FORMAT,
            "scenario": self.scenario,
            "messages": self.messages,
            "message_ids": {"count": self.message_id_count, "sha256": self.message_id_sha256},
            "operations": [
                {"resource_type": r, "operation": o, "outcome": outcome, "count": n}
                for (r, o, outcome), n in sorted(self.operations.items())
            ],
            "failures": [
                {"tenant_id": t, "resource_type": r, "operation": o, "exception_class": c,
                 "count": n}
                for (t, r, o, c), n in sorted(self.failures.items())
            ],
            "unknown_event_types": dict(sorted(self.unknown_event_types.items())),
            "resources": self.resources,
            "billing": {
                "horizon": self.scenario["horizon"],
                "instance_seconds": {t: dict(sorted(f.items()))
                                     for t, f in sorted(self.instance_seconds.items())},
                "volume_gb_seconds": dict(sorted(self.volume_gb_seconds.items())),
                "backup_gb_seconds": dict(sorted(self.backup_gb_seconds.items())),
                "exists_seconds": dict(sorted(self.exists_seconds.items())),
            },
            "operation_durations": {
                name: {"count": s.count, "p50_s": s.p50_s, "p95_s": s.p95_s, "max_s": s.max_s}
                for name, s in sorted(self.operation_durations.items())
            },
        }


# ---------------------------------------------------------------------- planned events
#
# Bodies are assembled from JSON fragments instead of json.dumps of a whole dict: the result
# is exactly what json.dumps gives (default separators, ASCII escapes, insertion order; the
# unit tests check `json.dumps(json.loads(inner)) == inner` for every message), at a
# fraction of the cost, because the large constant parts (an instance's usage fields, a
# user's request context) are serialised once.


def _json_members(fields: dict[str, Any]) -> str:
    """`, "key": value` for each field: members to append to a serialised object."""
    return ", " + json.dumps(fields)[1:-1] if fields else ""


class _SplicedPayload(NamedTuple):
    """A serialised object (shared, e.g. an instance's usage fields) with more members
    appended (e.g. the audit period of one hour)."""

    base_json: str
    more_members: str = ""

    def json(self) -> str:
        if not self.more_members:
            return self.base_json
        return f"{self.base_json[:-1]}{self.more_members}}}"


@dataclass(frozen=True, slots=True)
class _Caller:
    """One user's RequestContext, flattened into `_context_*` keys as oslo.messaging does
    with a redacted to_dict(); pre-serialised around the per-request `_context_request_id`."""

    tenant_id: str
    user_id: str
    client_ip: str
    members_before_request_id: str
    members_after_request_id: str


def _caller(tenant_id: str, user_id: str, client_ip: str) -> _Caller:
    before = _json_members({
        "_context_user": user_id, "_context_project_id": tenant_id,
        "_context_system_scope": None, "_context_project": tenant_id,
        "_context_domain": None, "_context_user_domain": None,
        "_context_project_domain": None, "_context_is_admin": False,
        "_context_read_only": False, "_context_show_deleted": False,
        "_context_auth_token": None,
    })
    after = _json_members({
        "_context_global_request_id": None, "_context_resource_uuid": None,
        "_context_roles": ["member", "reader"],
        "_context_user_identity": f"{user_id} {tenant_id} - - -",
        "_context_is_admin_project": True,
    })
    return _Caller(tenant_id, user_id, client_ip, before, after)


class _RequestPayload(NamedTuple):
    """A family-1 payload: the sending host's five base fields, then the operation's fields
    (serialised once for its start and its end or error), then those of the phase."""

    caller: _Caller
    host: _Host
    request_id: str
    field_members: str
    phase_members: str = ""

    def json(self) -> str:
        caller, host = self.caller, self.host
        return (
            f'{{"tenant_id": "{caller.tenant_id}", "client_ip": "{caller.client_ip}", '
            f'"server_ip": "{host.server_ip}", "server_type": "{host.server_type}", '
            f'"request_id": "{self.request_id}"{self.field_members}{self.phase_members}}}'
        )


_PayloadLike = _SplicedPayload | _RequestPayload


@dataclass(slots=True)
class _Event:
    t_us: int  # event time, µs since the Unix epoch (the body's timestamp)
    seq: int
    event_type: str
    priority: str
    host: _Host
    payload: _PayloadLike
    caller: _Caller | None  # None: plain-dict context, no _context_* keys on the wire
    request_id: str | None
    message_id: str
    unique_id: str
    v1: bool
    publish_key: tuple[int, int, int]


def _inner_json(event: _Event, message_id: str, unique_id: str) -> str:
    """The notification as oslo.messaging serialises it (the v1 body; v2's oslo.message).
    Ids, event types, priorities, request ids and timestamps are generated here from
    characters JSON never escapes, so they are quoted as they are."""
    caller = event.caller
    context = "" if caller is None else (
        f'{caller.members_before_request_id}, "_context_request_id": "{event.request_id}"'
        f"{caller.members_after_request_id}"
    )
    timestamp = str(_EPOCH + timedelta(microseconds=event.t_us))  # str(utcnow()) format
    return (
        f'{{"message_id": "{message_id}", "publisher_id": "{event.host.publisher_id}", '
        f'"event_type": "{event.event_type}", "priority": "{event.priority}", '
        f'"payload": {event.payload.json()}, "timestamp": "{timestamp}", '
        f'"_unique_id": "{unique_id}"{context}}}'
    )


def _envelope(inner_json: str) -> bytes:
    """The messagingv2 envelope: the notification JSON-encoded a second time, as a string."""
    message = encode_basestring_ascii(inner_json)
    return f'{{"oslo.version": "2.0", "oslo.message": {message}}}'.encode("ascii")


def _render_body(event: _Event) -> bytes:
    inner = _inner_json(event, event.message_id, event.unique_id)
    return inner.encode("ascii") if event.v1 else _envelope(inner)


_ROUTING_KEYS = {priority: f"{ROUTING_KEY_PREFIX}.{priority.lower()}"
                 for priority in ("INFO", "ERROR")}


# ------------------------------------------------------------------------------ helpers


def _uuid4(rng: random.Random) -> str:
    h = _hex32(rng)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _hex32(rng: random.Random) -> str:
    """uuid4().hex from a seeded RNG: version 4, RFC 4122 variant."""
    n = rng.getrandbits(128)
    n = (n & ~(0xF000 << 64) & ~(0xC000 << 48)) | (4 << 76) | (0x8000 << 48)
    return "%032x" % n


def _iso_z(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso(t_us: int) -> str:
    """Payload time format of Trove (timeutils.isotime without zone): YYYY-MM-DDTHH:MM:SS."""
    return (_EPOCH + timedelta(seconds=t_us // _US)).isoformat()


def _ceil_second(t_us: int) -> int:
    return -(-t_us // _US) * _US


def _percentile(ordered: list[float], q: int) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[rank - 1]


@dataclass
class _Tenant:
    id: str
    index: int
    callers: list[_Caller]


@dataclass
class _Instance:
    index: int
    id: str
    name: str
    tenant: _Tenant
    caller: _Caller
    datastore: Datastore
    nova_instance_id: str
    nova_volume_id: str
    created_us: int
    launched_us: int = 0
    # (from_us, flavor, volume_gb or None): the state in force from that moment on
    states: list[tuple[int, Flavor, int | None]] = field(default_factory=list)
    ended_us: int | None = None  # delete end
    _usage_json: dict[tuple[int, str, int], str] = field(default_factory=dict)

    @property
    def flavor(self) -> Flavor:
        return self.states[-1][1]

    @property
    def volume_gb(self) -> int | None:
        return self.states[-1][2]

    def usage_payload(self, at_us: int, status: str, more_members: str = "",
                      launched_us: int | None = None) -> _SplicedPayload:
        """Payload of trove.instance.* (and of design-note instance events) at ``at_us``,
        followed by ``more_members`` (see ``_json_members``). ``launched_us`` overrides
        ``launched_at``, as Trove does on modify_* (it sends the modify time there)."""
        index = len(self.states) - 1
        while index > 0 and self.states[index][0] > at_us:
            index -= 1
        launched_us = self.launched_us if launched_us is None else launched_us
        key = (index, status, launched_us)
        base_json = self._usage_json.get(key)
        if base_json is None:
            _, flavor, volume = self.states[index]
            payload: dict[str, Any] = {
                "created_at": _iso(self.created_us), "launched_at": _iso(launched_us),
                "instance_id": self.id, "instance_name": self.name, "display_name": self.name,
                "instance_type": flavor.name, "instance_type_id": flavor.id,
                "instance_size": flavor.ram_mb, "nova_instance_id": self.nova_instance_id,
                "region": REGION, "state": status, "state_description": status,
                "tenant_id": self.tenant.id, "user_id": self.caller.user_id,
                "service_id": self.datastore.name, "availability_zone": AVAILABILITY_ZONE,
            }
            if volume is not None:
                payload["volume_size"] = volume
                payload["nova_volume_id"] = self.nova_volume_id
            base_json = self._usage_json[key] = json.dumps(payload)
        return _SplicedPayload(base_json, more_members)


@dataclass
class _Backup:
    id: str
    name: str
    instance: _Instance
    description: str
    size_centi_gb: int
    created_us: int  # start
    completed_us: int  # create end


@dataclass
class _Operation:
    resource_type: str
    operation: str
    outcome: Outcome
    start: _Event
    finish: _Event | None  # end or error


# ------------------------------------------------------------------------------ planner

# (operation, weight, longest duration in seconds) of what may happen to a live instance
_INSTANCE_OPERATIONS: tuple[tuple[str, float, int], ...] = (
    ("resize_flavor", 3.0, 900),
    ("resize_volume", 2.0, 600),
    ("restart", 3.0, 180),
    ("reboot", 1.5, 120),  # design-note family: instance.reboot.*
    ("backup", 4.0, 1200),
    ("frobnicate", 0.5, 10),  # unknown event type
)
_GARBAGE_REASONS = ("not_json", "truncated", "no_message", "wrong_version",
                    "missing_event_type", "inner_not_json")
_NOT_JSON_BODIES = (
    b"",
    b"<html><body><h1>502 Bad Gateway</h1></body></html>",
    b"\x80\x04\x95\x1f\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x07payload\x94N.",
    b"notifications.info: heartbeat",
)
_AUDIT_SPACING_US = 2_000  # the periodic task walks the instances one after the other


class _Planner:
    """Plans lifecycles with one RNG, message ids with a second and noise with a third, so that
    the lifecycles (and the billing truth) do not depend on the noise settings."""

    def __init__(self, config: ScenarioConfig) -> None:
        self.cfg = config
        self.life = random.Random(f"trovemeter-sim:{config.seed}:lifecycles")
        self.ids = random.Random(f"trovemeter-sim:{config.seed}:ids")
        self.noise = random.Random(f"trovemeter-sim:{config.seed}:noise")
        self.start_us = (config.start - _EPOCH.replace(tzinfo=UTC)) // timedelta(microseconds=1)
        self.horizon_us = self.start_us + config.hours * _HOUR_US
        span_us = self.horizon_us - self.start_us
        self.creation_window_us = span_us * 6 // 10
        self.mean_gap_us = max(600 * _US, min(4 * _HOUR_US, span_us // 6))
        # Operations end before the horizon; only the last audit round and the closing
        # quotas lie past it.
        self.last_op_us = self.horizon_us - 120 * _US
        self.events: list[_Event] = []
        self.operations: list[_Operation] = []
        self.failures: Counter[tuple[str, str, str, str]] = Counter()
        self.unknown: Counter[str] = Counter()
        self.resources: Counter[str] = Counter()
        self.live_at_horizon: Counter[str] = Counter()  # tenant -> instances
        self.instance_seconds: dict[str, Counter[str]] = {}
        self.volume_gb_seconds: Counter[str] = Counter()
        self.backup_centi_gb_seconds: Counter[str] = Counter()
        self.exists_seconds: Counter[str] = Counter()
        self.tenants = [self._tenant(i) for i in range(config.tenants)]
        # Trove's periodic task audits every live instance a little after each hour.
        self.audit_rounds_us = [
            self.start_us + k * _HOUR_US + self.life.randrange(15 * _US, 75 * _US)
            for k in range(1, config.hours + 1)
        ]
        self.audit_periods = [  # serialised once: every live instance repeats them
            _json_members({"audit_period_beginning": _iso(self.start_us + (k - 1) * _HOUR_US),
                           "audit_period_ending": _iso(self.start_us + k * _HOUR_US)})
            for k in range(1, config.hours + 1)
        ]

    # -- building blocks

    def _tenant(self, index: int) -> _Tenant:
        tenant_id = _hex32(self.life)
        client_ip = f"203.0.113.{10 + index % 240}"
        callers = [_caller(tenant_id, _hex32(self.life), client_ip)
                   for _ in range(self.life.randint(1, 3))]
        return _Tenant(tenant_id, index, callers)

    def emit(self, t_us: int, event_type: str, host: _Host, payload: _PayloadLike,
             caller: _Caller | None = None, request_id: str | None = None,
             priority: str = "INFO") -> _Event:
        seq = len(self.events)
        event = _Event(t_us, seq, event_type, priority, host, payload, caller, request_id,
                       _uuid4(self.ids), _hex32(self.ids),
                       self.noise.random() < self.cfg.v1_share, (t_us, seq, 0))
        self.events.append(event)
        return event

    def _draw_outcome(self) -> Outcome:
        u = self.life.random()
        if u < self.cfg.failure_rate:
            return "failed"
        if u < self.cfg.failure_rate + self.cfg.abandon_rate:
            return "abandoned"
        return "succeeded"

    def _finish_time(self, t_us: int, duration_s: tuple[int, int], whole_second: bool) -> int:
        finish_us = t_us + self.life.randrange(duration_s[0] * _US, duration_s[1] * _US)
        return _ceil_second(finish_us) if whole_second else finish_us

    def _error_priority(self) -> str:
        return "ERROR" if self.life.random() < _ERROR_PRIORITY_SHARE else "INFO"

    def _record(self, resource_type: str, operation: str, tenant_id: str, outcome: Outcome,
                start: _Event, finish: _Event | None, exception_class: str | None = None) -> None:
        self.operations.append(_Operation(resource_type, operation, outcome, start, finish))
        if exception_class is not None:
            self.failures[(tenant_id, resource_type, operation, exception_class)] += 1
        if finish is not None and self.noise.random() < self.cfg.reorder_rate:
            # The start comes from another host than its end and reaches RabbitMQ after it.
            start.publish_key = (finish.publish_key[0], finish.publish_key[1], 1)

    def dbaas_operation(
        self, *, resource_type: str, wire_name: str, operation: str, caller: _Caller,
        t_us: int, duration_s: tuple[int, int], fields: dict[str, Any], end_host: _Host,
        whole_second_end: bool, end_fields: dict[str, Any] | None = None,
        error_fields: dict[str, Any] | None = None, nova_id: str = "",
    ) -> tuple[Outcome, int]:
        """A family-1 operation `dbaas.<wire_name>.start|end|error`, joined by request_id.
        The start comes from an API host. Returns the outcome and the finish time (the start
        time when abandoned)."""
        life = self.life
        request_id = "req-" + _uuid4(life)
        api = life.choice(_API_HOSTS)
        field_members = _json_members(fields)
        start = self.emit(t_us, f"dbaas.{wire_name}.start", api,
                          _RequestPayload(caller, api, request_id, field_members),
                          caller, request_id)
        outcome = self._draw_outcome()
        if outcome == "abandoned":
            self._record(resource_type, operation, caller.tenant_id, outcome, start, None)
            return outcome, t_us
        finish_us = self._finish_time(t_us, duration_s, whole_second_end)
        # An end or error repeats the start's fields (the notification object accumulates them).
        if outcome == "failed":
            failure = life.choice(_FAILURES[(resource_type, operation)])
            message, traceback = failure.render(life, nova_id or _uuid4(life))
            error_members = _json_members(
                {**(error_fields or {}), "message": message, "exception": traceback})
            finish = self.emit(finish_us, f"dbaas.{wire_name}.error", end_host,
                               _RequestPayload(caller, end_host, request_id, field_members,
                                               error_members),
                               caller, request_id, self._error_priority())
            self._record(resource_type, operation, caller.tenant_id, outcome, start, finish,
                         failure.exception_class)
        else:
            finish = self.emit(finish_us, f"dbaas.{wire_name}.end", end_host,
                               _RequestPayload(caller, end_host, request_id, field_members,
                                               _json_members(end_fields or {})),
                               caller, request_id)
            self._record(resource_type, operation, caller.tenant_id, outcome, start, finish)
        return outcome, finish_us

    def design_note_operation(
        self, *, resource_type: str, operation: str, tenant_id: str, t_us: int,
        duration_s: tuple[int, int],
        payload: Callable[[str, int, dict[str, Any]], _PayloadLike],
        statuses: tuple[str, str, str], whole_second_end: bool,
    ) -> tuple[Outcome, int]:
        """A design-note operation `<resource>.<operation>.start|end|error` from the
        taskmanager: no request id anywhere, joined by the resource id in the payload.
        ``payload(status, at_us, extra_fields)`` builds each phase's payload; ``statuses``
        are the resource's status at start, end and error."""
        life = self.life
        host = life.choice(_TASKMANAGER_HOSTS)
        prefix = f"{resource_type}.{operation}"
        start_status, end_status, error_status = statuses
        start = self.emit(t_us, f"{prefix}.start", host, payload(start_status, t_us, {}))
        outcome = self._draw_outcome()
        if outcome == "abandoned":
            self._record(resource_type, operation, tenant_id, outcome, start, None)
            return outcome, t_us
        finish_us = self._finish_time(t_us, duration_s, whole_second_end)
        if outcome == "failed":
            failure = life.choice(_FAILURES[(resource_type, operation)])
            _, traceback = failure.render(life, _uuid4(life))
            finish = self.emit(finish_us, f"{prefix}.error", host,
                               payload(error_status, finish_us, {"exception": traceback}),
                               priority=self._error_priority())
            self._record(resource_type, operation, tenant_id, outcome, start, finish,
                         failure.exception_class)
        else:
            finish = self.emit(finish_us, f"{prefix}.end", host,
                               payload(end_status, finish_us, {}))
            self._record(resource_type, operation, tenant_id, outcome, start, finish)
        return outcome, finish_us

    # -- instances

    def plan_instance(self, index: int) -> None:
        life = self.life
        tenant = life.choice(self.tenants)
        caller = life.choice(tenant.callers)
        datastore = life.choice(DATASTORES)
        flavor = life.choice(FLAVORS)
        volume = life.choice(_VOLUME_SIZES_GB) if datastore.has_volumes else None
        t_us = self.start_us + life.randrange(self.creation_window_us)
        # Some names are not ASCII (fixture nonascii.v2): the wire carries them \u-escaped.
        prefix = "datenbank-\u00fc-\u6570\u636e" if life.random() < _NON_ASCII_NAME_SHARE else "db"
        instance = _Instance(index, _uuid4(life), f"{prefix}-{tenant.index}-{index}", tenant,
                             caller, datastore, _uuid4(life), _uuid4(life), created_us=t_us)
        fields: dict[str, Any] = {
            "name": instance.name, "flavor_id": flavor.id, "datastore": datastore.name,
            "datastore_version": datastore.version, "image_id": datastore.image_id,
            "availability_zone": AVAILABILITY_ZONE, "region_name": REGION,
        }
        if volume is not None:
            fields["volume_size"] = volume
        taskmanager = life.choice(_TASKMANAGER_HOSTS)
        # Trove creates the instance record before the server, so an error names it too.
        outcome, launched_us = self.dbaas_operation(
            resource_type="instance", wire_name="instance_create", operation="create",
            caller=caller, t_us=t_us, duration_s=(45, 420), fields=fields,
            end_host=taskmanager, whole_second_end=True,
            end_fields={"instance_id": instance.id}, error_fields={"instance_id": instance.id},
            nova_id=instance.nova_instance_id,
        )
        self.resources["instances_planned"] += 1
        if outcome != "succeeded":
            return
        instance.launched_us = launched_us
        instance.states.append((launched_us, flavor, volume))
        self.emit(launched_us, "trove.instance.create", taskmanager,
                  instance.usage_payload(launched_us, "active"))
        self.resources["instances_launched"] += 1
        self._plan_instance_life(instance)
        self._bill_instance(instance)
        if self.cfg.exists_audits:
            self._audit(instance)

    def _plan_instance_life(self, instance: _Instance) -> None:
        life = self.life
        delete_us: int | None = None
        latest_delete_us = self.last_op_us - 600 * _US
        earliest_delete_us = instance.launched_us + 600 * _US
        if life.random() < _DELETE_SHARE and earliest_delete_us < latest_delete_us:
            delete_us = life.randrange(earliest_delete_us, latest_delete_us)
        deadline_us = delete_us if delete_us is not None else self.last_op_us
        choices = [(name, weight, longest) for name, weight, longest in _INSTANCE_OPERATIONS
                   if (name != "resize_volume" or instance.datastore.has_volumes)
                   and (name != "backup" or self.cfg.backups)]
        weights = [weight for _, weight, _ in choices]
        t_us = instance.launched_us
        while True:
            t_us += 60 * _US + int(life.expovariate(1.0 / self.mean_gap_us))
            name, _, longest_s = life.choices(choices, weights)[0]
            if t_us + longest_s * _US >= deadline_us:
                break
            outcome, t_us = self._instance_operation(name, instance, t_us)
            if outcome == "abandoned":
                return  # stuck in a task state: nothing more happens to it, not even a delete
        if delete_us is not None:
            self._delete_instance(instance, delete_us)

    def _instance_operation(self, name: str, instance: _Instance, t_us: int) -> tuple[Outcome, int]:
        life = self.life
        caller = life.choice(instance.tenant.callers)
        taskmanager = life.choice(_TASKMANAGER_HOSTS)
        if name == "resize_flavor":
            old = instance.flavor
            new = life.choice([f for f in FLAVORS if f is not old])
            outcome, finish_us = self.dbaas_operation(
                resource_type="instance", wire_name="instance_resize_instance",
                operation="resize_flavor", caller=caller, t_us=t_us, duration_s=(120, 900),
                fields={"instance_id": instance.id, "new_flavor_id": new.id},
                end_host=taskmanager, whole_second_end=True, nova_id=instance.nova_instance_id)
            if outcome == "succeeded":
                instance.states.append((finish_us, new, instance.volume_gb))
                self.emit(finish_us, "trove.instance.modify_flavor", taskmanager,
                          instance.usage_payload(finish_us, "active", _json_members({
                              "old_instance_size": old.ram_mb, "modify_at": _iso(finish_us)}),
                              launched_us=finish_us))
            return outcome, finish_us
        if name == "resize_volume":
            old_gb = instance.volume_gb or 0
            new_gb = old_gb + life.choice((1, 2, 5, 10))  # Trove only grows volumes
            outcome, finish_us = self.dbaas_operation(
                resource_type="instance", wire_name="instance_resize_volume",
                operation="resize_volume", caller=caller, t_us=t_us, duration_s=(60, 600),
                fields={"instance_id": instance.id, "new_size": new_gb},
                end_host=taskmanager, whole_second_end=True, nova_id=instance.nova_instance_id)
            if outcome == "succeeded":
                instance.states.append((finish_us, instance.flavor, new_gb))
                self.emit(finish_us, "trove.instance.modify_volume", taskmanager,
                          instance.usage_payload(finish_us, "active", _json_members({
                              "old_volume_size": old_gb, "modify_at": _iso(finish_us)}),
                              launched_us=finish_us))
            return outcome, finish_us
        if name == "restart":
            return self.dbaas_operation(
                resource_type="instance", wire_name="instance_restart", operation="restart",
                caller=caller, t_us=t_us, duration_s=(20, 180),
                fields={"instance_id": instance.id}, end_host=taskmanager,
                whole_second_end=False, nova_id=instance.nova_instance_id)
        if name == "reboot":
            return self.design_note_operation(
                resource_type="instance", operation="reboot", tenant_id=instance.tenant.id,
                t_us=t_us, duration_s=(20, 120),
                payload=lambda status, at_us, extra: instance.usage_payload(
                    at_us, status, _json_members(extra)),
                statuses=("reboot", "active", "error"), whole_second_end=False)
        if name == "backup":
            return self._plan_backup(instance, caller, t_us)
        return self._frobnicate(instance, caller, taskmanager, t_us)

    def _frobnicate(self, instance: _Instance, caller: _Caller, taskmanager: _Host,
                    t_us: int) -> tuple[Outcome, int]:
        """An event type no mapping knows: a pipeline must route it aside, not crash."""
        request_id = "req-" + _uuid4(self.life)
        api = self.life.choice(_API_HOSTS)
        finish_us = self._finish_time(t_us, (1, 10), whole_second=False)
        field_members = _json_members({"instance_id": instance.id, "frobnication_level": 11})
        for at_us, host, phase in ((t_us, api, "start"), (finish_us, taskmanager, "end")):
            event_type = f"dbaas.instance_frobnicate.{phase}"
            self.emit(at_us, event_type, host,
                      _RequestPayload(caller, host, request_id, field_members), caller, request_id)
            self.unknown[event_type] += 1
        return "succeeded", finish_us

    def _delete_instance(self, instance: _Instance, t_us: int) -> None:
        taskmanager = self.life.choice(_TASKMANAGER_HOSTS)
        outcome, finish_us = self.dbaas_operation(
            resource_type="instance", wire_name="instance_delete", operation="delete",
            caller=self.life.choice(instance.tenant.callers), t_us=t_us, duration_s=(10, 120),
            fields={"instance_id": instance.id}, end_host=taskmanager, whole_second_end=True,
            nova_id=instance.nova_instance_id)
        if outcome != "succeeded":
            return  # still there: billed and audited up to the horizon
        instance.ended_us = finish_us
        self.emit(finish_us, "trove.instance.delete", taskmanager,
                  instance.usage_payload(finish_us, "deleted",
                                         _json_members({"deleted_at": _iso(finish_us)})))
        self.resources["instances_deleted"] += 1

    def _bill_instance(self, instance: _Instance) -> None:
        until_us = instance.ended_us if instance.ended_us is not None else self.horizon_us
        tenant_id = instance.tenant.id
        per_flavor = self.instance_seconds.setdefault(tenant_id, Counter())
        states = instance.states
        for i, (from_us, flavor, volume_gb) in enumerate(states):
            to_us = states[i + 1][0] if i + 1 < len(states) else until_us
            seconds = (to_us - from_us) // _US  # all bounds are whole seconds
            per_flavor[flavor.id] += seconds
            if volume_gb is not None:
                self.volume_gb_seconds[tenant_id] += volume_gb * seconds
        if instance.ended_us is None:
            self.resources["instances_live_at_horizon"] += 1
            self.live_at_horizon[tenant_id] += 1

    def _audit(self, instance: _Instance) -> None:
        """trove.instance.exists for each hour boundary at which the instance is live, i.e.
        launched before it and not deleted by then (plain-dict context: no _context_* keys)."""
        for k, round_us in enumerate(self.audit_rounds_us):
            boundary_us = self.start_us + (k + 1) * _HOUR_US
            if instance.launched_us >= boundary_us:
                continue
            if instance.ended_us is not None and instance.ended_us <= boundary_us:
                break
            self.emit(round_us + instance.index * _AUDIT_SPACING_US, "trove.instance.exists",
                      _AUDIT_HOST,
                      instance.usage_payload(boundary_us, "active", self.audit_periods[k]))
            self.exists_seconds[instance.tenant.id] += 3600

    # -- backups

    def _plan_backup(self, instance: _Instance, caller: _Caller, t_us: int) -> tuple[Outcome, int]:
        life = self.life
        backup_id = _uuid4(life)
        name = f"{instance.name}-backup-{life.randrange(1000):03d}"
        description = life.choice(("nightly full backup", "before upgrade", "manual snapshot"))
        data_gb = instance.volume_gb or 2
        size_centi_gb = max(1, int(data_gb * 100 * life.uniform(0.05, 0.6)))
        outcome, finish_us = self.dbaas_operation(
            resource_type="backup", wire_name="backup_create", operation="create",
            caller=caller, t_us=t_us, duration_s=(60, 1200),
            fields={"name": name, "instance_id": instance.id, "description": description,
                    "parent_id": None},
            end_host=life.choice(_CONDUCTOR_HOSTS), whole_second_end=True,
            end_fields={"backup_id": backup_id, "size": size_centi_gb / 100})
        if outcome == "succeeded":
            self.resources["backups_completed"] += 1
            backup = _Backup(backup_id, name, instance, description, size_centi_gb, t_us, finish_us)
            self._plan_backup_delete(backup, caller)
        return outcome, finish_us

    def _plan_backup_delete(self, backup: _Backup, caller: _Caller) -> None:
        life = self.life
        billed_until_us = self.horizon_us
        earliest_us = backup.completed_us + 600 * _US
        latest_us = self.last_op_us - 120 * _US
        if life.random() < _BACKUP_DELETE_SHARE and earliest_us < latest_us:
            t_us = life.randrange(earliest_us, latest_us)
            if life.random() < _DESIGN_NOTE_BACKUP_DELETE_SHARE:
                outcome, finish_us = self._design_note_backup_delete(backup, t_us)
            else:
                outcome, finish_us = self.dbaas_operation(
                    resource_type="backup", wire_name="backup_delete", operation="delete",
                    caller=caller, t_us=t_us, duration_s=(5, 120),
                    fields={"backup_id": backup.id}, end_host=life.choice(_TASKMANAGER_HOSTS),
                    whole_second_end=True)
            if outcome == "succeeded":
                billed_until_us = finish_us
                self.resources["backups_deleted"] += 1
        seconds = (billed_until_us - backup.completed_us) // _US
        self.backup_centi_gb_seconds[backup.instance.tenant.id] += backup.size_centi_gb * seconds

    def _design_note_backup_delete(self, backup: _Backup, t_us: int) -> tuple[Outcome, int]:
        tenant_id = backup.instance.tenant.id

        def payload(status: str, updated_us: int, extra: dict[str, Any]) -> _SplicedPayload:
            return _SplicedPayload(json.dumps({
                "created": _iso(backup.created_us), "description": backup.description,
                "id": backup.id, "instance_id": backup.instance.id,
                "locationRef": f"http://swift.example.net:8080/v1/AUTH_{tenant_id}/"
                               f"database_backups/{backup.id}.xbstream.gz.enc",
                "name": backup.name, "parent_id": None, "size": backup.size_centi_gb / 100,
                "status": status, "updated": _iso(updated_us), "tenant_id": tenant_id,
            }), _json_members(extra))

        return self.design_note_operation(
            resource_type="backup", operation="delete", tenant_id=tenant_id, t_us=t_us,
            duration_s=(5, 120), payload=payload,
            statuses=("COMPLETED", "DELETED", "DELETE_FAILED"), whole_second_end=True)

    # -- clusters

    def plan_cluster(self, index: int) -> None:
        life = self.life
        tenant = life.choice(self.tenants)
        caller = life.choice(tenant.callers)
        datastore = life.choice(CLUSTER_DATASTORES)
        cluster_id = _uuid4(life)
        t_us = self.start_us + life.randrange(self.creation_window_us)
        outcome, t_us = self.dbaas_operation(
            resource_type="cluster", wire_name="cluster_create", operation="create",
            caller=caller, t_us=t_us, duration_s=(300, 1500),
            fields={"name": f"cluster-{tenant.index}-{index}", "datastore": datastore.name,
                    "datastore_version": datastore.version},
            end_host=life.choice(_TASKMANAGER_HOSTS), whole_second_end=False,
            end_fields={"cluster_id": cluster_id})
        if outcome != "succeeded":
            return
        self.resources["clusters_created"] += 1
        for _ in range(life.randint(0, 2)):
            t_us += 60 * _US + int(life.expovariate(1.0 / self.mean_gap_us))
            if t_us + 900 * _US >= self.last_op_us:
                return
            outcome, t_us = self.dbaas_operation(
                resource_type="cluster", wire_name="cluster_grow", operation="grow",
                caller=caller, t_us=t_us, duration_s=(200, 900),
                fields={"cluster_id": cluster_id}, end_host=life.choice(_TASKMANAGER_HOSTS),
                whole_second_end=False)
            if outcome == "abandoned":
                return
        if life.random() < _CLUSTER_DELETE_SHARE:
            t_us += 60 * _US + int(life.expovariate(1.0 / self.mean_gap_us))
            if t_us + 300 * _US < self.last_op_us:
                outcome, _ = self.dbaas_operation(
                    resource_type="cluster", wire_name="cluster_delete", operation="delete",
                    caller=caller, t_us=t_us, duration_s=(30, 300),
                    fields={"cluster_id": cluster_id},
                    end_host=life.choice(_TASKMANAGER_HOSTS), whole_second_end=False)
                if outcome == "succeeded":
                    self.resources["clusters_deleted"] += 1

    # -- the whole scenario

    def plan(self) -> None:
        cfg = self.cfg
        for index in range(cfg.instances):
            self.plan_instance(index)
        if cfg.message_budget is not None:
            # Noise adds duplicates and garbage on top of the valid messages.
            wanted = cfg.message_budget / (1.0 + cfg.duplicate_rate + cfg.garbage_rate)
            index = cfg.instances
            while len(self.events) < wanted:
                self.plan_instance(index)
                index += 1
        if cfg.clusters:
            for index in range(max(1, cfg.instances // 8)):
                self.plan_cluster(index)
                self.resources["clusters_planned"] += 1
        self._plan_closing_quotas()

    def _plan_closing_quotas(self) -> None:
        """One `dbaas.quota` per tenant (its instances in use at the horizon), sent
        ``closing_delay_s`` after the horizon: the stream's event time passes the horizon by
        that much, with audits or without, and nothing billable happens after the horizon."""
        closing_us = self.horizon_us + self.cfg.closing_delay_s * _US
        for tenant in self.tenants:
            caller = self.life.choice(tenant.callers)
            api = self.life.choice(_API_HOSTS)
            request_id = "req-" + _uuid4(self.life)
            t_us = closing_us + self.life.randrange(_US)
            self.emit(t_us, "dbaas.quota", api, _RequestPayload(
                caller, api, request_id, _json_members({
                    "resource": "instances", "in_use": self.live_at_horizon[tenant.id],
                    "reserved": 0, "limit": 50, "updated": _iso(t_us)})),
                caller, request_id)

    def garbage_body(self, near: _Event) -> tuple[str, bytes]:
        """A broken body modelled on a nearby message, with fresh ids so that it never shares a
        message_id with a valid one."""
        noise = self.noise
        reason = noise.choice(_GARBAGE_REASONS)
        inner = _inner_json(near, _uuid4(noise), _hex32(noise))
        if reason == "not_json":
            return reason, noise.choice(_NOT_JSON_BODIES)
        if reason == "truncated":
            body = _envelope(inner)
            return reason, body[: noise.randrange(len(body) // 10, len(body) * 9 // 10)]
        if reason == "no_message":
            return reason, b'{"oslo.version": "2.0"}'
        if reason == "wrong_version":
            body = json.dumps({"oslo.version": "3.0", "oslo.message": inner})
            return reason, body.encode("ascii")
        if reason == "missing_event_type":
            message = json.loads(inner)
            del message["event_type"]
            return reason, _envelope(json.dumps(message))
        return reason, _envelope(inner[: len(inner) // 2])  # inner_not_json

    def assemble(self) -> Scenario:
        cfg, noise = self.cfg, self.noise
        ordered = sorted(self.events, key=attrgetter("publish_key"))
        adjacent_swaps = 0
        i = 0
        while i < len(ordered) - 1:
            if noise.random() < cfg.reorder_rate:
                ordered[i], ordered[i + 1] = ordered[i + 1], ordered[i]
                adjacent_swaps += 1
                i += 2
            else:
                i += 1
        position = [0] * len(ordered)
        for i, event in enumerate(ordered):
            position[event.seq] = i

        items: list[_Item] = []
        garbage_reasons: Counter[str] = Counter()
        pending: list[tuple[int, int, _Event]] = []  # duplicates: (due position, seq, event)
        start_us, garbage_rate, duplicate_rate = self.start_us, cfg.garbage_rate, cfg.duplicate_rate
        clock_us = start_us  # when the message is sent: events can be late, the clock is not
        for i, event in enumerate(ordered):
            while pending and pending[0][0] <= i:
                duplicate = heapq.heappop(pending)[2]
                clock_us = max(clock_us, duplicate.t_us)
                items.append(("duplicate", duplicate, b"", clock_us - start_us))
            if noise.random() < garbage_rate:
                reason, body = self.garbage_body(event)
                garbage_reasons[reason] += 1
                items.append(("garbage", None, body, clock_us - start_us))
            clock_us = max(clock_us, event.t_us)
            items.append(("valid", event, b"", clock_us - start_us))
            if noise.random() < duplicate_rate:
                due = i + noise.randint(1, _DUPLICATE_MAX_LAG)
                heapq.heappush(pending, (due, event.seq, event))
        for _, _, duplicate in sorted(pending):
            clock_us = max(clock_us, duplicate.t_us)
            items.append(("duplicate", duplicate, b"", clock_us - start_us))
        return Scenario(cfg, items, self._totals(ordered, position, items, garbage_reasons,
                                                 adjacent_swaps))

    def _totals(self, ordered: list[_Event], position: list[int], items: list[_Item],
                garbage_reasons: Counter[str], adjacent_swaps: int) -> ExpectedTotals:
        kinds = Counter(map(itemgetter(0), items))
        routing_keys = Counter(_ROUTING_KEYS[event.priority if event else "INFO"]
                               for _, event, _, _ in items)
        v1 = sum(map(attrgetter("v1"), ordered))
        event_types = Counter(map(attrgetter("event_type"), ordered))
        ends_before_starts = sum(
            1 for op in self.operations
            if op.finish is not None and position[op.finish.seq] < position[op.start.seq])
        messages = {
            "total": len(items), "valid": kinds["valid"], "duplicate": kinds["duplicate"],
            "garbage": kinds["garbage"], "v1": v1, "v2": len(ordered) - v1,
            "garbage_by_reason": dict(sorted(garbage_reasons.items())),
            "by_event_type": dict(sorted(event_types.items())),
            "by_routing_key": dict(sorted(routing_keys.items())),
            "ends_before_starts": ends_before_starts, "adjacent_swaps": adjacent_swaps,
        }
        ids = sorted(map(attrgetter("message_id"), ordered))
        operations: dict[tuple[str, str, Outcome], int] = {}
        durations: dict[str, list[float]] = {}
        for op in self.operations:
            for outcome in ("succeeded", "failed", "abandoned"):
                operations.setdefault((op.resource_type, op.operation, outcome), 0)
            operations[(op.resource_type, op.operation, op.outcome)] += 1
            if op.finish is not None:
                durations.setdefault(f"{op.resource_type}.{op.operation}", []).append(
                    (op.finish.t_us - op.start.t_us) / _US)
        stats = {}
        for name, values in durations.items():
            values.sort()
            stats[name] = DurationStats(len(values), round(_percentile(values, 50), 3),
                                        round(_percentile(values, 95), 3), round(values[-1], 3))
        scenario = {**self.cfg.to_json(),
                    "instances_planned": self.resources["instances_planned"],
                    "clusters_planned": self.resources["clusters_planned"]}
        resources = {name: self.resources[name] for name in (
            "instances_launched", "instances_deleted", "instances_live_at_horizon",
            "backups_completed", "backups_deleted", "clusters_created", "clusters_deleted")}
        return ExpectedTotals(
            scenario=scenario,
            messages=messages,
            message_id_count=len(ids),
            message_id_sha256=hashlib.sha256("\n".join(ids).encode("ascii")).hexdigest(),
            operations=operations,
            failures=dict(self.failures),
            unknown_event_types=dict(self.unknown),
            resources=resources,
            instance_seconds={t: {f: s for f, s in flavors.items() if s}
                              for t, flavors in self.instance_seconds.items()
                              if any(flavors.values())},
            volume_gb_seconds={t: v for t, v in self.volume_gb_seconds.items() if v},
            backup_gb_seconds={t: round(v / 100, 2)
                               for t, v in self.backup_centi_gb_seconds.items() if v},
            exists_seconds={t: v for t, v in self.exists_seconds.items() if v},
            operation_durations=stats,
        )


# kind, event (None for garbage), garbage body, sent offset in µs after the scenario start
_Item = tuple[MessageKind, "_Event | None", bytes, int]


class Scenario:
    """A planned scenario: its expected totals now, its wire messages on iteration."""

    def __init__(self, config: ScenarioConfig, items: list[_Item],
                 expected: ExpectedTotals) -> None:
        self.config = config
        self.expected = expected
        self._items = items

    def __len__(self) -> int:
        return len(self._items)

    def messages(self) -> Iterator[WireMessage]:
        exchange = self.config.exchange
        for kind, event, garbage, sent_offset_us in self._items:
            if event is None:
                yield WireMessage(garbage, _ROUTING_KEYS["INFO"], exchange, AMQP_PROPERTIES,
                                  None, kind, sent_offset_us / _US)
            else:
                yield WireMessage(_render_body(event), _ROUTING_KEYS[event.priority], exchange,
                                  AMQP_PROPERTIES, event.event_type, kind, sent_offset_us / _US)


def build_scenario(config: ScenarioConfig) -> Scenario:
    """Plan the whole scenario (cheap); bodies are rendered while iterating ``messages()``."""
    # Planning allocates a few objects per message and none of them form cycles: the cyclic
    # collector would only rescan the growing heap (a third of the planning time at 100k).
    collecting = gc.isenabled()
    gc.disable()
    try:
        planner = _Planner(config)
        planner.plan()
        return planner.assemble()
    finally:
        if collecting:
            gc.enable()
