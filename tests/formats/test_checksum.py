"""checksum_file: the recorded xxh3-128 of a file's bytes, hashed in bounded windows."""

from __future__ import annotations

import mmap
import subprocess
import sys
from pathlib import Path

import pytest
import xxhash

from mixer.formats import checksum
from mixer.formats.checksum import checksum_bytes, checksum_file

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("extra", [-1, 0, 1])
@pytest.mark.parametrize("windows", [0, 1, 3])
def test_windows_hash_the_whole_file(tmp_path, monkeypatch, windows, extra):
    monkeypatch.setattr(checksum, "WINDOW", mmap.ALLOCATIONGRANULARITY)
    size = max(0, windows * mmap.ALLOCATIONGRANULARITY + extra)
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    f = tmp_path / "f.bin"
    f.write_bytes(data)
    assert checksum_file(f) == checksum_bytes(data) == xxhash.xxh3_128(data).hexdigest()


PROBE = """
import sys
from mixer.formats.checksum import checksum_file
def hwm():
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) * 1024
with open(sys.argv[1], 'rb') as f:  # in the page cache, so a mapping's pages are resident at once
    while f.read(1 << 20):
        pass
before = hwm()
checksum_file(sys.argv[1])
print(hwm() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_memory_does_not_grow_with_the_file(tmp_path):
    """A whole-file mapping counted every hashed page in the process's RSS: the merge of a
    store of 16M short documents peaked at the size of its largest file."""
    f = tmp_path / "big.bin"
    with open(f, "wb") as out:
        for _ in range(24):
            out.write(b"\x5a" * (8 << 20))  # 192 MiB
    grown = int(subprocess.run([sys.executable, "-c", PROBE, str(f)], capture_output=True, text=True, check=True,
                               cwd=ROOT).stdout)
    assert grown < 64 << 20, f"hashing 192 MiB raised the peak RSS by {grown >> 20} MiB"
