#!/usr/bin/env python3
"""A legacy POS terminal for posbridge, written from docs/terminal-interface.md only.

Framing: 2-byte big-endian length | TPDU 60 DDDD SSSS | app header 60 31 00 31 00 00 | MTI (BCD) |
bitmap (8 bytes) | fields (cups-pos).  Field formats come from the doc's field descriptions and
its example hex strings (the doc does not give a field table; see GAPS.md).

Usage (against a running gateway):
  terminal.py --addr 127.0.0.1:8583 --tid 10000001 --mid 898310048160001 --tmk HEX sale --amount 23.72
"""
from __future__ import annotations

import argparse
import datetime
import json
import socket
import struct
import sys
import time
from typing import Dict, Optional, Tuple

import iso8583

sys.path.insert(0, __import__("os").path.dirname(__file__))
from common import des_dec, kcv_des, unionpay_ecb_mac, qr_parse, qr_with_crc, tlv_parse, \
    iso9797_alg1_pad2_des  # noqa: E402


def _fixed_n(n_digits: int, desc: str, pad: str = "left") -> dict:
    d = {"data_enc": "b", "len_enc": "b", "len_type": 0, "max_len": n_digits,
         "len_count": "nibbles", "desc": desc}
    if n_digits % 2:
        d["right_pad" if pad == "right" else "left_pad"] = "0"
    return d


def _fixed_a(n: int, desc: str) -> dict:
    return {"data_enc": "ascii", "len_enc": "b", "len_type": 0, "max_len": n, "desc": desc}


def _var_n(len_type: int, max_digits: int, desc: str) -> dict:
    # LL -> 1 BCD byte, LLL -> 2 BCD bytes; counts digits; left-aligned (pad on the right)
    return {"data_enc": "b", "len_enc": "bcd", "len_type": len_type, "max_len": max_digits,
            "len_count": "nibbles", "right_pad": "0", "desc": desc}


def _var_a(len_type: int, max_bytes: int, desc: str, enc: str = "ascii") -> dict:
    return {"data_enc": enc, "len_enc": "bcd", "len_type": len_type, "max_len": max_bytes,
            "len_count": "bytes", "desc": desc}


# Our own cups-pos spec, from docs/terminal-interface.md (field meanings + example bytes).
CUPS_POS: Dict[str, dict] = {
    "h": {"data_enc": "b", "len_enc": "b", "len_type": 0, "max_len": 0, "desc": "none (TPDU+header done by framing)"},
    "t": {"data_enc": "b", "len_enc": "b", "len_type": 0, "max_len": 2, "desc": "MTI BCD"},
    "p": {"data_enc": "b", "len_enc": "b", "len_type": 0, "max_len": 8, "desc": "bitmap"},
    "1": {"data_enc": "b", "len_enc": "b", "len_type": 0, "max_len": 8, "desc": "secondary bitmap"},
    "2": _var_n(1, 19, "PAN"),
    "3": _fixed_n(6, "processing code"),
    "4": _fixed_n(12, "amount"),
    "11": _fixed_n(6, "trace"),
    "12": _fixed_n(6, "time hhmmss"),
    "13": _fixed_n(4, "date MMDD"),
    "14": _fixed_n(4, "expiry"),
    "15": _fixed_n(4, "settlement date"),
    "22": _fixed_n(3, "entry mode", pad="right"),
    "23": _fixed_n(3, "card seq", pad="left"),
    "25": _fixed_n(2, "condition code"),
    "26": _fixed_n(2, "PIN capture"),
    "32": _var_n(1, 11, "acquirer"),
    "35": _var_n(1, 37, "track 2"),
    "36": _var_n(2, 104, "track 3"),
    "37": _fixed_a(12, "RRN"),
    "38": _fixed_a(6, "auth code"),
    "39": _fixed_a(2, "response code"),
    "41": _fixed_a(8, "TID"),
    "42": _fixed_a(15, "MID"),
    "44": _var_a(1, 25, "additional response"),
    "48": _var_n(2, 322, "additional data (settlement totals)"),
    "49": _fixed_a(3, "currency"),
    "52": {"data_enc": "b", "len_enc": "b", "len_type": 0, "max_len": 8, "desc": "PIN block"},
    "53": _fixed_n(16, "security control"),
    "55": {"data_enc": "b", "len_enc": "bcd", "len_type": 2, "max_len": 255, "desc": "ICC"},
    "60": _var_n(2, 100, "reserved private 60"),
    "61": _var_n(2, 29, "original message"),
    "62": {"data_enc": "b", "len_enc": "bcd", "len_type": 2, "max_len": 999, "desc": "reserved private 62"},
    "63": _var_a(2, 163, "operator / scheme"),
    "64": {"data_enc": "b", "len_enc": "b", "len_type": 0, "max_len": 8, "desc": "MAC"},
}
# fields we never use but must be decodable if sent: fill 5..128 generically as binary LLL
for _i in range(5, 129):
    CUPS_POS.setdefault(str(_i), {"data_enc": "b", "len_enc": "bcd", "len_type": 2, "max_len": 999,
                                   "desc": "unknown"})

APP_HEADER = bytes.fromhex("603100310000")


class TerminalError(Exception):
    pass


def build_frame(msg: dict, tpdu: bytes, header: bytes = APP_HEADER, mac_key: Optional[bytes] = None,
                bad_mac: bool = False) -> Tuple[bytes, bytes]:
    """Encode; if mac_key, set field 64. Returns (frame with length prefix, body after length)."""
    msg = dict(msg)
    if mac_key is not None:
        msg["64"] = "00" * 8
        raw, _ = iso8583.encode(msg, CUPS_POS)
        mac = unionpay_ecb_mac(mac_key, bytes(raw[:-8]))
        if bad_mac:
            mac = bytes([mac[0] ^ 0x01]) + mac[1:]
        msg["64"] = mac.hex()
    raw, _ = iso8583.encode(msg, CUPS_POS)
    body = tpdu + header + bytes(raw)
    return struct.pack(">H", len(body)) + body, body


def parse_body(body: bytes) -> Tuple[bytes, bytes, dict, bytes]:
    tpdu, header, iso = body[:5], body[5:11], body[11:]
    dec, _ = iso8583.decode(bytearray(iso), CUPS_POS)
    return tpdu, header, dec, iso


def verify_mac(mac_key: bytes, iso: bytes, dec: dict) -> Optional[bool]:
    if "64" not in dec:
        return None
    return unionpay_ecb_mac(mac_key, iso[:-8]) == bytes.fromhex(dec["64"])


class Terminal:
    def __init__(self, addr: Tuple[str, int], tid: str, mid: str, tmk: bytes, batch: str = "000001",
                 operator: str = "01", tpdu_dst: str = "0003", tpdu_src: str = "0000", timeout: float = 90.0,
                 log=None):
        self.addr, self.tid, self.mid, self.tmk = addr, tid, mid, tmk
        self.batch, self.operator = batch, operator
        self.tpdu = bytes.fromhex("60" + tpdu_dst + tpdu_src)
        self.timeout = timeout
        self.sock: Optional[socket.socket] = None
        self.tpk: Optional[bytes] = None
        self.tak: Optional[bytes] = None
        self.trace = int(time.time()) % 900000 + 1
        self.log = log or (lambda *a: None)
        self.last = {}

    # -- transport
    def connect(self):
        self.close()
        self.sock = socket.create_connection(self.addr, timeout=10)
        self.sock.settimeout(self.timeout)

    def close(self):
        if self.sock:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise TerminalError("connection closed by gateway after %d of %d bytes" % (len(buf), n))
            buf += chunk
        return buf

    def send_raw(self, frame: bytes):
        if self.sock is None:
            self.connect()
        self.sock.sendall(frame)

    def recv_frame(self) -> bytes:
        ln = struct.unpack(">H", self._recv_exact(2))[0]
        return self._recv_exact(ln)

    def next_trace(self) -> str:
        self.trace = self.trace % 999999 + 1
        return "%06d" % self.trace

    def exchange(self, msg: dict, mac: bool = True, bad_mac: bool = False, mac_key: Optional[bytes] = None) -> dict:
        key = mac_key if mac_key is not None else (self.tak if mac else None)
        if mac and key is None:
            raise TerminalError("no MAC key: sign on first")
        frame, body = build_frame(msg, self.tpdu, mac_key=key if mac else None, bad_mac=bad_mac)
        self.log("terminal >> " + body.hex().upper())
        self.send_raw(frame)
        rbody = self.recv_frame()
        self.log("terminal << " + rbody.hex().upper())
        tpdu, header, dec, iso = parse_body(rbody)
        dec = {k: v for k, v in dec.items() if k not in ("h",)}
        dec["_tpdu"] = tpdu.hex().upper()
        dec["_header"] = header.hex().upper()
        dec["_raw"] = rbody.hex().upper()
        dec["_mac_ok"] = verify_mac(self.tak, iso, dec) if self.tak else None
        self.last = dec
        return dec

    # -- messages
    def sign_on(self) -> dict:
        trace = self.next_trace()
        msg = {"t": "0800", "11": trace, "41": self.tid, "42": self.mid,
               "60": "00" + self.batch + "004", "63": self.operator}
        ans = self.exchange(msg, mac=False)
        if ans.get("39") != "00":
            return ans
        f62 = bytes.fromhex(ans["62"])
        if len(f62) != 40:
            raise TerminalError("field 62 is %d bytes, doc says 40" % len(f62))
        enc_pk, kcv_pk = f62[0:16], f62[16:20]
        enc_mk, zeros, kcv_mk = f62[20:28], f62[28:36], f62[36:40]
        tpk = des_dec(self.tmk, enc_pk)
        tak = des_dec(self.tmk, enc_mk)
        ans["_tpk_kcv_ok"] = kcv_des(tpk) == kcv_pk
        ans["_tak_kcv_ok"] = kcv_des(tak) == kcv_mk
        ans["_zeros_ok"] = zeros == b"\x00" * 8
        if not (ans["_tpk_kcv_ok"] and ans["_tak_kcv_ok"]):
            raise TerminalError("working key check value mismatch: refusing keys (%s)" % ans["62"])
        self.tpk, self.tak = tpk, tak
        return ans

    def network(self, code: str) -> dict:
        msg = {"t": "0820", "11": self.next_trace(), "41": self.tid, "42": self.mid,
               "60": "00" + self.batch + code, "63": self.operator}
        return self.exchange(msg, mac=False)

    def echo(self) -> dict:
        return self.network("301")

    def sign_off(self) -> dict:
        return self.network("002")

    def order_request(self, amount_minor: int, voucher: Optional[str] = None, currency: str = "156",
                      bad_mac: bool = False) -> dict:
        voucher = voucher or self.next_trace()
        msg = {"t": "0200", "3": "000000", "4": "%012d" % amount_minor, "11": voucher, "22": "032",
               "25": "00", "41": self.tid, "42": self.mid, "49": currency,
               "60": "48" + self.batch + "000", "63": self.operator}
        ans = self.exchange(msg, bad_mac=bad_mac)
        ans["_voucher"] = voucher
        if "62" in ans:
            ans["_payload"] = decode_f62_tlv(ans["62"]).get("01")
            ans["_masked_pan"] = decode_f62_tlv(ans["62"]).get("02")
        return ans

    def result_query(self, voucher: str, batch: Optional[str] = None) -> dict:
        msg = {"t": "0200", "3": "000000", "11": self.next_trace(), "41": self.tid, "42": self.mid,
               "60": "49" + self.batch + "000", "61": (batch or self.batch) + voucher}
        ans = self.exchange(msg)
        if "62" in ans:
            ans["_masked_pan"] = decode_f62_tlv(ans["62"]).get("02")
        return ans

    def held_sale(self, amount_minor: int, payload: str, voucher: str, currency: str = "156") -> dict:
        f62 = ("01%03d" % len(payload.encode("utf-8"))).encode() + payload.encode("utf-8")
        msg = {"t": "0200", "3": "000000", "4": "%012d" % amount_minor, "11": voucher, "22": "032",
               "25": "00", "41": self.tid, "42": self.mid, "49": currency,
               "60": "22" + self.batch + "000", "62": f62.hex(), "63": self.operator}
        ans = self.exchange(msg)
        if "62" in ans:
            ans["_masked_pan"] = decode_f62_tlv(ans["62"]).get("02")
        return ans

    def reversal(self, voucher: str, amount_minor: int, reason: str = "98", currency: str = "156") -> dict:
        msg = {"t": "0400", "3": "000000", "4": "%012d" % amount_minor, "11": voucher, "25": "00",
               "39": reason, "41": self.tid, "42": self.mid, "49": currency, "60": "22" + self.batch}
        return self.exchange(msg)

    def void(self, orig_voucher: str, amount_minor: int, trace: Optional[str] = None, currency: str = "156",
             orig_batch: Optional[str] = None) -> dict:
        trace = trace or self.next_trace()
        msg = {"t": "0200", "3": "200000", "4": "%012d" % amount_minor, "11": trace, "25": "00",
               "41": self.tid, "42": self.mid, "49": currency, "60": "23" + self.batch + "000",
               "61": (orig_batch or self.batch) + orig_voucher}
        ans = self.exchange(msg)
        ans["_trace"] = trace
        return ans

    def refund(self, orig_voucher: str, amount_minor: int, trace: Optional[str] = None, currency: str = "156",
               orig_batch: Optional[str] = None) -> dict:
        trace = trace or self.next_trace()
        msg = {"t": "0220", "3": "200000", "4": "%012d" % amount_minor, "11": trace, "25": "00",
               "41": self.tid, "42": self.mid, "49": currency, "60": "25" + self.batch + "000",
               "61": (orig_batch or self.batch) + orig_voucher}
        ans = self.exchange(msg)
        ans["_trace"] = trace
        return ans

    def settlement(self, debit_minor: int, debit_count: int, credit_minor: int, credit_count: int,
                   currency: str = "156") -> dict:
        f48 = "%012d%03d%012d%03d0" % (debit_minor, debit_count, credit_minor, credit_count)
        msg = {"t": "0500", "11": self.next_trace(), "41": self.tid, "42": self.mid, "48": f48,
               "49": currency, "60": "00" + self.batch + "201", "63": self.operator}
        return self.exchange(msg)


def decode_f62_tlv(hexdata: str) -> Dict[str, str]:
    """Field 62 TLV: tag (2 ASCII) + length (3 ASCII digits) + value."""
    raw = bytes.fromhex(hexdata)
    out = {}
    i = 0
    while i + 5 <= len(raw):
        tag = raw[i:i + 2].decode("ascii", "replace")
        try:
            n = int(raw[i + 2:i + 5].decode("ascii"))
        except ValueError:
            out["_undecodable"] = hexdata
            break
        val = raw[i + 5:i + 5 + n]
        # length is documented as "length"; we try bytes first, then characters (see GAPS.md)
        try:
            txt = val.decode("utf-8")
        except UnicodeDecodeError:
            txt = raw[i + 5:].decode("utf-8", "replace")[:n]
        out[tag] = txt
        i += 5 + n
    return out


def terminal_make_payload(tak: bytes, *, gui: str, mid: str, mcc: str, name: str, city: str, tid: str,
                          batch: str, voucher: str, operator: str, acquirer: str, amount_text: str,
                          currency: str = "156", country: str = "CN", reference: str, expiry: str) -> str:
    """Way (b): the terminal builds the dynamic EMV payload itself and signs it with its TAK."""
    objs = [("00", "01"), ("01", "12"),
            ("26", "00%02d%s01%02d%s" % (len(gui), gui, len(mid), mid)),
            ("52", mcc), ("53", currency), ("54", amount_text), ("58", country), ("59", name), ("60", city),
            ("62", "05%02d%s07%02d%s" % (len(reference), reference, len(tid), tid))]
    t80 = [("00", gui), ("01", tid), ("02", batch), ("03", voucher), ("04", operator), ("05", acquirer),
           ("06", "22"), ("07", expiry)]
    objs.append(("80", "".join("%s%02d%s" % (a, len(b), b) for a, b in t80)))
    from common import SIG_PREFIX, tlv_build
    sig_input = SIG_PREFIX + tlv_build(objs).encode("utf-8")
    sig = iso9797_alg1_pad2_des(tak, sig_input).hex().upper()
    objs.append(("81", "00%02d%s02%02d%s" % (len(gui), gui, len(sig), sig)))
    return qr_with_crc(objs)


DOC_EXAMPLES = {
    # docs/terminal-interface.md examples (bytes after the length prefix, MACs as zeros)
    "sign_on": ("600003000060310031000008000020000000C000120001013130303030303031383938333130303438313630303031"
                "001100000001004000023031"),
    "order_request": ("600003000060310031000002003020048000C08013000000000000002372000102032000313030303030303138"
                      "39383331303034383136303030313135360011480000010000000230310000000000000000"),
    "result_query": ("600003000060310031000002002020000000C00019000000000103313030303030303138393833313030343831"
                     "363030303100114900000100000012000001000102" "0000000000000000"),
    "reversal": ("600003000060310031000004003020008002C0801100000000000000237200010200393831303030303030313839"
                 "3833313030343831363030303131353600082200000100" "00000000000000"),
    "settlement": ("600003000060310031000005000020000000C18013000104313030303030303138393833313030343831363030"
                   "3031003100000000237200100000000000000000313536001100000001201000023031" "0000000000000000"),
}


def doc_example_roundtrip() -> Dict[str, Tuple[bool, str]]:
    """Decode each doc example with our spec and re-encode: checks the doc bytes against the doc tables."""
    res = {}
    for name, hx in DOC_EXAMPLES.items():
        body = bytes.fromhex(hx)
        try:
            tpdu, header, dec, iso = parse_body(body)
            dec2 = {k: v for k, v in dec.items() if k not in ("h", "p")}
            raw, _ = iso8583.encode(dec2, CUPS_POS)
            same = tpdu + header + bytes(raw) == body
            res[name] = (same, json.dumps({k: v for k, v in dec.items() if k not in ("h",)}))
        except Exception as e:  # noqa: BLE001
            res[name] = (False, "%s: %s" % (type(e).__name__, e))
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--addr", default="127.0.0.1:8583")
    ap.add_argument("--tid", default="10000001")
    ap.add_argument("--mid", default="898310048160001")
    ap.add_argument("--tmk", required=False, help="terminal master key, hex")
    ap.add_argument("--batch", default="000001")
    ap.add_argument("-v", action="store_true")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sale")
    s.add_argument("--amount", required=True)
    sub.add_parser("examples")
    a = ap.parse_args()
    if a.cmd == "examples":
        for k, v in doc_example_roundtrip().items():
            print(k, v)
        return
    host, port = a.addr.rsplit(":", 1)
    t = Terminal((host, int(port)), a.tid, a.mid, bytes.fromhex(a.tmk), batch=a.batch,
                 log=(lambda m: print(m, file=sys.stderr)) if a.v else None)
    t.connect()
    print("sign-on:", t.sign_on().get("39"))
    minor = int(round(float(a.amount) * 100))
    ans = t.order_request(minor)
    print("order request:", ans.get("39"))
    payload = ans.get("_payload")
    if payload:
        print("QR payload (show this as a QR):")
        print(payload)
        tags = qr_parse(payload)["tags"]
        print("merchant %s  terminal %s  batch %s  voucher %s  amount %s" % (
            tags.get("26", {}).get("01"), tags.get("80", {}).get("01"), tags.get("80", {}).get("02"),
            tags.get("80", {}).get("03"), tags.get("54")))
        res = t.result_query(ans["_voucher"])
        while res.get("39") == "09":
            res = t.result_query(ans["_voucher"])
        print("result:", json.dumps({k: v for k, v in res.items() if not k.startswith("_raw")}))
    t.close()


if __name__ == "__main__":
    main()
