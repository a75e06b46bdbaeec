#!/usr/bin/env python3
"""Bridge between posbridge's security-module cross-checks and psec 1.3.0, an independent Python
implementation of payment cryptography (PIN blocks, retail/CBC MACs, check values, Visa PVV).

One process answers a whole batch. Reads one JSON document on stdin and writes one on stdout:

    request:  {"cases": [
                 {"op": "pin0_decode", "key": "<tdes hex>", "block": "<enc hex>", "pan": "..."},
                 {"op": "pin0_encrypt", "key": "...", "pin": "1234", "pan": "..."},
                 {"op": "pin3_decode", "key": "...", "block": "...", "pan": "..."},
                 {"op": "pin4_decipher", "key": "<aes hex>", "block": "...", "pan": "..."},
                 {"op": "pin4_encipher", "key": "<aes hex>", "pin": "...", "pan": "..."},
                 {"op": "retail_mac", "key": "<16-byte hex>", "data": "<hex>"},
                 {"op": "cbc_mac", "key": "<tdes hex>", "data": "<hex>", "padding": 1},
                 {"op": "kcv", "key": "<tdes hex>"},
                 {"op": "pvv", "key": "<tdes hex>", "pvki": 3, "pin": "1234", "pan": "..."}
              ]}
    response: {"psec": "1.3.0", "results": [{"ok": true, "value": "..."} |
                                            {"ok": false, "error": "..."}]}

Hex values are uppercase. Encrypted format 0/3 blocks are deciphered with psec's TDES-ECB and then
decoded by psec's own format 0/3 decoder, so both the cipher and the block layout are checked.
"""

import json
import sys
import warnings

# psec drives TDES through `cryptography`, which warns about TDES on every call.
warnings.simplefilter("ignore")

import psec  # noqa: E402
from psec import des, mac, pin, pinblock  # noqa: E402


def b(text):
    return bytes.fromhex(text)


def h(data):
    return data.hex().upper()


def answer(case):
    op = case["op"]
    if op == "pin0_decode":
        clear = des.decrypt_tdes_ecb(b(case["key"]), b(case["block"]))
        return pinblock.decode_pinblock_iso_0(clear, case["pan"])
    if op == "pin0_encrypt":
        clear = pinblock.encode_pinblock_iso_0(case["pin"], case["pan"])
        return h(des.encrypt_tdes_ecb(b(case["key"]), clear))
    if op == "pin3_decode":
        clear = des.decrypt_tdes_ecb(b(case["key"]), b(case["block"]))
        return pinblock.decode_pinblock_iso_3(clear, case["pan"])
    if op == "pin4_decipher":
        return pinblock.decipher_pinblock_iso_4(b(case["key"]), b(case["block"]), case["pan"])
    if op == "pin4_encipher":
        return h(pinblock.encipher_pinblock_iso_4(b(case["key"]), case["pin"], case["pan"]))
    if op == "retail_mac":
        key = b(case["key"])
        return h(mac.generate_retail_mac(key[:8], key[8:16], b(case["data"]), padding=1))
    if op == "cbc_mac":
        return h(mac.generate_cbc_mac(b(case["key"]), b(case["data"]), padding=case["padding"]))
    if op == "kcv":
        return h(des.generate_kcv(b(case["key"]), 3))
    if op == "pvv":
        return pin.generate_visa_pvv(b(case["key"]), str(case["pvki"]), case["pin"], case["pan"])
    raise ValueError(f"unknown op {op!r}")


def main():
    request = json.load(sys.stdin)
    results = []
    for case in request["cases"]:
        try:
            results.append({"ok": True, "value": answer(case)})
        except Exception as error:  # report per case; one bad case must not hide the others
            results.append({"ok": False, "error": f"{type(error).__name__}: {error}"})
    json.dump({"psec": psec.__version__, "results": results}, sys.stdout)


if __name__ == "__main__":
    main()
