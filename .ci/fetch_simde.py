"""Fetches SIMDe 0.8.2's headers for the AVX-512 kernels' emulated check (tests/test_native_cross_arch.py).

SIMDe is header-only; Debian bookworm's 0.7.4 lacks intrinsics the kernels use, so this takes
trixie's package from Debian's archive, checks its hash, and unpacks usr/include/simde with Python
alone (no dpkg, curl or apt needed). Usage: fetch_simde.py DEST; prints DEST/usr/include, or
exits 1 with a one-line reason (CI then skips that check, and says so).
"""

from __future__ import annotations

import hashlib
import io
import sys
import tarfile
import urllib.request
from pathlib import Path

URL = "http://deb.debian.org/debian/pool/main/s/simde/libsimde-dev_0.8.2-3_all.deb"
SHA256 = "277dcde3fb84223b7026174042646e236da42adce2fcb77031807ede8166a51e"


def ar_member(archive: bytes, prefix: str) -> bytes:
    """The first member of a Unix ar archive (a .deb) whose name starts with `prefix`."""
    offset = 8  # after "!<arch>\n"
    while offset + 60 <= len(archive):
        name, size = archive[offset : offset + 16].decode().strip(), int(archive[offset + 48 : offset + 58])
        if name.startswith(prefix):
            return archive[offset + 60 : offset + 60 + size]
        offset += 60 + size + size % 2
    raise ValueError(f"no {prefix}* in the package")


def main() -> None:
    dest = Path(sys.argv[1])
    include = dest / "usr" / "include"
    if not (include / "simde" / "simde-common.h").is_file():
        with urllib.request.urlopen(URL, timeout=60) as response:
            package = response.read()
        if hashlib.sha256(package).hexdigest() != SHA256:
            raise ValueError(f"{URL} does not have the expected SHA-256")
        with tarfile.open(fileobj=io.BytesIO(ar_member(package, "data.tar")), mode="r:*") as data:
            members = [m for m in data.getmembers() if m.name.lstrip("./").startswith("usr/include/simde/")]
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # 3.11.4+
            data.extractall(dest, members=members, **safe)
    print(include)


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # noqa: BLE001 - any failure only means the check cannot run here
        print(f"SIMDe not fetched ({exc}): the emulated AVX-512 kernel check will skip", file=sys.stderr)
        sys.exit(1)
