"""Shared crypto / encoding helpers for the vendor interop kit.

Everything here is written from docs/terminal-interface.md, docs/host-interface.md,
docs/qr-payload.md and /work/shared/REFERENCE.md only.
"""
from __future__ import annotations

import binascii
import os
import struct
from typing import List, Tuple

from Crypto.Cipher import AES, DES, DES3
from Crypto.Hash import CMAC


# ----------------------------------------------------------------------------- DES helpers

def _des_cipher(key: bytes):
    """DES for 8-byte keys (or K|K), 3DES otherwise."""
    if len(key) == 8:
        return DES.new(key, DES.MODE_ECB)
    if len(key) == 16 and key[:8] == key[8:]:
        return DES.new(key[:8], DES.MODE_ECB)
    if len(key) == 24 and key[:8] == key[8:16] == key[16:]:
        return DES.new(key[:8], DES.MODE_ECB)
    return DES3.new(key, DES3.MODE_ECB)


def des_enc(key: bytes, data: bytes) -> bytes:
    return _des_cipher(key).encrypt(data)


def des_dec(key: bytes, data: bytes) -> bytes:
    return _des_cipher(key).decrypt(data)


def kcv_des(key: bytes, n: int = 4) -> bytes:
    return des_enc(key, b"\x00" * 8)[:n]


def xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b))


# ----------------------------------------------------------------------------- MACs

def unionpay_ecb_mac(key: bytes, data: bytes) -> bytes:
    """UnionPay POS "ECB" MAC (docs/terminal-interface.md, MAC (field 64))."""
    if len(data) % 8:
        data = data + b"\x00" * (8 - len(data) % 8)
    r = b"\x00" * 8
    for i in range(0, len(data), 8):
        r = xor(r, data[i:i + 8])
    h = r.hex().upper().encode()
    x = des_enc(key, h[:8])
    x = xor(x, h[8:16])
    x = des_enc(key, x)
    return x.hex().upper()[:8].encode()


def x919_mac(key: bytes, data: bytes) -> bytes:
    """ANSI X9.19 / ISO 9797-1 alg 3, padding method 1, double-length key."""
    if len(data) % 8 or not data:
        data = data + b"\x00" * (8 - len(data) % 8 if len(data) % 8 else (8 if not data else 0))
    k1, k2 = key[:8], key[8:16]
    c1 = DES.new(k1, DES.MODE_ECB)
    h = b"\x00" * 8
    for i in range(0, len(data), 8):
        h = c1.encrypt(xor(h, data[i:i + 8]))
    h = DES.new(k2, DES.MODE_ECB).decrypt(h)
    return c1.encrypt(h)


def iso9797_alg1_pad2_des(key: bytes, data: bytes) -> bytes:
    """ISO 9797-1 MAC algorithm 1, padding method 2, DES (terminal-made QR signature)."""
    data = data + b"\x80"
    if len(data) % 8:
        data += b"\x00" * (8 - len(data) % 8)
    c = _des_cipher(key)
    h = b"\x00" * 8
    for i in range(0, len(data), 8):
        h = c.encrypt(xor(h, data[i:i + 8]))
    return h


def aes_cmac(key: bytes, data: bytes) -> bytes:
    c = CMAC.new(key, ciphermod=AES)
    c.update(data)
    return c.digest()


# ----------------------------------------------------------------------------- PIN blocks

def pin_block_f0(pin: str, pan: str) -> bytes:
    pf = ("0%d%s" % (len(pin), pin)).ljust(16, "F")
    pan12 = pan[:-1][-12:]
    return xor(bytes.fromhex(pf), bytes.fromhex("0000" + pan12))


def pin_block_f0_decode(block: bytes, pan: str) -> str:
    pan12 = pan[:-1][-12:]
    pf = xor(block, bytes.fromhex("0000" + pan12)).hex().upper()
    n = int(pf[1], 16)
    if pf[0] != "0" or not 4 <= n <= 12:
        raise ValueError("not a format 0 PIN block: " + pf)
    return pf[2:2 + n]


def pin_block_f4_encrypt(pek: bytes, pin: str, pan: str, rnd: bytes | None = None) -> bytes:
    """ISO 9564-1 format 4 (AES): block = E(E(PIN field) XOR PAN field)."""
    pin_field = ("4%X%s" % (len(pin), pin)).ljust(16, "A")
    rnd = rnd if rnd is not None else os.urandom(8)
    pin_field_b = bytes.fromhex(pin_field) + rnd
    pan_field = ("%d%s" % (max(len(pan) - 12, 0), pan)).ljust(32, "0")
    c = AES.new(pek, AES.MODE_ECB)
    return c.encrypt(xor(c.encrypt(pin_field_b), bytes.fromhex(pan_field)))


# ----------------------------------------------------------------------------- EMV QR

def crc16_ccitt_false(data: bytes) -> int:
    crc = 0xFFFF
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def tlv_parse(s: str) -> List[Tuple[str, str]]:
    out = []
    i = 0
    while i < len(s):
        if i + 4 > len(s):
            raise ValueError("truncated TLV at %d" % i)
        tag, ln = s[i:i + 2], s[i + 2:i + 4]
        if not (tag.isdigit() and ln.isdigit()):
            raise ValueError("bad id/len at %d: %r" % (i, s[i:i + 4]))
        n = int(ln)
        if n == 0:
            raise ValueError("length 00 at %d" % i)
        v = s[i + 4:i + 4 + n]
        if len(v) != n:
            raise ValueError("length runs past end at %d" % i)
        out.append((tag, v))
        i += 4 + n
    return out


def tlv_build(objs: List[Tuple[str, str]]) -> str:
    return "".join("%s%02d%s" % (t, len(v), v) for t, v in objs)


TEMPLATES = {str(i) for i in range(26, 52)} | {"62", "64"} | {str(i) for i in range(80, 100)}


def qr_parse(payload: str) -> dict:
    """Parse + check CRC. Returns {'objects': [(id, value)], 'tags': {id: value or dict}}."""
    objs = tlv_parse(payload)
    if not objs or objs[0] != ("00", "01"):
        raise ValueError("00 missing or not first")
    if objs[-1][0] != "63":
        raise ValueError("63 not last")
    idx = payload.rfind("6304")
    body = payload[: len(payload) - 4]
    crc = crc16_ccitt_false(body.encode("utf-8"))
    if "%04X" % crc != objs[-1][1].upper():
        raise ValueError("bad CRC: computed %04X, payload %s" % (crc, objs[-1][1]))
    tags = {}
    for t, v in objs:
        if t in tags:
            raise ValueError("repeated id " + t)
        tags[t] = dict(tlv_parse(v)) if t in TEMPLATES else v
    return {"objects": objs, "tags": tags, "crc_ok": True, "pos6304": idx}


SIG_PREFIX = b"posbridge/emv-mpm-order/v1\n"


def qr_signature_input(payload: str) -> bytes:
    objs = tlv_parse(payload)
    text = "".join("%s%02d%s" % (t, len(v), v) for t, v in objs if t not in ("81", "63"))
    return SIG_PREFIX + text.encode("utf-8")


def qr_with_crc(objs_without_crc: List[Tuple[str, str]]) -> str:
    body = tlv_build(objs_without_crc) + "6304"
    return body + "%04X" % crc16_ccitt_false(body.encode("utf-8"))


# ----------------------------------------------------------------------------- self tests

def selftest() -> None:
    # UnionPay ECB MAC worked example (REFERENCE.md): we can only check the tail from R.
    tak = bytes.fromhex("55036372B17543ECB173730768B8D6C4")
    r = bytes.fromhex("1212B04E1227809C")
    assert unionpay_ecb_mac(tak, r) == b"5FE058DB", unionpay_ecb_mac(tak, r)
    # X9.19
    m = x919_mac(bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"), b"Now is the time for all ")
    assert m.hex().upper() == "A1C72E74EA3FA9B6", m.hex()
    # format 0
    pb = pin_block_f0("1234", "4321987654321098")
    assert pb.hex().upper() == "04122D789ABCDEF6"
    assert des_enc(bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"), pb).hex().upper() == "A1CED0BFE25FDA02"
    # format 4
    pek = bytes.fromhex("AF8CB133A78F8DC2D1359F18527593FB")
    b4 = pin_block_f4_encrypt(pek, "1234", "4111111111111111", bytes.fromhex("2F69ADDE2E9E7ACE"))
    assert b4.hex().upper() == "A912150391AB65A67E52883D81CE2D15", b4.hex()
    # KCV
    assert kcv_des(bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"), 3).hex().upper() == "08D7B4"
    # CRC
    assert crc16_ccitt_false(b"123456789") == 0x29B1
    ex = ("00020101021229300012D156000000000510A93FO3230Q31280012D15600000001030812345678520441115802CN"
          "5914BEST TRANSPORT6007BEIJING64200002ZH0104最佳运输0202北京540523.7253031565502016233030412340603***"
          "0708A60086670902ME91320016A0112233449988770708123456786304A13A")
    qr_parse(ex)
    # AES-CMAC
    assert aes_cmac(bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c"),
                    bytes.fromhex("6bc1bee22e409f96e93d7e117393172a")).hex() == "070a16b46b4d4144f79bdd9dd04a287c"
    # REFERENCE field 62 example
    tmk = bytes.fromhex("CA5D92598DCA48CE8A4C76361A9269E9")
    pk = des_dec(tmk, bytes.fromhex("6701EAD6A9AD51E51AA406E2C27FCFA9"))
    assert pk.hex().upper() == "807A23AD32B36D457AE91FDF927570EA", pk.hex()
    assert kcv_des(pk).hex().upper() == "8D0A74B8"
    mk = des_dec(tmk, bytes.fromhex("B651F9E9BACE9AE1"))
    assert mk.hex().upper() == "5BB5C72CD00B7338"
    assert kcv_des(mk).hex().upper() == "AB7153CA"


if __name__ == "__main__":
    selftest()
    print("selftest ok")
