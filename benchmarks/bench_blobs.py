"""Large-value throughput and memory: put_file/get_file of a big value, against a local file.

    python benchmarks/bench_blobs.py                    # 1 GiB on SQLite
    python benchmarks/bench_blobs.py --mib 256 --postgres postgresql+psycopg://postgres@127.0.0.1/test

Each measurement runs in a fresh child process so its peak RSS (VmHWM) is the streaming cost
alone. The value is generated on the fly and the reader hashes what it gets, so neither side
ever holds the value. The baseline writes/reads the same bytes to/from a local file with the
same fsync at the end (what "durable" costs without a database).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import hashlib, json, os, sys, time
sys.path.insert(0, sys.argv[4])
mode, target, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
BLOCK = 1 << 20

class Source:
    def __init__(self, n):
        self.left = n
        self.block = os.urandom(BLOCK)
    def read(self, k=-1):
        k = self.left if k < 0 else min(k, self.left)
        self.left -= k
        reps, rest = divmod(k, BLOCK)
        return self.block * reps + self.block[:rest]
    def readable(self):
        return True

class Sink:
    def __init__(self):
        self.h = hashlib.sha256()
        self.n = 0
    def write(self, b):
        self.n += len(b)
        self.h.update(b)
        return len(b)

def hwm():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) // 1024 for l in f if l.startswith("VmHWM:"))

if mode == "file":
    src = Source(size)
    t = time.perf_counter()
    with open(target, "wb") as f:
        while True:
            b = src.read(256 << 10)
            if not b:
                break
            f.write(b)
        f.flush()
        os.fsync(f.fileno())
    w = time.perf_counter() - t
    sink = Sink()
    t = time.perf_counter()
    with open(target, "rb") as f:
        while b := f.read(256 << 10):
            sink.write(b)
    r = time.perf_counter() - t
    os.remove(target)
else:
    import kvstore
    store = kvstore.connect(target, namespace="bench-blobs")
    base = hwm()
    t = time.perf_counter()
    store.put_file("big", Source(size))
    w = time.perf_counter() - t
    sink = Sink()
    t = time.perf_counter()
    store.get_file("big", sink)
    r = time.perf_counter() - t
    assert sink.n == size
    store.delete("big")
print(json.dumps({"write_s": w, "read_s": r, "peak_mib": hwm()}))
"""


def run(mode: str, target: str, size: int) -> dict[str, float]:
    root = str(Path(__file__).resolve().parents[1])
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, target, str(size), root],
        capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=1024, help="value size in MiB (default 1024)")
    ap.add_argument("--postgres", default=os.environ.get("KVSTORE_TEST_POSTGRES_URL"))
    args = ap.parse_args()
    size = args.mib << 20
    tmp = Path(tempfile.mkdtemp())
    rows = [("local file (fsync)", run("file", str(tmp / "f.bin"), size))]
    rows.append(("kvstore SQLite", run("kv", f"sqlite:///{tmp / 'kv.db'}", size)))
    if args.postgres:
        rows.append(("kvstore PostgreSQL", run("kv", args.postgres, size)))
    mb = size / 1e6
    base = rows[0][1]
    print(f"\n{args.mib} MiB value, streamed\n")
    print(f"{'':22}{'write MB/s':>12}{'read MB/s':>12}{'write vs file':>15}{'read vs file':>14}{'peak RSS':>10}")
    for name, r in rows:
        print(
            f"{name:22}{mb / r['write_s']:12.0f}{mb / r['read_s']:12.0f}"
            f"{base['write_s'] / r['write_s']:14.2f}x{base['read_s'] / r['read_s']:13.2f}x"
            f"{r['peak_mib']:8.0f} MiB"
        )
    print("\n(x = fraction of the local file's throughput; the file is read back from the page cache)")
    for p in tmp.iterdir():
        p.unlink()
    tmp.rmdir()


if __name__ == "__main__":
    main()
