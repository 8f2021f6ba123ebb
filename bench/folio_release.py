#!/usr/bin/env python3
"""Why pages are released in 2 MiB grains (docs/PERFORMANCE.md, "Memory budget").

    python3 bench/folio_release.py FILE [STEP_BYTES]

Reads FILE through a read-only mapping in STEP_BYTES chunks (default 16 KiB) from an unaligned
offset, two ways, and prints the file pages still mapped (RssFile) at the end:
  per-chunk:  MADV_DONTNEED on each chunk as it is done (what warp did before);
  grains:     MADV_DONTNEED on whole aligned 2 MiB blocks behind the reader (what warp does).
With large page-cache folios, a fault maps the whole folio, so the first way maps back pages it
just released.
"""
import mmap
import os
import sys

GRAIN = 2 << 20
PAGE = mmap.PAGESIZE


def rss_file_kib():
    for line in open("/proc/self/status"):
        if line.startswith("RssFile"):
            return int(line.split()[1])
    return -1


def sweep(path, step, grains):
    with open(path, "rb") as f:
        n = os.fstat(f.fileno()).st_size
        m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        off, released = 8000, 0
        while off + step < n:
            _ = m[off:off + step]
            if grains:
                end = (off + step) // GRAIN * GRAIN
                if end > released:
                    m.madvise(mmap.MADV_DONTNEED, released, end - released)
                    released = end
            else:
                start = off // PAGE * PAGE
                m.madvise(mmap.MADV_DONTNEED, start, off + step - start)
            off += step
        kib = rss_file_kib()
        m.close()
        return kib


def main():
    path = sys.argv[1]
    step = int(sys.argv[2]) if len(sys.argv) > 2 else 16384
    size = os.path.getsize(path) / 2**20
    for name, grains in [("per-chunk", False), ("grains", True)]:
        print(f"{name:10} step {step} B over {size:.0f} MiB: {rss_file_kib_str(sweep(path, step, grains))}")


def rss_file_kib_str(k):
    return f"{k / 1024:.1f} MiB of file pages still mapped"


if __name__ == "__main__":
    main()
