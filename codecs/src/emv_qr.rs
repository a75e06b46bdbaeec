//! EMVCo merchant-presented QR payloads (ID, length, value; CRC-16/CCITT-FALSE in tag 63).
