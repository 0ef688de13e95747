"""The payload dtypes, by name: the one list the config, the wire layer, the data planes and the precision
model read (a leaf module: it imports nothing of dcoord, so every layer may use it)."""

from __future__ import annotations

from typing import Literal, get_args

#: ``coding.payload_dtype``: what workers round their coded payloads to (they combine in float64)
PayloadDtype = Literal["float64", "float32", "bfloat16"]
PAYLOAD_DTYPES: tuple[str, ...] = get_args(PayloadDtype)
#: the dtypes numpy carries natively (every data plane beside gRPC carries these; bfloat16 needs ml_dtypes)
NATIVE_FLOATS: tuple[str, ...] = ("float32", "float64")
ITEMSIZE: dict[str, int] = {"float64": 8, "float32": 4, "bfloat16": 2}
#: unit roundoff of each (half an ulp at 1)
UNIT_ROUNDOFF: dict[str, float] = {"float64": 2.0**-53, "float32": 2.0**-24, "bfloat16": 2.0**-8}
