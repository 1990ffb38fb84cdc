"""Stand-in benchmark binaries for the simulator: ELF headers carrying a recognisable marker.

The simulated device recognises a pushed file as LiteRT's ``benchmark_model`` by the marker below and
prints the output format of the tool version embedded next to it. The ELF header is real (64-bit,
little-endian, ``ET_DYN``), so the host-side ABI check reads a genuine ``e_machine`` field.
"""

from __future__ import annotations

import struct

MARKER = b"EDGETRIM-SIM benchmark_model"
EM_AARCH64 = 183
EM_X86_64 = 62
EM_ARM = 40


def fake_benchmark_binary(
    version: str = "2.16.1", *, machine: int = EM_AARCH64, padding: int = 2048
) -> bytes:
    """An ELF-headed file the simulator runs as ``benchmark_model`` of the given tool ``version``."""
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # ELFCLASS64, little-endian, SYSV ABI
    header = ident + struct.pack("<HHI", 3, machine, 1)  # e_type=ET_DYN, e_machine, e_version
    header += bytes(64 - len(header))
    body = MARKER + b" LiteRT version " + version.encode() + b"\n"
    return header + body + bytes(padding)


def benchmark_version(content: bytes) -> str | None:
    """The tool version if ``content`` is a simulator benchmark binary for aarch64, else None."""
    if not content.startswith(b"\x7fELF") or MARKER not in content[:512]:
        return None
    tail = content[content.index(MARKER) + len(MARKER) :].split(b"\n", 1)[0]
    return tail.rsplit(b" ", 1)[-1].decode()


def elf_machine(content: bytes) -> int | None:
    if len(content) < 20 or not content.startswith(b"\x7fELF"):
        return None
    return struct.unpack_from("<H", content, 18)[0]
