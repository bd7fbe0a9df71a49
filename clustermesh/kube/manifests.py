"""The manifest directory source (`manifests:DIR`): Kubernetes objects read from the files of one directory.

Files are `*.yaml`, `*.yml` (multi-document, split on `---` lines as kubectl does) and `*.json`, at the top
level of the directory only; hidden files and editors' temporary files (`.x.swp`, `x~`, `#x#`, `.#x`) are
ignored. A document whose kind is `List` (or a typed list such as `NodeList`) contributes its items. The
source loads every file, delivers the objects of the requested kinds, marks SYNCED, then follows changes with
`watchfiles`: after each batch of file-system events it re-reads the files that changed (by event or by
stat signature, which also catches a rename into place and a ConfigMap volume's `..data` symlink swap) and
delivers the difference. An object present in two files comes from the file loaded last; removing that file
falls back to the other's copy.

A document that cannot be used (bad YAML or JSON, not a mapping, no kind, no metadata.name) is logged as one
line `event=manifest.invalid file=<path> document=<n> reason="..."` (n counts a file's non-empty documents
from 0; `item=<i>` is added for an item of a list), counted in `invalid_documents`, and skipped; documents
of kinds that were not requested are ignored without validation. An unreadable file keeps its previous
objects: an error is not proof that they are gone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import re
import stat
from collections.abc import Iterable, Iterator, Mapping, Set
from pathlib import Path
from typing import Any

import msgspec
import watchfiles
import yaml

from clustermesh.aio import tasks
from clustermesh.errors import ConfigError, DecodeError
from clustermesh.kube import emitter, event, objects

log = logging.getLogger(__name__)

_SUFFIXES = (".yaml", ".yml", ".json")
# kubectl's YAML reader splits documents on lines that are exactly "---" (optionally followed by a comment);
# splitting before parsing keeps one broken document from hiding the ones after it, which a single
# yaml.load_all stream could not do.
_SEPARATOR = re.compile(rb"^---[ \t]*(?:#[^\r\n]*)?\r?$", re.MULTILINE)
_BARE_VALUE = re.compile(r'[^\s"=\\]+')
_DEBOUNCE_MS = 50
_STEP_MS = 25
# watchfiles yields an empty batch after this long without events; each batch (empty or not) triggers a
# stat-only rescan, which closes the gap between the initial load and the watcher starting, and covers events
# the kernel dropped (inotify queue overflow) or never sends (network file systems).
_RESCAN_INTERVAL_MS = 1000

# (inode, device, size, mtime_ns) of a file, following symlinks; None: re-read the file on the next scan.
_Signature = tuple[int, int, int, int] | None


# libyaml's parser is several times faster; PyYAML builds without it fall back to the pure-Python one.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_SafeLoader):  # type: ignore[misc,valid-type]
    """A safe YAML loader that leaves timestamps as strings, as they are in the API server's JSON."""


# Timestamps become strings (creationTimestamp must look the same as from the API), and the YAML 1.1 "=" value
# tag is dropped because the safe constructor cannot build it and would reject a plain `=` scalar.
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if not tag.endswith((":timestamp", ":value"))]
    for first, resolvers in _SafeLoader.yaml_implicit_resolvers.items()
}


@dataclasses.dataclass(frozen=True, slots=True)
class _InvalidDocument:
    """A document (or list item) that was skipped, and why."""

    file: str
    document: int
    reason: str
    item: int | None = None

    def log_line(self) -> str:
        """The structured log line reporting this document."""
        item = "" if self.item is None else f" item={self.item}"
        return (
            f"event=manifest.invalid file={_logfmt(self.file)} document={self.document}{item} "
            f"reason={_logfmt(self.reason)}"
        )


class ManifestSource:
    """Objects of `kinds` from the manifest files in `directory`, followed live; see the module docstring."""

    def __init__(self, directory: Path, *, kinds: Iterable[objects.AnyKind | str]) -> None:
        self.directory = directory
        # Absolute, so that the watcher's paths and the scan's paths are the same strings.
        self._path = os.path.abspath(directory)
        self.kinds = objects.parse_kinds(kinds)
        self.invalid_documents = 0
        """Invalid documents seen so far (each time a file holding one is read)."""
        self._running = False

    def __repr__(self) -> str:
        kinds = ",".join(sorted(self.kinds))
        return f"<ManifestSource {self.directory} kinds={kinds} invalid_documents={self.invalid_documents}>"

    async def run(self, sink: event.EventSink, *, ready: asyncio.Event | None = None) -> None:
        """Deliver the directory's objects, SYNCED, then changes to `sink`, until cancelled.

        Sets `ready` after SYNCED was delivered. Raises ConfigError if the directory is missing or disappears,
        RuntimeError if this source is already running. Cancellation stops the file watcher and waits for it.
        """
        if self._running:
            raise RuntimeError(f"{self!r} is already running")
        self._running = True
        try:
            await self._run(emitter.Emitter(sink), ready)
        finally:
            self._running = False

    async def _run(self, out: emitter.Emitter, ready: asyncio.Event | None) -> None:
        state = _DirectoryState()
        await self._sync(state, out, frozenset())
        await out.mark_synced()
        if ready is not None:
            ready.set()
        pending = _PendingChanges()
        stop = asyncio.Event()
        watcher = asyncio.create_task(self._watch(pending, stop), name=f"watch manifests {self.directory}")
        try:
            while True:
                await pending.wait()
                # Scan first: if the watcher died because the directory is gone, the scan says so clearly.
                await self._sync(state, out, pending.take())
                if watcher.done():
                    await watcher
                    raise RuntimeError(f"the file watcher of {self.directory} ended unexpectedly")
        finally:
            stop.set()
            await tasks.join(watcher)

    async def _watch(self, pending: _PendingChanges, stop: asyncio.Event) -> None:
        """Collect changed paths until `stop` is set; always wakes the consumer when it ends."""
        try:
            async for changes in watchfiles.awatch(
                self._path,
                watch_filter=None,
                debounce=_DEBOUNCE_MS,
                step=_STEP_MS,
                stop_event=stop,
                rust_timeout=_RESCAN_INTERVAL_MS,
                yield_on_timeout=True,
                recursive=False,
            ):
                pending.add(path for _, path in changes)
        finally:
            pending.wake()

    async def _sync(self, state: _DirectoryState, out: emitter.Emitter, touched: Set[str]) -> None:
        """Rescan the directory and deliver what changed since the last scan."""
        # Reading and parsing run in a worker thread so a large file does not stall the event loop; the scan
        # only reads the file system and returns a value, so a scan abandoned by cancellation touches nothing.
        scan = await asyncio.to_thread(_scan, self._path, state.signatures(), touched, self.kinds)
        for invalid in scan.invalid:
            self.invalid_documents += 1
            log.warning(invalid.log_line())
        for path, reason in scan.unreadable.items():
            log.warning("event=manifest.unreadable file=%s reason=%s", _logfmt(path), _logfmt(reason))
        for key in state.apply(scan):
            current = state.winner(key)
            if current is None:
                await out.delete(key)
            else:
                await out.upsert(key, current)


class _PendingChanges:
    """Paths reported changed by the watcher and not yet rescanned; coalesces batches while a scan runs."""

    def __init__(self) -> None:
        self._paths: set[str] = set()
        self._event = asyncio.Event()

    def add(self, paths: Iterable[str]) -> None:
        self._paths.update(paths)
        self._event.set()

    def wake(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()

    def take(self) -> frozenset[str]:
        self._event.clear()
        paths, self._paths = frozenset(self._paths), set()
        return paths


@dataclasses.dataclass(frozen=True, slots=True)
class _File:
    signature: _Signature
    objects: dict[objects.ObjectKey, dict[str, Any]]


@dataclasses.dataclass(slots=True)
class _Scan:
    """The result of one rescan: which manifest files exist, and the content of those that were (re)read."""

    present: dict[str, _Signature] = dataclasses.field(default_factory=dict)
    parsed: dict[str, dict[objects.ObjectKey, dict[str, Any]]] = dataclasses.field(default_factory=dict)
    invalid: list[_InvalidDocument] = dataclasses.field(default_factory=list)
    unreadable: dict[str, str] = dataclasses.field(default_factory=dict)


class _DirectoryState:
    """The objects of every loaded file, and for each object the files holding it, in load order."""

    def __init__(self) -> None:
        # Insertion order is load order: a reloaded file is re-inserted at the end.
        self._files: dict[str, _File] = {}
        self._holders: dict[objects.ObjectKey, list[str]] = {}

    def signatures(self) -> dict[str, _Signature]:
        return {path: file.signature for path, file in self._files.items()}

    def winner(self, key: objects.ObjectKey) -> dict[str, Any] | None:
        """The object for `key` from the file loaded last, or None if no file holds it."""
        holders = self._holders.get(key)
        return self._files[holders[-1]].objects[key] if holders else None

    def apply(self, scan: _Scan) -> list[objects.ObjectKey]:
        """Record a scan; returns the keys whose winner may have changed, removals applied before loads."""
        affected: dict[objects.ObjectKey, None] = {}
        for path in sorted(self._files.keys() - scan.present.keys()):
            affected.update(dict.fromkeys(self._replace(path, None, None)))
        for path, loaded in scan.parsed.items():
            affected.update(dict.fromkeys(self._replace(path, scan.present[path], loaded)))
        for path, signature in scan.present.items():
            if signature is None and path in self._files:
                self._files[path] = dataclasses.replace(self._files[path], signature=None)
        return list(affected)

    def _replace(
        self,
        path: str,
        signature: _Signature,
        loaded: dict[objects.ObjectKey, dict[str, Any]] | None,
    ) -> list[objects.ObjectKey]:
        previous = self._files.pop(path, None)
        before = previous.objects.keys() if previous is not None else set()
        after = loaded.keys() if loaded is not None else set()
        if loaded is not None:
            self._files[path] = _File(signature, loaded)
        for key in before - after:
            holders = self._holders[key]
            holders.remove(path)
            if not holders:
                del self._holders[key]
        for key in after:
            holders = self._holders.setdefault(key, [])
            if path in holders:
                holders.remove(path)
            holders.append(path)
        # Document order, then what the file no longer holds.
        return [*after, *(key for key in before if key not in after)]


def _logfmt(value: str) -> str:
    """A log line value: bare when it is one plain token, else JSON-quoted so the line stays one line."""
    return value if _BARE_VALUE.fullmatch(value) else json.dumps(value)


def _is_manifest(name: str) -> bool:
    return name.endswith(_SUFFIXES) and not name.startswith(".")


def _scan(
    directory: str,
    known: Mapping[str, _Signature],
    touched: Set[str],
    kinds: frozenset[objects.AnyKind],
) -> _Scan:
    """Stat every manifest file; read those that are new, changed, touched or due for a retry. Blocking."""
    scan = _Scan()
    try:
        names = sorted(entry.name for entry in os.scandir(directory) if _is_manifest(entry.name))
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise ConfigError(f"manifest directory {directory} is missing: {exc.strerror}") from exc
    for name in names:
        path = os.path.join(directory, name)
        try:
            info = os.stat(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            scan.present[path] = None
            scan.unreadable[path] = exc.strerror or str(exc)
            continue
        if not stat.S_ISREG(info.st_mode):
            continue
        signature = (info.st_ino, info.st_dev, info.st_size, info.st_mtime_ns)
        if path in known and known[path] == signature and path not in touched:
            scan.present[path] = signature
            continue
        try:
            with open(path, "rb") as file:
                data = file.read()
        except FileNotFoundError:
            continue
        except OSError as exc:
            scan.present[path] = None
            scan.unreadable[path] = exc.strerror or str(exc)
            continue
        scan.present[path] = signature
        scan.parsed[path], invalid = _parse_file(path, data, kinds)
        scan.invalid.extend(invalid)
    return scan


def _parse_file(
    path: str, data: bytes, kinds: frozenset[objects.AnyKind]
) -> tuple[dict[objects.ObjectKey, dict[str, Any]], list[_InvalidDocument]]:
    """The objects of `kinds` in one file (a later document wins over an earlier one) and the invalid ones."""
    found: dict[objects.ObjectKey, dict[str, Any]] = {}
    invalid: list[_InvalidDocument] = []
    index = 0
    for document in _documents(path, data):
        if document is None:
            continue
        try:
            if isinstance(document, _Unparsable):
                raise DecodeError("document", document.reason)
            entries = _objects_of(document)
        except DecodeError as exc:
            invalid.append(_InvalidDocument(path, index, exc.reason))
            index += 1
            continue
        for item, obj in entries:
            try:
                key = _key_if_wanted(obj, kinds)
            except DecodeError as exc:
                invalid.append(_InvalidDocument(path, index, exc.reason, item))
                continue
            if key is not None:
                found[key] = obj
        index += 1
    return found, invalid


@dataclasses.dataclass(frozen=True, slots=True)
class _Unparsable:
    reason: str


def _documents(path: str, data: bytes) -> Iterator[Any]:
    """Each document of a file decoded (None for an empty one), or _Unparsable with the reason."""
    if path.endswith(".json"):
        # msgspec rather than json: a quarter less CPU for the same dicts and lists (manifest files of 10,000
        # pods), strings of repeated keys shared, and invalid UTF-8 refused in the same pass.
        try:
            yield msgspec.json.decode(data)
        except msgspec.DecodeError as exc:
            yield _Unparsable(f"invalid JSON: {exc}")
        return
    start, first_line = 0, 0
    for separator in [*_SEPARATOR.finditer(data), None]:
        end = separator.start() if separator is not None else len(data)
        yield _load_yaml(data[start:end], first_line)
        if separator is not None:
            first_line += data.count(b"\n", start, separator.end()) + 1
            start = separator.end() + 1


def _load_yaml(chunk: bytes, first_line: int) -> Any:
    try:
        return yaml.load(chunk.decode("utf-8"), Loader=_Loader)
    except UnicodeDecodeError as exc:
        return _Unparsable(f"not UTF-8: {exc}")
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {first_line + mark.line + 1}, column {mark.column + 1}" if mark else ""
        return _Unparsable(f"invalid YAML: {exc.problem or exc.context or 'unparsable'}{where}")
    except yaml.YAMLError as exc:
        return _Unparsable(f"invalid YAML: {' '.join(str(exc).split())}")


def _objects_of(document: Any) -> list[tuple[int | None, Any]]:
    """(item index or None, object) for a document: a list's items, or the document itself."""
    if isinstance(document, dict) and str(document.get("kind", "")).endswith("List") and "items" in document:
        return list(enumerate(objects.list_items(document)))
    return [(None, document)]


def _key_if_wanted(obj: Any, kinds: frozenset[objects.AnyKind]) -> objects.ObjectKey | None:
    """The key of `obj` if its kind was requested, None if not; raises DecodeError if it is unusable."""
    if not isinstance(obj, dict):
        raise DecodeError("document", f"not a mapping but {type(obj).__name__}")
    kind = obj.get("kind")
    if not isinstance(kind, str) or not kind:
        raise DecodeError("document", "kind is missing or not a string")
    if kind not in kinds:
        return None
    return objects.object_key(objects.parse_kind(kind), obj)
