"""Config value types: durations (`250ms`, `5s`, `1m`), sizes (`64KiB`, `1MB`), addresses.

Rules of this module:
- Each type parses a string (or a bare number) into a plain Python value: durations are float
  seconds, sizes are int bytes, addresses are (host, port) pairs. Models store those values.
- A bad value raises ValueError whose message says what was expected; the loader adds the file,
  line and key path.
- An address's host is checked as `bascule run` would use it: an IP address must be a real one
  (`127.0.0.300` is refused here, not by a failing bind later), anything else must be a host
  name by RFC 1123's letters, digits and hyphens (plus `_`, which container networks use).
"""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, PlainSerializer

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|µs|ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB|TB|TiB|k|K|M|G)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "TiB": 1024**4,
    "k": 1024,
    "K": 1024,
    "M": 1024**2,
    "G": 1024**3,
}


def parse_duration(value: Any) -> float:
    """`250ms` → 0.25; a bare number is seconds. Negative durations are refused."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 250ms or 5s, got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            # NaN and infinity would break the event loop's timer ordering
            raise ValueError(f"duration must be a finite number, got {value!r}")
        if value < 0:
            raise ValueError(f"duration must not be negative, got {value!r}")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"]
    raise ValueError(f"expected a duration such as 250ms, 5s or 2m, got {value!r}")


def parse_size(value: Any) -> int:
    """`64KiB` → 65536; a bare number is bytes. KB/MB are powers of 1000, KiB/MiB of 1024."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as 64KiB or 1MB, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must not be negative, got {value!r}")
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    raise ValueError(f"expected a size such as 64KiB, 1MiB or 4096, got {value!r}")


def parse_address(value: Any) -> tuple[str, int]:
    """`127.0.0.1:8080`, `[::1]:8080`, `localhost:80` → (host, port)."""
    if not isinstance(value, str):
        raise ValueError(f"expected an address such as 127.0.0.1:8080, got {value!r}")
    text = value.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"expected [IPv6]:port, got {value!r}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"expected host:port such as 127.0.0.1:8080, got {value!r}")
        if ":" in host:
            raise ValueError(f"write IPv6 addresses in brackets, as [::1]:8080, got {value!r}")
        _check_host(host)
    if not port_text.isdigit():
        raise ValueError(f"port must be a number, got {port_text!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range")
    return host, port


# Digits and dots only: meant as an IPv4 address (no top-level domain is all digits).
_DOTTED = re.compile(r"^[0-9.]+$")
_HOST_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_\-]{0,61}[A-Za-z0-9_])?"
_HOST_NAME = re.compile(rf"^{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?$")


def _check_host(host: str) -> None:
    if _DOTTED.match(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            # The resolver would read `10.1` as 10.0.0.1 and fail on `127.0.0.300` only at
            # bind time; neither is what the user meant to write.
            raise ValueError(
                f"{host!r} is not an IPv4 address (each of its four numbers is 0 to 255)"
            ) from None
    elif len(host) > 253 or not _HOST_NAME.match(host):
        raise ValueError(f"{host!r} is neither an IP address nor a host name")


def format_address(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def positive(value: float) -> float:
    """For durations that divide time into steps (intervals, timeouts): 0 would spin."""
    if value <= 0:
        raise ValueError(f"must be positive, got {value:g}")
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), AfterValidator(positive)]
Size = Annotated[int, BeforeValidator(parse_size)]
Address = Annotated[
    tuple[str, int], BeforeValidator(parse_address), PlainSerializer(format_address)
]
