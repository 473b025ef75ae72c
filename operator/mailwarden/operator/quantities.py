"""Resource quantities by value, as the API server reads them (kubernetes/apimachinery
pkg/api/resource/quantity.go and suffix.go): binary suffixes (Ki ... Ei), decimal ones (n, u,
m, none, k ... E) and decimal exponents (e3, E6, ...), rounded up to whole nano units. The
operator compares what it wants with what the API server stored by value (`1024Mi` is
`1Gi`); the emulator (kubeemu/quantities.py) writes them back canonically from this parse."""

from __future__ import annotations

import math
import re
from fractions import Fraction

NUMBER = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(.*)$")
DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}


class QuantityError(ValueError):
    pass


def parse(text: str | int | float) -> tuple[Fraction, str]:
    """(value, format) with format one of "binary", "decimal", "exponent"."""
    match = NUMBER.match(str(text).strip())
    if match is None:
        raise QuantityError(f"quantities must match the regular expression: {text!r}")
    number, suffix = match.groups()
    value = Fraction(number)
    if suffix in BINARY:
        value *= 2 ** BINARY[suffix]
        fmt = "binary"
    elif suffix in DECIMAL:
        value *= Fraction(10) ** DECIMAL[suffix]
        fmt = "decimal"
    elif re.fullmatch(r"[eE][+-]?\d+", suffix):
        value *= Fraction(10) ** int(suffix[1:])
        fmt = "exponent"
    else:
        raise QuantityError(f"unable to parse quantity's suffix: {text!r}")
    # Rounded up (away from zero) to a whole number of nano units.
    nanos = value * 10**9
    nanos_int = math.ceil(nanos) if nanos >= 0 else math.floor(nanos)
    return Fraction(nanos_int, 10**9), fmt
