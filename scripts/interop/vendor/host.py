#!/usr/bin/env python3
"""An acquirer / UnionPay host for posbridge's upstream links, from docs/host-interface.md only.

posbridge connects to us (it "keeps persistent TCP links to that host"); we listen.
Frame: 4 ASCII digits (length of header + message) | 46-byte CUPS host header | MTI (4 ASCII) |
bitmaps (binary) | fields.  Field encodings are NOT given by the doc (see GAPS.md): our spec below
is a guess (ASCII numerics, ASCII LL/LLL lengths), checked against what the gateway sends.

Usage: host.py --listen 127.0.0.1:7001 --zak HEX --zpk HEX --zmk HEX [--decline-suffix 05=05]
"""
from __future__ import annotations

import argparse
import os
import random
import socket
import sys
import threading
import time
from typing import Callable, Dict, List, Optional

import iso8583

sys.path.insert(0, os.path.dirname(__file__))
from common import des_dec, des_enc, kcv_des, pin_block_f0_decode, x919_mac  # noqa: E402


def _n(n: int, desc: str) -> dict:
    return {"data_enc": "ascii", "len_enc": "ascii", "len_type": 0, "max_len": n, "desc": desc}


def _ll(n: int, desc: str, lt: int = 2) -> dict:
    return {"data_enc": "ascii", "len_enc": "ascii", "len_type": lt, "max_len": n, "desc": desc}


CUPS_HOST: Dict[str, dict] = {
    "h": {"data_enc": "b", "len_enc": "b", "len_type": 0, "max_len": 0, "desc": "header handled by framing"},
    "t": _n(4, "MTI"),
    "p": {"data_enc": "b", "len_enc": "b", "len_type": 0, "max_len": 8, "desc": "primary bitmap"},
    "1": {"data_enc": "b", "len_enc": "b", "len_type": 0, "max_len": 8, "desc": "secondary bitmap"},
    "2": _ll(19, "PAN"), "3": _n(6, "proc"), "4": _n(12, "amount"), "7": _n(10, "transmission"),
    "11": _n(6, "STAN"), "12": _n(6, "time"), "13": _n(4, "date"), "14": _n(4, "exp"), "15": _n(4, "settle date"),
    "18": _n(4, "MCC"), "19": _n(3, "country"), "22": _n(3, "entry mode"), "23": _n(3, "card seq"),
    "25": _n(2, "condition"), "26": _n(2, "pin capture"),
    "32": _ll(11, "acquirer"), "33": _ll(11, "forwarding"), "35": _ll(37, "track2"), "36": _ll(104, "track3", 3),
    "37": _n(12, "RRN"), "38": _n(6, "auth"), "39": _n(2, "resp"), "41": _n(8, "TID"), "42": _n(15, "MID"),
    "43": _n(40, "name/location"), "44": _ll(25, "addl resp"), "45": _ll(76, "track1"),
    "48": _ll(512, "additional data", 3), "49": _n(3, "currency"), "50": _n(3, "settle currency"),
    "52": {"data_enc": "b", "len_enc": "b", "len_type": 0, "max_len": 8, "desc": "PIN block"},
    "53": _n(16, "security control"),
    "54": _ll(40, "addl amounts", 3),
    "55": {"data_enc": "b", "len_enc": "ascii", "len_type": 3, "max_len": 255, "desc": "ICC"},
    "57": _ll(100, "addl data", 3), "59": _ll(600, "detail", 3), "60": _ll(100, "reserved 60", 3),
    "61": _ll(200, "cardholder", 3), "62": _ll(512, "reserved 62", 3), "63": _ll(512, "reserved 63", 3),
    "70": _n(3, "network mgmt code"), "90": _n(42, "original data elements"),
    "96": {"data_enc": "b", "len_enc": "b", "len_type": 0, "max_len": 8, "desc": "message security"},
    "100": _ll(11, "receiving inst"), "102": _ll(28, "acct 1"), "103": _ll(28, "acct 2"),
    "121": _ll(100, "CUPS reserved", 3), "122": _ll(100, "acq reserved", 3), "123": _ll(100, "issuer reserved", 3),
    "128": {"data_enc": "b", "len_enc": "b", "len_type": 0, "max_len": 8, "desc": "MAC"},
}
for _i in range(2, 129):
    CUPS_HOST.setdefault(str(_i), _ll(999, "unknown", 3))


def make_header(total_len: int, dst: str, src: str) -> bytes:
    h = bytes([0x2E, 0x02]) + ("%04d" % total_len).encode() + dst.ljust(11).encode()[:11] + \
        src.ljust(11).encode()[:11] + b"\x00\x00\x00" + b"\x00" + b"00000000" + b"\x00" + b"00000"
    assert len(h) == 46, len(h)
    return h


class HostConn:
    def __init__(self, host: "Host", sock: socket.socket, addr):
        self.host, self.sock, self.addr = host, sock, addr
        self.wlock = threading.Lock()
        self.alive = True
        self.signed_on = False

    def recv_exact(self, n: int) -> bytes:
        b = b""
        while len(b) < n:
            c = self.sock.recv(n - len(b))
            if not c:
                raise EOFError
            b += c
        return b

    def send_msg(self, dec: dict, header_in: Optional[bytes], mac: bool, corrupt_mac: bool = False):
        msg = dict(dec)
        if mac:
            msg["128"] = "00" * 8
            raw, _ = iso8583.encode(msg, CUPS_HOST)
            m = x919_mac(self.host.zak, bytes(raw[:-8]))
            if corrupt_mac:
                m = bytes([m[0] ^ 0x55]) + m[1:]
            msg["128"] = m.hex()
        msg.pop("p", None)
        msg.pop("1", None)
        raw, _ = iso8583.encode(msg, CUPS_HOST)
        total = 46 + len(raw)
        if header_in is not None:
            # swap destination and source, keep the rest (doc: "An answer swaps ... keeps the rest")
            h = bytearray(header_in)
            h[2:6] = ("%04d" % total).encode()
            h[6:17], h[17:28] = header_in[17:28], header_in[6:17]
            header = bytes(h)
        else:
            header = make_header(total, self.host.gw_id, self.host.host_id)
        frame = ("%04d" % total).encode() + header + bytes(raw)
        with self.wlock:
            self.sock.sendall(frame)
        self.host.log("host >> %s %s" % (msg.get("t"), frame.hex().upper()))

    def run(self):
        try:
            while self.alive:
                ln = int(self.recv_exact(4).decode("ascii"))
                body = self.recv_exact(ln)
                header, iso = body[:46], body[46:]
                rec = {"header": header, "raw": iso, "t_recv": time.time(), "conn": id(self)}
                try:
                    dec, _ = iso8583.decode(bytearray(iso), CUPS_HOST)
                except Exception as e:  # noqa: BLE001
                    rec["decode_error"] = str(e)
                    self.host.record(rec)
                    self.host.log("host << undecodable %s: %s" % (body.hex().upper(), e))
                    continue
                dec.pop("h", None)
                rec["dec"] = dec
                if "128" in dec:
                    rec["mac_ok"] = x919_mac(self.host.zak_for_verify(), bytes(iso[:-8])) == bytes.fromhex(dec["128"])
                self.host.log("host << %s %s" % (dec.get("t"), body.hex().upper()))
                self.host.record(rec)
                self.host.handle(self, header, iso, dec, rec)
        except (EOFError, OSError, ValueError):
            pass
        finally:
            self.alive = False
            try:
                self.sock.close()
            except OSError:
                pass


class Host:
    """Behaviour knobs (set by run.py between scenarios):
       decline: {amount_suffix: code}   silent: set of amount suffixes never answered
       reversal_silent_count: how many reversals to ignore before answering"""

    def __init__(self, listen, zak: bytes, zpk: bytes, zmk: bytes, accounts: Dict[str, dict],
                 host_id: str = "0001000", gw_id: str = "48020000", log: Optional[Callable] = None):
        self.listen_addr = listen
        self.zak, self.zpk, self.zmk = zak, zpk, zmk
        self.old_zak: Optional[bytes] = None
        self.accounts = accounts
        self.host_id, self.gw_id = host_id, gw_id
        self.log = log or (lambda m: None)
        self.records: List[dict] = []
        self.rlock = threading.Lock()
        self.conns: List[HostConn] = []
        self.ledger: Dict[tuple, dict] = {}  # (F32, F41, F11) -> sale
        self.seen_rev: Dict[tuple, dict] = {}
        self.refunds: Dict[str, dict] = {}
        self.decline: Dict[str, str] = {}
        self.silent: set = set()
        self.drop: set = set()
        self.late: Dict[str, float] = {}  # amount suffix -> seconds: processed at once, answered late
        self.late_sent: List[float] = []           # amount suffixes neither processed nor answered ("lost on the way")
        self.reversal_silent_count = 0
        self.wrong_mac: set = set()      # amount suffixes answered with a corrupted MAC
        self.no_mac: set = set()         # amount suffixes answered without any MAC
        self.rrn = random.randint(100000, 800000) * 1000
        self.pending: Dict[str, dict] = {}
        self.pending_cv = threading.Condition()
        self.srv: Optional[socket.socket] = None

    # ------------------------------------------------------------------ plumbing
    def start(self):
        self.srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(self.listen_addr)
        self.srv.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()
        return self.srv.getsockname()

    def _accept(self):
        while True:
            try:
                s, a = self.srv.accept()
            except OSError:
                return
            c = HostConn(self, s, a)
            self.conns.append(c)
            threading.Thread(target=c.run, daemon=True).start()

    def stop(self):
        try:
            self.srv.close()
        except (OSError, AttributeError):
            pass
        for c in self.conns:
            c.alive = False
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
                c.sock.close()
            except OSError:
                pass

    def record(self, rec):
        with self.rlock:
            self.records.append(rec)
        with self.pending_cv:
            self.pending_cv.notify_all()

    def zak_for_verify(self) -> bytes:
        return self.zak

    def find(self, pred, timeout: float = 0.0) -> List[dict]:
        end = time.time() + timeout
        while True:
            with self.rlock:
                out = [r for r in self.records if "dec" in r and pred(r["dec"])]
            if out or time.time() >= end:
                return out
            with self.pending_cv:
                self.pending_cv.wait(0.2)

    def signed_on_conns(self) -> int:
        return sum(1 for c in self.conns if c.alive and c.signed_on)

    def next_rrn(self) -> str:
        self.rrn += 1
        return "%012d" % self.rrn

    # ------------------------------------------------------------------ behaviour
    def handle(self, conn: HostConn, header: bytes, iso: bytes, dec: dict, rec: dict):
        mti = dec.get("t")
        if mti == "0800":
            code = dec.get("70")
            ans = {"t": "0810", "39": "00"}
            for f in ("7", "11", "32", "70"):
                if f in dec:
                    ans[f] = dec[f]
            if code == "001":
                conn.signed_on = True
            conn.send_msg(ans, header, mac=False)
            return
        if mti == "0810":
            with self.pending_cv:
                self.pending["0810:" + dec.get("11", "")] = dec
                self.pending_cv.notify_all()
            return
        mac_present = "128" in dec
        if not mac_present or not rec.get("mac_ok"):
            ans = {k: dec[k] for k in ("2", "3", "4", "7", "11", "32", "41", "42", "49") if k in dec}
            ans["t"] = mti[:2] + str(int(mti[2]) + 1) + "0"
            ans["39"] = "A0"
            conn.send_msg(ans, header, mac=False)  # doc: the A0 answer carries no MAC
            return
        if mti == "0200":
            self._sale(conn, header, dec)
        elif mti in ("0400", "0401", "0420", "0421"):
            self._reversal(conn, header, dec)
        elif mti in ("0220", "0221"):
            self._refund(conn, header, dec)
        else:
            ans = {"t": mti[:2] + str(int(mti[2]) + 1) + "0", "39": "12"}
            for f in ("11", "32", "41"):
                if f in dec:
                    ans[f] = dec[f]
            conn.send_msg(ans, header, mac=True)

    def _echo_fields(self, dec, fields=("2", "3", "4", "7", "11", "12", "13", "22", "25", "32", "33", "41", "42", "49")):
        return {f: dec[f] for f in fields if f in dec}

    def _sale(self, conn, header, dec):
        amount = dec.get("4", "")
        for suf in self.silent:
            if amount.endswith(suf):
                self.log("host: staying silent on sale %s" % dec.get("11"))
                key = (dec.get("32"), dec.get("41"), dec.get("11"))
                self.ledger.setdefault(key, {"state": "approved", "amount": int(amount), "pan": dec.get("2"),
                                             "rrn": self.next_rrn(), "silent": True})
                return
        if any(amount.endswith(x) for x in self.drop):
            self.log("host: dropping sale %s" % dec.get("11"))
            return
        ans = self._echo_fields(dec)
        ans["t"] = "0210"
        key = (dec.get("32"), dec.get("41"), dec.get("11"))
        code = None
        if key in self.ledger or key in self.seen_rev:
            code = "94"
        pan = dec.get("2", "")
        acct = self.accounts.get(pan)
        if code is None and acct is None:
            code = "14"
        if code is None:
            for suf, c in self.decline.items():
                if amount.endswith(suf):
                    code = c
                    break
        if code is None and acct.get("pin"):
            if "52" not in dec:
                code = "55"
            else:
                try:
                    pin = pin_block_f0_decode(des_dec(self.zpk, bytes.fromhex(dec["52"])), pan)
                except ValueError:
                    pin = None
                if pin != acct["pin"]:
                    code = "55"
        if code is None and acct["balance"] < int(amount):
            code = "51"
        rrn = dec.get("37") or self.next_rrn()
        ans["37"] = rrn
        if code is None:
            acct["balance"] -= int(amount)
            auth = "%06d" % random.randint(0, 999999)
            ans["38"] = auth
            code = "00"
            self.ledger[key] = {"state": "approved", "amount": int(amount), "pan": pan, "rrn": rrn, "auth": auth,
                                "f7": dec.get("7"), "refunded": 0}
        ans["39"] = code
        corrupt = any(amount.endswith(x) for x in self.wrong_mac)
        nomac = any(amount.endswith(x) for x in self.no_mac)
        for suf, delay in self.late.items():
            if amount.endswith(suf):
                def later(ans=ans):
                    self.late_sent.append(time.time())
                    conn.send_msg(ans, header, mac=True)
                threading.Timer(delay, later).start()
                return
        conn.send_msg(ans, header, mac=not nomac, corrupt_mac=corrupt)

    def _reversal(self, conn, header, dec):
        if self.reversal_silent_count > 0:
            self.reversal_silent_count -= 1
            self.log("host: ignoring reversal %s %s" % (dec.get("t"), dec.get("11")))
            return
        f90 = dec.get("90")
        orig_stan = f90[4:10] if f90 else dec.get("11")
        key = (dec.get("32"), dec.get("41"), orig_stan)
        ans = self._echo_fields(dec)
        ans["t"] = dec["t"][:2] + str(int(dec["t"][2]) + 1) + "0"
        if "90" in dec:
            ans["90"] = dec["90"]
        sale = self.ledger.get(key)
        if sale is None:
            self.seen_rev[key] = {"state": "reversed-unseen"}
            ans["39"] = "25"
        else:
            if sale["state"] == "approved":
                sale["state"] = "reversed"
                acct = self.accounts.get(sale.get("pan"))
                if acct is not None and not sale.get("silent"):
                    acct["balance"] += sale["amount"] - sale.get("refunded", 0)
                elif acct is not None:
                    acct["balance"] += 0
            ans["39"] = "00"
        conn.send_msg(ans, header, mac=True)

    def _refund(self, conn, header, dec):
        f90 = dec.get("90") or ""
        orig_stan = f90[4:10]
        key = (dec.get("32"), dec.get("41"), orig_stan)
        ans = self._echo_fields(dec)
        ans["t"] = dec["t"][:2] + str(int(dec["t"][2]) + 1) + "0"
        for f in ("37", "90"):
            if f in dec:
                ans[f] = dec[f]
        sale = self.ledger.get(key)
        rrn = dec.get("37")
        if rrn in self.refunds:
            ans["39"] = "00"
        elif sale is None:
            ans["39"] = "25"
        elif sale["state"] != "approved":
            ans["39"] = "12"
        elif int(dec.get("4", "0")) > sale["amount"] - sale.get("refunded", 0):
            ans["39"] = "13"
        else:
            sale["refunded"] = sale.get("refunded", 0) + int(dec["4"])
            acct = self.accounts.get(sale["pan"])
            if acct:
                acct["balance"] += int(dec["4"])
            self.refunds[rrn] = {"amount": int(dec["4"]), "key": key}
            ans["39"] = "00"
        conn.send_msg(ans, header, mac=True)

    def echo(self, timeout: float = 10.0) -> Optional[dict]:
        """Host-initiated echo (0800 F70=301, no MAC); the link must answer 0810 00."""
        conns = [c for c in self.conns if c.alive and c.signed_on]
        if not conns:
            return None
        stan = "%06d" % random.randint(1, 999999)
        conns[0].send_msg({"t": "0800", "7": time.strftime("%m%d%H%M%S", time.gmtime()), "11": stan, "70": "301"},
                          None, mac=False)
        end = time.time() + timeout
        with self.pending_cv:
            while time.time() < end:
                a = self.pending.pop("0810:" + stan, None)
                if a is not None:
                    return a
                self.pending_cv.wait(0.2)
        return None

    # ------------------------------------------------------------------ host-initiated key change
    def key_change(self, new_zpk: Optional[bytes], new_zak: Optional[bytes], *, mac: bool = True,
                   corrupt_kcv: bool = False, timeout: float = 10.0) -> Optional[dict]:
        f48 = "KX01"
        if new_zpk is not None:
            kcv = kcv_des(new_zpk)
            if corrupt_kcv:
                kcv = bytes([kcv[0] ^ 0xFF]) + kcv[1:]
            f48 += "PK" + des_enc(self.zmk, new_zpk).hex().upper() + kcv.hex().upper()
        if new_zak is not None:
            f48 += "MK" + des_enc(self.zmk, new_zak).hex().upper() + kcv_des(new_zak).hex().upper()
        conns = [c for c in self.conns if c.alive and c.signed_on]
        if not conns:
            return None
        stan = "%06d" % random.randint(1, 999999)
        msg = {"t": "0800", "7": time.strftime("%m%d%H%M%S", time.gmtime()), "11": stan, "48": f48, "70": "101"}
        conns[0].send_msg(msg, None, mac=mac)
        end = time.time() + timeout
        with self.pending_cv:
            while time.time() < end:
                a = self.pending.pop("0810:" + stan, None)
                if a is not None:
                    if a.get("39") == "00":
                        if new_zpk is not None:
                            self.zpk = new_zpk
                        if new_zak is not None:
                            self.old_zak, self.zak = self.zak, new_zak
                    return a
                self.pending_cv.wait(0.2)
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", default="127.0.0.1:7001")
    ap.add_argument("--zak", required=True)
    ap.add_argument("--zpk", required=True)
    ap.add_argument("--zmk", required=True)
    ap.add_argument("--pan", default="6222021234567890123")
    ap.add_argument("--pin", default="1234")
    ap.add_argument("--balance-minor", type=int, default=10000000)
    a = ap.parse_args()
    h, p = a.listen.rsplit(":", 1)
    host = Host((h, int(p)), bytes.fromhex(a.zak), bytes.fromhex(a.zpk), bytes.fromhex(a.zmk),
                {a.pan: {"pin": a.pin, "balance": a.balance_minor}}, log=print)
    print("host listening on", host.start())
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        host.stop()


if __name__ == "__main__":
    main()
