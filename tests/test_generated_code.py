"""The committed modules under clustermesh/api/ are exactly what proto/generate.py makes from proto/.

Excludes: whether the etcd declarations match a live etcd (tests/integration/test_etcd_client.py does that).
"""

from __future__ import annotations

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _generator():
    spec = importlib.util.spec_from_file_location("proto_generate", ROOT / "proto" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_matches_proto(tmp_path: pathlib.Path) -> None:
    written = _generator().generate(tmp_path)
    assert written, "proto/generate.py produced nothing"
    for path in written:
        rel = path.relative_to(tmp_path)
        committed = ROOT / rel
        assert committed.exists(), f"{rel} is generated but not committed: run python proto/generate.py"
        assert committed.read_bytes() == path.read_bytes(), f"{rel} is stale: run python proto/generate.py"


def test_etcd_method_paths_are_etcds() -> None:
    from clustermesh.api.etcd import rpc_pb2

    services = {s.name: [m.name for m in s.methods] for s in rpc_pb2.DESCRIPTOR.services_by_name.values()}
    assert rpc_pb2.DESCRIPTOR.package == "etcdserverpb"
    assert "Range" in services["KV"] and "Watch" in services["Watch"] and "LeaseKeepAlive" in services["Lease"]
