#!/usr/bin/env python3
"""Bridge between posbridge's interoperability tests and pyiso8583 4.0.1, an independent ISO 8583
implementation.

One process answers a whole batch, so a test run starts Python once. Reads one JSON document on
stdin and writes one on stdout:

    request:  {"requests": [
                 {"spec": "iso87ascii", "op": "decode", "hex": "30323030..."},
                 {"spec": "cups-pos",   "op": "encode",
                  "message": {"mti": "0200", "header": "...", "fields": {"2": "6222...", ...}}}
              ]}
    response: {"pyiso8583": "4.0.1",
               "results": [
                 {"ok": true, "message": {"mti": "0200", "header": "...", "fields": {...}}},
                 {"ok": true, "hex": "..."},
                 {"ok": false, "error": "Field data is 3 bytes, expecting 4: field 2 pos 8"}
              ]}

Messages use posbridge's JSON shape (the `posbridge iso8583 decode --json` output): numeric and text
fields are strings of their characters or digits, binary fields uppercase hex, `header` is the
uppercase hex of the bytes before the MTI and is absent when the dialect has none. Bitmaps are not
listed: both sides derive them from the fields present.

The pyiso8583 specs below are written from the dialects' definitions (field formats, length
prefixes, BCD alignment), not generated from posbridge's TOML files, so a mistake in either side
shows up as a mismatch.
"""

import copy
import json
import os
import sys
import tomllib

import iso8583
from iso8583 import specs as pyspecs

# --- iso87ascii --------------------------------------------------------------------------------
# ISO 8583:1987, ASCII MTI, hex-text bitmaps, ASCII numerics and ASCII LL/LLL lengths: pyiso8583's
# own `default_ascii` spec87 layout, in which every field (PIN block, ICC data and MAC included) is
# ASCII text of at most max_len characters.
ISO87ASCII = copy.deepcopy(pyspecs.default_ascii)


# --- cups-pos ------------------------------------------------------------------------------------
# China UnionPay POS terminal dialect: 11-byte header (TPDU + 6-byte application header) carried
# as opaque bytes, BCD MTI, binary bitmap, BCD numerics whose LL/LLL lengths are BCD and count
# digits (nibbles), odd lengths aligned per field (2, 22, 32, 35, 36, 48, 60, 61 left-aligned,
# padded at the end; 23 and the even-length fixed numerics right-aligned), text fields ASCII with
# BCD lengths counting bytes, binary fields (52, 55, 62, 64) with BCD lengths counting bytes.
def _bcd_fixed(digits, desc, align="right", pad="0"):
    spec = {
        "data_enc": "b",
        "len_enc": "bcd",
        "len_type": 0,
        "max_len": digits,
        "len_count": "nibbles",
        "desc": desc,
    }
    if digits % 2:
        spec["left_pad" if align == "right" else "right_pad"] = pad
    return spec


def _bcd_var(len_digits, max_digits, desc, align="left", pad="0"):
    spec = {
        "data_enc": "b",
        "len_enc": "bcd",
        "len_type": 1 if len_digits == 2 else 2,
        "max_len": max_digits,
        "len_count": "nibbles",
        "desc": desc,
    }
    spec["left_pad" if align == "right" else "right_pad"] = pad
    return spec


def _text_fixed(length, desc):
    return {"data_enc": "ascii", "len_enc": "bcd", "len_type": 0, "max_len": length, "desc": desc}


def _text_var(len_digits, max_len, desc):
    return {
        "data_enc": "ascii",
        "len_enc": "bcd",
        "len_type": 1 if len_digits == 2 else 2,
        "max_len": max_len,
        "desc": desc,
    }


def _binary_fixed(length, desc):
    return {"data_enc": "b", "len_enc": "bcd", "len_type": 0, "max_len": length, "desc": desc}


def _binary_var(len_digits, max_len, desc):
    return {
        "data_enc": "b",
        "len_enc": "bcd",
        "len_type": 1 if len_digits == 2 else 2,
        "max_len": max_len,
        "desc": desc,
    }


CUPS_POS = {
    "h": _binary_fixed(11, "TPDU + POS application header"),
    "t": {"data_enc": "b", "len_enc": "ascii", "len_type": 0, "max_len": 2, "desc": "MTI (BCD)"},
    "p": _binary_fixed(8, "Primary bitmap"),
    "2": _bcd_var(2, 19, "PAN", align="left"),
    "3": _bcd_fixed(6, "Processing code"),
    "4": _bcd_fixed(12, "Amount"),
    "11": _bcd_fixed(6, "STAN"),
    "12": _bcd_fixed(6, "Local time"),
    "13": _bcd_fixed(4, "Local date"),
    "14": _bcd_fixed(4, "Expiry date"),
    "15": _bcd_fixed(4, "Settlement date"),
    "22": _bcd_fixed(3, "POS entry mode", align="left"),
    "23": _bcd_fixed(3, "Card sequence number", align="right"),
    "25": _bcd_fixed(2, "POS condition code"),
    "26": _bcd_fixed(2, "PIN capture code"),
    "32": _bcd_var(2, 11, "Acquiring institution", align="left"),
    "35": _bcd_var(2, 37, "Track 2", align="left"),
    "36": _bcd_var(3, 104, "Track 3", align="left"),
    "37": _text_fixed(12, "RRN"),
    "38": _text_fixed(6, "Authorisation code"),
    "39": _text_fixed(2, "Response code"),
    "41": _text_fixed(8, "Terminal ID"),
    "42": _text_fixed(15, "Merchant ID"),
    "44": _text_var(2, 25, "Additional response data"),
    "48": _bcd_var(3, 322, "Additional data - private", align="left"),
    "49": _text_fixed(3, "Currency code"),
    "52": _binary_fixed(8, "PIN block"),
    "53": _bcd_fixed(16, "Security control information"),
    "54": _text_var(3, 20, "Balance amount"),
    "55": _binary_var(3, 255, "ICC data"),
    "58": _text_var(3, 100, "PBOC electronic data"),
    "59": _text_var(3, 999, "Reserved (aggregator data)"),  # 999: UnionPay POS specification (public implementations)
    "60": _bcd_var(3, 100, "Reserved private (60.1 type, 60.2 batch, 60.3 NMI, later sub-fields)", align="left"),
    "61": _bcd_var(3, 29, "Original message data", align="left"),
    "62": _binary_var(3, 512, "Reserved private (working keys under the master key / QR TLV)"),
    "63": _text_var(3, 163, "Reserved private"),
    "64": _binary_fixed(8, "MAC"),
}

# --- iso87binary, cups-host ------------------------------------------------------------------------
# iso87binary is posbridge's own layout (no outside document defines it) and cups-host's field table
# is not public, so their field tables are read from codecs/specs/*.toml; what this checks is the encoding mechanics against pyiso8583's
# independent implementation: BCD digits, `F` and `0` pads, right-aligned LLVAR numerics,
# digit-counted BCD lengths, binary bitmaps. The mapping below is written from the spec format's
# documentation (codecs/src/spec.rs), not from posbridge's code.
def _spec_from_toml(path):
    with open(path, "rb") as file:
        dialect = tomllib.load(file)
    spec = {}
    header = dialect.get("header", {}).get("length", 0)
    spec["h"] = {"data_enc": "b", "len_enc": "ascii", "len_type": 0, "max_len": header, "desc": "Header"}
    if dialect["mti"]["encoding"] == "bcd":
        spec["t"] = {"data_enc": "b", "len_enc": "ascii", "len_type": 0, "max_len": 2, "desc": "MTI"}
    else:
        spec["t"] = {"data_enc": "ascii", "len_enc": "ascii", "len_type": 0, "max_len": 4, "desc": "MTI"}
    if dialect["bitmap"]["encoding"] == "binary":
        bitmap = {"data_enc": "b", "len_enc": "ascii", "len_type": 0, "max_len": 8}
    else:
        bitmap = {"data_enc": "ascii", "len_enc": "ascii", "len_type": 0, "max_len": 16}
    spec["p"] = dict(bitmap, desc="Primary bitmap")
    spec["1"] = dict(bitmap, desc="Secondary bitmap")
    for number, field in dialect["fields"].items():
        spec[number] = _field_from_toml(field)
    return spec


def _field_from_toml(field):
    data = field.get("data", "ascii")
    counts = field.get("length_counts", "bytes")
    digits = {"fixed": 0, "llvar": 2, "lllvar": 3, "llllvar": 4}[field["type"]]
    prefix = field.get("length_encoding", "ascii")
    out = {"desc": field.get("name", "")}
    if digits == 0:
        out.update(len_enc="ascii", len_type=0, max_len=field["length"])
    else:
        out["max_len"] = field["max"]
        if prefix == "bcd":
            out.update(len_enc="bcd", len_type=(digits + 1) // 2)
        elif prefix == "binary":
            out.update(len_enc="b", len_type=1 if digits == 2 else 2)
        else:
            out.update(len_enc=prefix, len_type=digits)
    if data in ("bcd", "binary"):
        out["data_enc"] = "b"
        if counts == "digits":
            out["len_count"] = "nibbles"
            pad = field.get("pad", "0")
            out["left_pad" if field.get("align", "right") == "right" else "right_pad"] = pad
    elif data == "hex":
        out["data_enc"] = "ascii"
    else:
        out["data_enc"] = data
    return out


_SPECS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "codecs", "specs")

SPECS = {
    "iso87ascii": ISO87ASCII,
    "cups-pos": CUPS_POS,
    "iso87binary": _spec_from_toml(os.path.join(_SPECS_DIR, "iso87binary.toml")),
    "cups-host": _spec_from_toml(os.path.join(_SPECS_DIR, "cups-host.toml")),
}

# pyiso8583 keys that are not data elements: header, MTI, bitmaps.
_NOT_FIELDS = {"h", "t", "p", "1"}


def _to_posbridge(spec, decoded):
    message = {"mti": decoded["t"], "fields": {}}
    if spec["h"]["max_len"] > 0:
        message["header"] = decoded.get("h", "").upper()
    for key, value in decoded.items():
        if key not in _NOT_FIELDS:
            message["fields"][key] = value
    return message


def _to_pyiso(spec, message):
    doc = {"t": message["mti"]}
    if spec["h"]["max_len"] > 0:
        doc["h"] = message.get("header", "")
    for key, value in message["fields"].items():
        doc[str(key)] = value
    return doc


def _answer(request):
    spec = SPECS.get(request.get("spec"))
    if spec is None:
        return {"ok": False, "error": f"unknown spec {request.get('spec')!r}; known: {sorted(SPECS)}"}
    try:
        if request["op"] == "decode":
            decoded, _ = iso8583.decode(bytes.fromhex(request["hex"]), spec)
            return {"ok": True, "message": _to_posbridge(spec, decoded)}
        if request["op"] == "encode":
            encoded, _ = iso8583.encode(_to_pyiso(spec, request["message"]), spec)
            return {"ok": True, "hex": bytes(encoded).hex().upper()}
        return {"ok": False, "error": f"unknown op {request['op']!r}"}
    except (iso8583.DecodeError, iso8583.EncodeError, ValueError, KeyError, TypeError) as error:
        return {"ok": False, "error": f"{type(error).__name__}: {error}"}


def main():
    batch = json.load(sys.stdin)
    results = [_answer(request) for request in batch["requests"]]
    json.dump({"pyiso8583": _version(), "results": results}, sys.stdout)
    sys.stdout.write("\n")


def _version():
    try:
        from importlib.metadata import version

        return version("pyiso8583")
    except Exception:  # noqa: BLE001 - version is informative only
        return "unknown"


if __name__ == "__main__":
    main()
