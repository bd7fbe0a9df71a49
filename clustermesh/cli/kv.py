"""`clustermesh kv ls|get|watch`: read the mesh's etcd keys, each value decoded, validated and pretty-printed.

Values stay what etcdctl shows; this command adds what they mean. An invalid value is shown raw with the reason
it failed validation, so an operator can tell a peer's garbage from a reader's bug.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from clustermesh import codec, errors, keys
from clustermesh.cli import etcd_options, output
from clustermesh.etcd import client as etcd_client
from clustermesh.etcd import watch as etcd_watch

RAW_PREVIEW_BYTES = 200


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `kv` and its actions."""
    parser = subparsers.add_parser("kv", help="read and decode the mesh's etcd keys")
    actions = parser.add_subparsers(dest="kv_action", metavar="ACTION", required=True)
    for name, help_text in (
        ("ls", "list keys under a prefix with a one-line summary of each value"),
        ("get", "show the decoded value of every key under a prefix (or one key)"),
        ("watch", "stream changes under a prefix"),
    ):
        action = actions.add_parser(name, help=help_text)
        action.add_argument("prefix", metavar="PREFIX", help="key or key prefix, e.g. cilium/state/nodes/v1/")
        etcd_options.add_arguments(action, local_mesh=True)
        output.add_argument(action)
        if name == "watch":
            action.add_argument("--count", type=int, default=0, help="stop after this many events (0: never)")
        action.set_defaults(handler=lambda args, name=name: asyncio.run(_ACTIONS[name](args)))


def describe(key: bytes, value: bytes) -> dict[str, Any]:
    """Decode one key/value for display: kind, decoded value or raw value with the reason it is invalid."""
    key_str = key.decode(errors="replace")
    parsed = keys.parse_key(key_str)
    kind = None
    if parsed is not None:
        kind = parsed.kind.value if parsed.type is keys.KeyType.RECORD and parsed.kind else parsed.type.value
    try:
        _, record = codec.decode_any(key_str, value)
    except errors.DecodeError as exc:
        return {"key": key_str, "kind": kind, "valid": False, "error": exc.reason,
                "raw": value[:RAW_PREVIEW_BYTES].decode(errors="replace")}
    return {"key": key_str, "kind": kind, "valid": True, "value": codec.to_jsonable(record)}


def _summary(entry: dict[str, Any]) -> str:
    if not entry["valid"]:
        return f"INVALID: {entry['error']}"
    text = json.dumps(entry["value"], separators=(",", ":"), default=str)
    return text if len(text) <= 100 else text[:97] + "..."


async def _read(args: argparse.Namespace) -> list[dict[str, Any]]:
    config = etcd_options.config_from_args(args)
    async with await etcd_client.EtcdClient.connect(config) as client:
        prefix = args.prefix.encode()
        result = await client.list_prefix(prefix)
    return [describe(kv.key, kv.value) for kv in result.kvs]


async def _ls(args: argparse.Namespace) -> int:
    entries = await _read(args)
    if args.output == "json":
        output.print_json(entries)
    else:
        output.print_table(("KEY", "KIND", "VALUE"),
                           ((e["key"], e["kind"] or "?", _summary(e)) for e in entries))
    return 0 if all(e["valid"] for e in entries) else 1


async def _get(args: argparse.Namespace) -> int:
    entries = await _read(args)
    if not entries:
        output.error(f"no key under {args.prefix!r}")
        return 1
    if args.output == "json":
        output.print_json(entries)
    else:
        for entry in entries:
            print(f"# {entry['key']}" + ("" if entry["valid"] else f"  INVALID: {entry['error']}"))
            body = entry["value"] if entry["valid"] else entry["raw"]
            print(json.dumps(body, indent=2, default=str) if entry["valid"] else body)
    return 0 if all(e["valid"] for e in entries) else 1


async def _watch(args: argparse.Namespace) -> int:
    config = etcd_options.config_from_args(args)
    seen = 0
    async with await etcd_client.EtcdClient.connect(config) as client:
        watch = etcd_watch.Watch.prefix(client, args.prefix.encode(), progress_notify=False)
        async for batch in watch:
            for event in batch.events:
                if event.type is etcd_watch.EventType.DELETE:
                    entry: dict[str, Any] = {"key": event.key.decode(errors="replace"), "deleted": True}
                else:
                    entry = describe(event.key, event.value)
                entry["event"] = event.type.name
                entry["revision"] = event.mod_revision
                if args.output == "json":
                    output.print_json_line(entry)
                else:
                    detail = "" if entry.get("deleted") else _summary(entry)
                    print(f"{event.mod_revision} {event.type.name} {entry['key']} {detail}".rstrip(), flush=True)
                seen += 1
                if args.count and seen >= args.count:
                    return 0
    return 0


_ACTIONS = {"ls": _ls, "get": _get, "watch": _watch}
