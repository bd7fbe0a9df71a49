"""Generate the Python modules under clustermesh/api/ from the .proto sources under proto/.

Run `python proto/generate.py` after editing a .proto file; tests/test_generated_code.py fails while the
committed modules differ from what this script produces. Each proto directory maps to one package:
proto/<dir>/x.proto -> clustermesh/api/<dir>/x_pb2.py, imported as clustermesh.api.<dir>.x_pb2.
"""

from __future__ import annotations

import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PACKAGES = {"etcd": "clustermesh/api/etcd", "clustermesh/v1": "clustermesh/api/v1"}


def generate(out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Write generated modules into out_dir (mirroring the repository layout); return their paths."""
    from grpc_tools import protoc

    written: list[pathlib.Path] = []
    for proto_sub, package_path in PACKAGES.items():
        sources = sorted((PROTO_DIR / proto_sub).glob("*.proto"))
        if not sources:
            continue
        # A virtual include path makes protoc emit package-absolute imports (clustermesh.api.x.y_pb2).
        args = [
            "protoc",
            f"-I{package_path}={PROTO_DIR / proto_sub}",
            f"-I{protoc._get_resource_file_name('grpc_tools', '_proto')}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            *(f"{package_path}/{src.name}" for src in sources),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed for {proto_sub}")
        written.extend(sorted((out_dir / package_path).glob("*_pb2*.py*")))
    return written


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp)
        for path in generate(out):
            rel = path.relative_to(out)
            target = ROOT / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
            print(f"wrote {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
