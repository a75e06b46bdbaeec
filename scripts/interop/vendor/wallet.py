#!/usr/bin/env python3
"""A phone wallet app for posbridge, written from docs/wallet-api.md and docs/qr-payload.md only.

Usage:
  wallet.py --api http://127.0.0.1:8080 --app my-wallet --key pbk_... --pek HEX \
      pay PAYLOAD --pan 6222021234567890123 --pin 1234
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import uuid
from typing import Optional, Tuple
from urllib.parse import urlparse

sys.path.insert(0, os.path.dirname(__file__))
from common import aes_cmac, iso9797_alg1_pad2_des, pin_block_f4_encrypt, qr_parse, qr_signature_input  # noqa: E402


def describe_payload(payload: str) -> dict:
    """S104: decode the scanned code and list what it claims (never shown as the amount to pay)."""
    q = qr_parse(payload)
    t = q["tags"]
    t80 = t.get("80", {}) if isinstance(t.get("80"), dict) else {}
    t81 = t.get("81", {}) if isinstance(t.get("81"), dict) else {}
    t26 = t.get("26", {}) if isinstance(t.get("26"), dict) else {}
    t62 = t.get("62", {}) if isinstance(t.get("62"), dict) else {}
    return {
        "dynamic": t.get("01") == "12",
        "gui": t26.get("00"), "mid": t26.get("01"), "mcc": t.get("52"), "currency": t.get("53"),
        "amount": t.get("54"), "country": t.get("58"), "name": t.get("59"), "city": t.get("60"),
        "reference": t62.get("05"), "terminal_label": t62.get("07"),
        "tid": t80.get("01"), "batch": t80.get("02"), "voucher": t80.get("03"), "operator": t80.get("04"),
        "acquirer": t80.get("05"), "tx_type": t80.get("06"), "expiry": t80.get("07"),
        "sig_key_id": t81.get("01"), "signature": t81.get("02"),
    }


def verify_gateway_signature(payload: str, qr_key: bytes) -> Optional[bool]:
    """docs/qr-payload.md "What is signed". The doc does not name the algorithm for the gateway's
    AES key (qr/sign); we try AES-CMAC truncated to the signature's length (guess, see GAPS.md).
    A wallet normally cannot hold this key (it is symmetric and the gateway's own)."""
    sig = describe_payload(payload)["signature"]
    if not sig:
        return None
    mac = aes_cmac(qr_key, qr_signature_input(payload))
    return mac.hex().upper()[: len(sig)] == sig.upper()


def verify_terminal_signature(payload: str, tak: bytes) -> Optional[bool]:
    sig = describe_payload(payload)["signature"]
    if not sig:
        return None
    mac = iso9797_alg1_pad2_des(tak, qr_signature_input(payload))
    return mac.hex().upper()[: len(sig)] == sig.upper()


class WalletApp:
    def __init__(self, api: str, app_id: str, api_key: str, pek: bytes, timeout: float = 60.0):
        u = urlparse(api)
        self.host, self.port = u.hostname, u.port or 80
        self.app_id, self.api_key, self.pek, self.timeout = app_id, api_key, pek, timeout

    def request(self, method: str, path: str, body=None, idem: Optional[str] = None, headers=None,
                auth: bool = True, raw_body: Optional[bytes] = None) -> Tuple[int, dict, str]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        h = {"Content-Type": "application/json"}
        if auth:
            h["X-Posbridge-App"] = self.app_id
            h["Authorization"] = "Bearer " + self.api_key
        if idem:
            h["Idempotency-Key"] = idem
        if headers:
            h.update(headers)
        data = raw_body if raw_body is not None else (json.dumps(body).encode() if body is not None else None)
        conn.request(method, path, body=data, headers=h)
        r = conn.getresponse()
        text = r.read().decode("utf-8", "replace")
        conn.close()
        try:
            js = json.loads(text) if text else {}
        except ValueError:
            js = {"_not_json": text}
        return r.status, js, text

    def resolve(self, payload: str):
        return self.request("POST", "/v1/orders/resolve", {"payload": payload})

    def get_order(self, order_id: str):
        return self.request("GET", "/v1/orders/" + order_id)

    def pin_block(self, pin: str, pan: str) -> str:
        return pin_block_f4_encrypt(self.pek, pin, pan).hex().upper()

    def pay(self, payload: str, pan: str, pin: Optional[str], idem: Optional[str] = None,
            amount_minor: Optional[int] = None, currency: Optional[int] = None, pin_block: Optional[str] = None):
        body = {"payload": payload, "pan": pan}
        if pin is not None or pin_block is not None:
            body["pin_block"] = pin_block or self.pin_block(pin, pan)
            body["pin_format"] = 4
        if amount_minor is not None:
            body["amount_minor"] = amount_minor
        if currency is not None:
            body["currency"] = currency
        idem = idem or str(uuid.uuid4())
        st, js, text = self.request("POST", "/v1/payments", body, idem=idem)
        return st, js, text, idem, body


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--api", default="http://127.0.0.1:8080")
    ap.add_argument("--app", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--pek", required=True, help="app PIN encryption key (AES), hex")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("resolve")
    r.add_argument("payload")
    p = sub.add_parser("pay")
    p.add_argument("payload")
    p.add_argument("--pan", required=True)
    p.add_argument("--pin")
    a = ap.parse_args()
    w = WalletApp(a.api, a.app, a.key, bytes.fromhex(a.pek))
    print("code says:", json.dumps(describe_payload(a.payload), ensure_ascii=False))
    st, js, _ = w.resolve(a.payload)
    print("server's order (show these):", st, json.dumps(js, ensure_ascii=False))
    if a.cmd == "pay":
        st, js, _, idem, _ = w.pay(a.payload, a.pan, a.pin)
        print("payment:", st, json.dumps(js, ensure_ascii=False))


if __name__ == "__main__":
    main()
