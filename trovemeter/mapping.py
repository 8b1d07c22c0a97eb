"""The event mapping: which Trove event type means which (resource type, operation, phase), and
where a notification keeps its ids. The table is data (``mapping/events.yaml``), in the spirit
of Ceilometer's meter definitions; this module loads it, validates every entry and compiles the
patterns once. A broken definition raises ``MappingError``: billing refuses to start rather than
mis-classify events (Ceilometer would log and skip).
"""

from __future__ import annotations

import fnmatch
import re
import string
from collections.abc import Mapping as AnyMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from trovemeter.model import Phase, ResourceType

BUILTIN_MAPPING = Path(__file__).resolve().parent / "mapping" / "events.yaml"

IDENTIFIERS = ("request_id", "tenant_id", "user_id")
_TOP_LEVEL_KEYS = {"version", "replace_builtin", "identifiers", "resource_id", "operation_aliases",
                   "events"}
_EVENT_KEYS = {"name", "event_type", "pattern", "resource_type", "operation", "phase",
               "resource_id"}
_CLASS_FIELDS = ("resource_type", "operation", "phase")
_PATH_ROOTS = ("payload", "context")
# Distinct event types are few; the bound only stops a flood of garbage types growing the cache.
_CACHE_LIMIT = 10_000


class MappingError(ValueError):
    """An event mapping file is unreadable or invalid. The message names the file and entry."""


@dataclass(frozen=True, slots=True)
class FieldPath:
    """Where a value sits: ``payload.instance_id`` or ``context.request_id``."""

    root: str  # "payload" or "context"
    keys: tuple[str, ...]

    def find(self, payload: dict[str, Any], context: dict[str, Any]) -> str | None:
        """The value as text if it is a non-empty scalar, else None."""
        value: Any = payload if self.root == "payload" else context
        for key in self.keys:
            if not isinstance(value, dict):
                return None
            value = value.get(key)
        return _as_id(value)

    def __str__(self) -> str:
        return ".".join((self.root, *self.keys))


def _as_id(value: Any) -> str | None:
    if type(value) is str:
        return value or None
    if value is None or isinstance(value, (dict, list, bool)):
        return None
    return str(value)


def first_value(paths: tuple[FieldPath, ...], payload: dict[str, Any],
                context: dict[str, Any]) -> str | None:
    """The value at the first path that has one."""
    for path in paths:
        # Inline the common one-key lookup: this runs four times per notification.
        if len(path.keys) == 1:
            value = _as_id((payload if path.root == "payload" else context).get(path.keys[0]))
        else:
            value = path.find(payload, context)
        if value is not None:
            return value
    return None


@dataclass(frozen=True, slots=True)
class EventClass:
    """What an event type means, and where its resource id is."""

    resource_type: ResourceType
    operation: str
    phase: Phase
    resource_id_paths: tuple[FieldPath, ...]
    definition: str | None  # name of the matching definition; None when nothing matched

    @property
    def known(self) -> bool:
        return self.definition is not None


@dataclass(frozen=True, slots=True)
class EventDefinition:
    """One compiled entry of ``events``: a matcher and templates for the three fields."""

    name: str
    matcher: re.Pattern[str]  # matched against the whole event type
    templates: dict[str, str]  # resource_type/operation/phase -> "{group}"-style template
    resource_id_paths: tuple[FieldPath, ...] | None


class EventMapping:
    """Compiled mapping. ``classify`` is cached per event type, so the hot path is one dict
    lookup."""

    def __init__(
        self,
        definitions: list[EventDefinition],
        identifiers: dict[str, tuple[FieldPath, ...]],
        resource_id: dict[ResourceType, tuple[FieldPath, ...]],
        operation_aliases: dict[str, str],
    ) -> None:
        self.definitions = definitions
        self.request_id_paths = identifiers.get("request_id", ())
        self.tenant_id_paths = identifiers.get("tenant_id", ())
        self.user_id_paths = identifiers.get("user_id", ())
        self.resource_id = resource_id
        self.operation_aliases = operation_aliases
        self._cache: dict[str, EventClass] = {}

    def classify(self, event_type: str) -> EventClass:
        cached = self._cache.get(event_type)
        if cached is not None:
            return cached
        result = self._classify(event_type)
        if len(self._cache) < _CACHE_LIMIT:
            self._cache[event_type] = result
        return result

    def _classify(self, event_type: str) -> EventClass:
        for definition in self.definitions:
            # A definition describes a whole event type, anchored or not.
            match = definition.matcher.fullmatch(event_type)
            if match is None:
                continue
            groups = {key: value or "" for key, value in match.groupdict().items()}
            values = {field: template.format_map(groups)
                      for field, template in definition.templates.items()}
            try:
                resource_type = ResourceType(values["resource_type"])
                phase = Phase(values["phase"])
            except ValueError:
                # A pattern group captured something outside the closed sets: treat the event
                # as unmapped (counted) rather than invent a classification.
                break
            operation = self.operation_aliases.get(values["operation"], values["operation"])
            if not operation:
                break
            paths = definition.resource_id_paths
            if paths is None:
                paths = self.resource_id.get(resource_type, ())
            return EventClass(resource_type, operation, phase, paths, definition.name)
        return self.unmapped(event_type)

    def unmapped(self, event_type: str) -> EventClass:
        """An event type no definition covers: kept, with the raw type as its operation."""
        return EventClass(ResourceType.UNKNOWN, event_type, Phase.POINT,
                          self.resource_id.get(ResourceType.UNKNOWN, ()), None)


def load_mapping(path: str | Path | None = None) -> EventMapping:
    """The built-in mapping, with the definitions of ``path`` layered on top when given.

    Raises ``MappingError`` (naming file and entry) on any invalid definition.
    """
    builtin = _read_yaml(BUILTIN_MAPPING)
    if path is None:
        return _compile([(str(BUILTIN_MAPPING), builtin)])
    user = _read_yaml(Path(path))
    if user.get("replace_builtin", False):
        return _compile([(str(path), user)])
    # The user's file comes first: its events win, and its tables override the built-in ones.
    return _compile([(str(path), user), (str(BUILTIN_MAPPING), builtin)])


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MappingError(f"{path}: cannot read event mapping: {exc.strerror or exc}") from exc
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise MappingError(f"{path}: not valid YAML{line}: {problem}") from exc
    if not isinstance(document, dict):
        raise MappingError(f"{path}: the event mapping must be a YAML mapping at the top level")
    unknown = set(document) - _TOP_LEVEL_KEYS
    if unknown:
        raise MappingError(
            f"{path}: unknown top-level key(s): {', '.join(sorted(map(str, unknown)))}")
    if document.get("version", 1) != 1:
        raise MappingError(f"{path}: unsupported mapping version {document['version']!r} "
                           "(this trovemeter reads version 1)")
    if not isinstance(document.get("replace_builtin", False), bool):
        raise MappingError(f"{path}: replace_builtin must be true or false")
    return document


def _compile(sources: list[tuple[str, dict[str, Any]]]) -> EventMapping:
    """Compile layered documents; the first source has the highest priority."""
    definitions: list[EventDefinition] = []
    identifiers: dict[str, tuple[FieldPath, ...]] = {}
    resource_id: dict[ResourceType, tuple[FieldPath, ...]] = {}
    aliases: dict[str, str] = {}
    for source, document in reversed(sources):  # lowest priority first, so later ones override
        identifiers.update(_compile_identifiers(source, document.get("identifiers", {})))
        resource_id.update(_compile_resource_ids(source, document.get("resource_id", {})))
        aliases.update(_compile_aliases(source, document.get("operation_aliases", {})))
    for source, document in sources:
        events = document.get("events", [])
        if not isinstance(events, list):
            raise MappingError(f"{source}: events must be a list of definitions")
        definitions.extend(_compile_event(source, index, entry)
                           for index, entry in enumerate(events))
    return EventMapping(definitions, identifiers, resource_id, aliases)


def _compile_identifiers(source: str, table: Any) -> dict[str, tuple[FieldPath, ...]]:
    where = f"{source}: identifiers"
    if not isinstance(table, AnyMapping):
        raise MappingError(f"{where} must be a mapping of {', '.join(IDENTIFIERS)} to paths")
    unknown = set(table) - set(IDENTIFIERS)
    if unknown:
        raise MappingError(f"{where}: unknown identifier(s) {', '.join(sorted(map(str, unknown)))}"
                           f" (known: {', '.join(IDENTIFIERS)})")
    return {name: _compile_paths(f"{where}.{name}", paths) for name, paths in table.items()}


def _compile_resource_ids(source: str, table: Any) -> dict[ResourceType, tuple[FieldPath, ...]]:
    where = f"{source}: resource_id"
    if not isinstance(table, AnyMapping):
        raise MappingError(f"{where} must be a mapping of resource type to paths")
    compiled = {}
    for name, paths in table.items():
        compiled[_resource_type(f"{where}", name)] = _compile_paths(f"{where}.{name}", paths)
    return compiled


def _compile_aliases(source: str, table: Any) -> dict[str, str]:
    where = f"{source}: operation_aliases"
    if not isinstance(table, AnyMapping) or not all(
        isinstance(key, str) and isinstance(value, str) and value
        for key, value in table.items()
    ):
        raise MappingError(f"{where} must map operation names to non-empty operation names")
    return dict(table)


def _compile_event(source: str, index: int, entry: Any) -> EventDefinition:
    if not isinstance(entry, dict):
        raise MappingError(f"{source}: events[{index}] must be a mapping")
    name = entry.get("name", f"events[{index}]")
    where = f"{source}: events[{index}] ({name})"
    unknown = set(entry) - _EVENT_KEYS
    if unknown:
        raise MappingError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    if ("event_type" in entry) == ("pattern" in entry):
        raise MappingError(f"{where}: give exactly one of event_type or pattern")
    matcher = _compile_matcher(where, entry)
    groups = set(matcher.groupindex)
    templates = {}
    for field in _CLASS_FIELDS:
        template = entry.get(field, "{%s}" % field if field in groups else None)
        if template is None:
            raise MappingError(f"{where}: no {field}: set it, or name a pattern group {field!r}")
        if not isinstance(template, str):
            raise MappingError(f"{where}: {field} must be a string, got {template!r}")
        used = _template_fields(where, field, template)
        missing = used - groups
        if missing:
            raise MappingError(f"{where}: {field} {template!r} uses group(s) "
                               f"{', '.join(sorted(missing))} that the pattern does not define")
        if not used:  # a literal: check it now, not on the first matching message
            if field == "resource_type":
                _resource_type(where, template)
            elif field == "phase" and template not in Phase._value2member_map_:
                raise MappingError(f"{where}: phase {template!r} is not one of "
                                   f"{', '.join(p.value for p in Phase)}")
        templates[field] = template
    paths = entry.get("resource_id")
    return EventDefinition(
        name=str(name),
        matcher=matcher,
        templates=templates,
        resource_id_paths=None if paths is None else _compile_paths(f"{where}.resource_id", paths),
    )


def _compile_matcher(where: str, entry: dict[str, Any]) -> re.Pattern[str]:
    if "pattern" in entry:
        pattern = entry["pattern"]
        if not isinstance(pattern, str) or not pattern:
            raise MappingError(f"{where}: pattern must be a non-empty string")
        try:
            return re.compile(pattern)
        except re.error as exc:
            raise MappingError(f"{where}: pattern {pattern!r} is not a valid regex: {exc}") from exc
    event_types = entry["event_type"]
    if isinstance(event_types, str):
        event_types = [event_types]
    if not isinstance(event_types, list) or not event_types or not all(
        isinstance(item, str) and item for item in event_types
    ):
        raise MappingError(f"{where}: event_type must be a non-empty string or list of strings")
    return re.compile("|".join(f"(?:{fnmatch.translate(item)})" for item in event_types))


def _template_fields(where: str, field: str, template: str) -> set[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise MappingError(f"{where}: {field} {template!r} is not a valid template: {exc}") from exc
    names = set()
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise MappingError(f"{where}: {field} {template!r}: use plain {{group}} references")
        names.add(name)
    return names


def _resource_type(where: str, value: Any) -> ResourceType:
    try:
        return ResourceType(value)
    except ValueError:
        raise MappingError(f"{where}: {value!r} is not a resource type "
                           f"({', '.join(r.value for r in ResourceType)})") from None


def _compile_paths(where: str, paths: Any) -> tuple[FieldPath, ...]:
    if isinstance(paths, str):
        paths = [paths]
    if not isinstance(paths, list) or not paths:
        raise MappingError(f"{where}: give a path or a list of paths such as payload.instance_id")
    compiled = []
    for path in paths:
        parts = path.split(".") if isinstance(path, str) else []
        if len(parts) < 2 or parts[0] not in _PATH_ROOTS or not all(parts):
            raise MappingError(f"{where}: {path!r} is not a path; write payload.<key> or "
                               "context.<key> (nested keys joined by dots)")
        compiled.append(FieldPath(parts[0], tuple(parts[1:])))
    return tuple(compiled)
