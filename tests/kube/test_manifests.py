"""Tests of the manifest directory source on a real temporary directory with the real file watcher.

Covered: the initial load (multi-document YAML, `kind: List` and typed lists, JSON, namespace defaulting,
ignored kinds and files), SYNCED exactly once, live add/edit/delete of files, rename into place, editors'
temporary files, invalid documents (one log line with file and index, counted, skipped while the rest flows),
an object in two files, suppression of unchanged objects, and misuse (a second concurrent run, a missing
directory). Not covered: unreadable files (tests may run as root) and ConfigMap volume symlink swaps.

No sleeps: after a change that must produce nothing, the test writes a "barrier" file that sorts last and
waits for its object; the source handles changes in order, so anything the earlier change caused is recorded
by then.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from clustermesh import kube
from clustermesh.errors import ConfigError

if TYPE_CHECKING:
    from conftest import Recorder

Start = Callable[[kube.Source, kube.EventSink], Awaitable["asyncio.Task[None]"]]
UPSERT, DELETE = kube.EventType.UPSERT, kube.EventType.DELETE
SYNCED_ITEM = (None, "SYNCED")
_barriers = itertools.count()


def node_key(name: str) -> kube.ObjectKey:
    return kube.ObjectKey(kube.Kind.NODE, "", name)


def service_key(namespace: str, name: str) -> kube.ObjectKey:
    return kube.ObjectKey(kube.Kind.SERVICE, namespace, name)


def node_yaml(name: str, **labels: str) -> str:
    label_lines = "".join(f"    {key}: {value!r}\n" for key, value in labels.items())
    return f"apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n" + (
        f"  labels:\n{label_lines}" if labels else ""
    )


def write(path: Path, text: str) -> None:
    path.write_text(text)


def replace_atomically(path: Path, text: str) -> None:
    """Write a hidden temporary file and rename it over `path`, as kubectl, editors and config tools do."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


async def barrier(directory: Path, recorder: Recorder) -> None:
    """Write a new file that sorts last and wait for its object: everything changed before is handled."""
    name = f"barrier-{next(_barriers)}"
    write(directory / f"zz-{name}.yaml", node_yaml(name))
    await recorder.wait_for_event(UPSERT, node_key(name))


def without_barriers(items: list[tuple[Any, str]]) -> list[tuple[Any, str]]:
    return [item for item in items if "barrier-" not in item[1]]


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    return manifests


def source_for(directory: Path) -> kube.ManifestSource:
    return kube.ManifestSource(directory, kinds=[kube.Kind.NODE, kube.Kind.SERVICE])


async def test_initial_load_delivers_every_requested_object_then_synced_once(
    directory: Path, recorder: Recorder, start: Start
) -> None:
    write(
        directory / "nodes.yaml",
        "# a comment before the first separator\n---\n"
        + node_yaml("node-1")
        + "  creationTimestamp: 2024-01-02T03:04:05Z\n"
        + "---   # separator with a comment\n"
        + node_yaml("node-2", zone="a")
        + "---\n",
    )
    write(
        directory / "services.yml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {ports: [{port: 80}]}\n"
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: api}\n"
        "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {}\n",
    )
    write(
        directory / "list.json",
        '{"apiVersion": "v1", "kind": "List", "items": [{"apiVersion": "v1", "kind": "Node", '
        '"metadata": {"name": "node-3"}}]}',
    )
    write(directory / "typed.yaml", "apiVersion: v1\nkind: NodeList\nitems:\n- metadata: {name: node-4}\n")
    for ignored in (".hidden.yaml", "notes.txt", "nodes.yaml~", "#nodes.yaml#"):
        write(directory / ignored, node_yaml("ignored"))
    (directory / "subdir").mkdir()
    write(directory / "subdir" / "deep.yaml", node_yaml("ignored"))
    source = source_for(directory)

    await start(source, recorder)

    assert set(recorder.state()) == {
        node_key("node-1"),
        node_key("node-2"),
        node_key("node-3"),
        node_key("node-4"),
        service_key("shop", "web"),
        service_key("default", "api"),
    }
    assert recorder.items[-1] is kube.SYNCED
    assert recorder.items.count(kube.SYNCED) == 1
    state = recorder.state()
    # Timestamps stay strings, exactly as the API server's JSON has them.
    assert state[node_key("node-1")]["metadata"]["creationTimestamp"] == "2024-01-02T03:04:05Z"
    assert state[node_key("node-2")]["metadata"]["labels"] == {"zone": "a"}
    assert state[node_key("node-4")]["kind"] == "Node"
    assert state[node_key("node-4")]["apiVersion"] == "v1"
    assert state[service_key("shop", "web")]["spec"] == {"ports": [{"port": 80}]}
    assert source.invalid_documents == 0


async def test_live_add_edit_and_delete_of_files(directory: Path, recorder: Recorder, start: Start) -> None:
    write(directory / "a.yaml", node_yaml("node-a"))
    await start(source_for(directory), recorder)

    mark = recorder.mark()
    service = "kind: Service\nmetadata: {name: svc, namespace: ns}\n"
    write(directory / "b.yaml", node_yaml("node-b") + "---\n" + service)
    await recorder.wait_for_event(UPSERT, service_key("ns", "svc"))
    assert recorder.since(mark) == [(UPSERT, "Node/node-b"), (UPSERT, "Service/ns/svc")]

    mark = recorder.mark()
    write(directory / "a.yaml", node_yaml("node-a", role="edge"))
    await recorder.wait_for(lambda: len(recorder.items) > mark)
    assert recorder.since(mark) == [(UPSERT, "Node/node-a")]
    assert recorder.state()[node_key("node-a")]["metadata"]["labels"] == {"role": "edge"}

    mark = recorder.mark()
    write(directory / "b.yaml", node_yaml("node-b"))
    await recorder.wait_for(lambda: len(recorder.items) > mark)
    assert recorder.since(mark) == [(DELETE, "Service/ns/svc")]

    mark = recorder.mark()
    (directory / "a.yaml").unlink()
    await recorder.wait_for(lambda: len(recorder.items) > mark)
    deleted = recorder.items[mark]
    assert isinstance(deleted, kube.Event)
    assert (deleted.type, deleted.key) == (DELETE, node_key("node-a"))
    assert deleted.obj["metadata"]["labels"] == {"role": "edge"}, "a delete carries the last state"

    await barrier(directory, recorder)
    assert recorder.items.count(kube.SYNCED) == 1


async def test_rename_into_place_and_editor_temporary_files(
    directory: Path, recorder: Recorder, start: Start
) -> None:
    await start(source_for(directory), recorder)

    hidden = directory / ".a.yaml.tmp"
    write(hidden, node_yaml("node-x"))
    await barrier(directory, recorder)
    assert recorder.find(UPSERT, node_key("node-x")) is None

    mark = recorder.mark()
    os.replace(hidden, directory / "a.yaml")
    await recorder.wait_for_event(UPSERT, node_key("node-x"))
    assert recorder.since(mark) == [(UPSERT, "Node/node-x")]

    mark = recorder.mark()
    for temporary in ("a.yaml~", ".a.yaml.swp", "#a.yaml#", ".#a.yaml", "a.yaml.kate-swp"):
        write(directory / temporary, node_yaml("node-y"))
    await barrier(directory, recorder)
    assert without_barriers(recorder.since(mark)) == []

    mark = recorder.mark()
    replace_atomically(directory / "a.yaml", node_yaml("node-z"))
    await recorder.wait_for(lambda: recorder.find(DELETE, node_key("node-x")) is not None)
    assert sorted(recorder.since(mark), key=str) == sorted(
        [(UPSERT, "Node/node-z"), (DELETE, "Node/node-x")], key=str
    )


async def test_invalid_documents_are_logged_counted_and_skipped(
    directory: Path, recorder: Recorder, start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="clustermesh.kube.manifests")
    bad = directory / "bad.yaml"
    write(
        bad,
        node_yaml("good-1")
        + "---\nmetadata: {name: x}\nkind: Node: extra\n"  # document 1: bad YAML, on line 7 of the file
        + "---\n- just\n- a list\n"  # document 2: not a mapping
        + "---\nkind: Node\nmetadata: {namespace: x}\n"  # document 3: no name
        + "---\nmetadata: {name: no-kind}\n"  # document 4: no kind
        + "---\n"
        + node_yaml("good-2")  # document 5
        + "---\nkind: List\nitems:\n- {kind: Node, metadata: {name: good-3}}\n- a string\n",  # document 6
    )
    write(directory / "broken.json", "{not json")
    source = source_for(directory)

    await start(source, recorder)

    assert set(recorder.state()) == {node_key("good-1"), node_key("good-2"), node_key("good-3")}
    lines = [r.getMessage() for r in caplog.records if "event=manifest.invalid" in r.getMessage()]
    assert all("\n" not in line for line in lines)
    by_place = {line.split(" reason=")[0]: line.split(" reason=")[1] for line in lines}
    assert set(by_place) == {
        f"event=manifest.invalid file={bad} document=1",
        f"event=manifest.invalid file={bad} document=2",
        f"event=manifest.invalid file={bad} document=3",
        f"event=manifest.invalid file={bad} document=4",
        f"event=manifest.invalid file={bad} document=6 item=1",
        f"event=manifest.invalid file={directory / 'broken.json'} document=0",
    }
    assert "invalid YAML" in by_place[f"event=manifest.invalid file={bad} document=1"]
    assert "line 7, column 11" in by_place[f"event=manifest.invalid file={bad} document=1"]
    assert "metadata.name" in by_place[f"event=manifest.invalid file={bad} document=3"]
    assert "kind" in by_place[f"event=manifest.invalid file={bad} document=4"]
    assert source.invalid_documents == 6

    # Live: an invalid document added next to a valid one does not hold the valid one back.
    write(directory / "more.yaml", "kind: Node\nmetadata: {name: [\n---\n" + node_yaml("good-4"))
    await recorder.wait_for_event(UPSERT, node_key("good-4"))
    assert source.invalid_documents == 7


async def test_an_object_in_two_files_comes_from_the_file_loaded_last(
    directory: Path, recorder: Recorder, start: Start
) -> None:
    write(directory / "a.yaml", node_yaml("dup", origin="a"))
    write(directory / "b.yaml", node_yaml("dup", origin="b"))
    await start(source_for(directory), recorder)

    def origin() -> str | None:
        current = recorder.state().get(node_key("dup"))
        return None if current is None else current["metadata"]["labels"]["origin"]

    assert origin() == "b", "files load in name order, so b.yaml is loaded last"

    write(directory / "a.yaml", node_yaml("dup", origin="a2"))
    await recorder.wait_for(lambda: origin() == "a2")

    mark = recorder.mark()
    (directory / "a.yaml").unlink()
    await recorder.wait_for(lambda: origin() == "b")
    assert recorder.since(mark) == [(UPSERT, "Node/dup")], "the other file's copy takes over, no delete"

    (directory / "b.yaml").unlink()
    await recorder.wait_for(lambda: origin() is None)


async def test_unchanged_objects_are_not_delivered_again(
    directory: Path, recorder: Recorder, start: Start
) -> None:
    write(directory / "a.yaml", node_yaml("node-a", zone="x"))
    await start(source_for(directory), recorder)

    mark = recorder.mark()
    write(directory / "a.yaml", node_yaml("node-a", zone="x"))
    reformatted = "# same object\n" + node_yaml("node-a", zone="x").replace("  ", "    ")
    write(directory / "a.yaml", reformatted)
    replace_atomically(directory / "a.yaml", node_yaml("node-a", zone="x"))
    await barrier(directory, recorder)

    assert without_barriers(recorder.since(mark)) == []


async def test_a_second_concurrent_run_is_refused(directory: Path, recorder: Recorder, start: Start) -> None:
    source = source_for(directory)
    await start(source, recorder)

    with pytest.raises(RuntimeError, match="already running"):
        await source.run(recorder)


async def test_removing_the_directory_stops_the_source_with_a_config_error(
    directory: Path, recorder: Recorder
) -> None:
    write(directory / "a.yaml", node_yaml("node-a"))
    ready = asyncio.Event()
    task = asyncio.create_task(source_for(directory).run(recorder, ready=ready))
    async with asyncio.timeout(10):
        await ready.wait()

    shutil.rmtree(directory)

    with pytest.raises(ConfigError, match="missing"):
        async with asyncio.timeout(10):
            await task
    assert recorder.find(DELETE, node_key("node-a")) is None, "a vanished directory proves nothing is gone"


async def test_a_missing_directory_is_a_config_error(tmp_path: Path, recorder: Recorder) -> None:
    source = source_for(tmp_path / "missing")

    with pytest.raises(ConfigError, match="missing"):
        await source.run(recorder)
    assert recorder.items == []
