"""What `signing-proxy sign --explain` shows of an hmac signature, printable."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final


@dataclass
class Explanation:
    """What `signing-proxy sign --explain` shows. Holds no secret: the key only by its shape."""

    vars: list[tuple[str, bytes]] = field(default_factory=list)
    stripped: list[str] = field(default_factory=list)
    message: bytes = b""
    key: str = ""
    algorithm: str = ""
    signature: str = ""
    placements: list[tuple[str, bytes]] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        """Printable: every byte string escaped (`\\n`, `\\x00`), so raw digests show."""
        return {
            "vars": {name: escape_bytes(value) for name, value in self.vars},
            "stripped": self.stripped,
            "message": escape_bytes(self.message),
            "message_bytes": len(self.message),
            "algorithm": self.algorithm,
            "key": self.key,
            "signature": self.signature,
            "placements": {where: escape_bytes(value) for where, value in self.placements},
        }


_ESCAPES: Final = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_bytes(data: bytes) -> str:
    """UTF-8 text as it is; `\\`, control and undecodable bytes escaped, Python style."""
    out = []
    for char in data.decode("utf-8", "surrogateescape"):
        code = ord(char)
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif 0xDC80 <= code <= 0xDCFF:  # an undecodable byte
            out.append(f"\\x{code - 0xDC00:02x}")
        elif not char.isprintable():
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)
