//! A minimal PNG writer for black-and-white images: 1-bit greyscale, one IDAT chunk holding a zlib
//! stream of stored (uncompressed) deflate blocks.
//!
//! Why not a crate: the `qrcode` crate's `image` feature pulls the `image` crate without a PNG
//! encoder, and a QR code needs none of a general encoder's features. Stored blocks are valid
//! deflate that every PNG reader accepts; a code of 65 x 65 modules at 8 pixels is about 34 KiB.

/// The 8-byte PNG signature.
const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];
/// The most bytes one stored deflate block can hold.
const MAX_STORED_BLOCK: usize = 65_535;

/// Encodes a `width` x `height` black-and-white image as PNG. `is_white(x, y)` gives each pixel.
pub fn encode_bilevel(width: u32, height: u32, is_white: impl Fn(u32, u32) -> bool) -> Vec<u8> {
    let mut raw = Vec::new();
    for y in 0..height {
        raw.push(0); // filter type: none
        let mut byte = 0u8;
        for x in 0..width {
            if is_white(x, y) {
                byte |= 0x80 >> (x % 8);
            }
            if x % 8 == 7 {
                raw.push(byte);
                byte = 0;
            }
        }
        if !width.is_multiple_of(8) {
            raw.push(byte);
        }
    }

    let mut header = Vec::with_capacity(13);
    header.extend_from_slice(&width.to_be_bytes());
    header.extend_from_slice(&height.to_be_bytes());
    // Bit depth 1, colour type 0 (greyscale), deflate, adaptive filtering, no interlace.
    header.extend_from_slice(&[1, 0, 0, 0, 0]);

    let mut png = SIGNATURE.to_vec();
    write_chunk(&mut png, b"IHDR", &header);
    write_chunk(&mut png, b"IDAT", &zlib_stored(&raw));
    write_chunk(&mut png, b"IEND", &[]);
    png
}

fn write_chunk(png: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    // Chunk data is bounded by the caller's image size; a QR code is far below 2^31 bytes.
    let length = u32::try_from(data.len()).unwrap_or(u32::MAX);
    png.extend_from_slice(&length.to_be_bytes());
    let start = png.len();
    png.extend_from_slice(kind);
    png.extend_from_slice(data);
    let crc = crc32(&png[start..]);
    png.extend_from_slice(&crc.to_be_bytes());
}

/// A zlib stream (RFC 1950) of stored deflate blocks (RFC 1951 section 3.2.4).
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    // CMF 0x78: deflate, 32 KiB window; FLG 0x01 makes (CMF * 256 + FLG) a multiple of 31.
    let mut out = vec![0x78, 0x01];
    let mut blocks = data.chunks(MAX_STORED_BLOCK).peekable();
    if blocks.peek().is_none() {
        out.extend_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff]);
    }
    while let Some(block) = blocks.next() {
        let last = blocks.peek().is_none();
        out.push(u8::from(last));
        // chunks() yields at most MAX_STORED_BLOCK bytes, which fits u16.
        let length = u16::try_from(block.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&length.to_le_bytes());
        out.extend_from_slice(&(!length).to_le_bytes());
        out.extend_from_slice(block);
    }
    out.extend_from_slice(&adler32(data).to_be_bytes());
    out
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for byte in data {
        a = (a + u32::from(*byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    (b << 16) | a
}

/// CRC-32 (ISO-HDLC, the one PNG uses), bit by bit: images here are small.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for byte in data {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_match_their_check_values() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(adler32(b"Wikipedia"), 0x11e6_0398);
        // The IEND chunk's CRC is a constant every PNG ends with.
        assert_eq!(crc32(b"IEND"), 0xae42_6082);
    }

    #[test]
    fn large_images_split_into_several_stored_blocks() {
        let data = vec![0x55; MAX_STORED_BLOCK + 10];
        let stream = zlib_stored(&data);
        // Header, two block headers (5 bytes each), data, Adler-32.
        assert_eq!(stream.len(), 2 + 5 + 5 + data.len() + 4);
        assert_eq!(stream[2], 0x00);
        assert_eq!(stream[2 + 5 + MAX_STORED_BLOCK], 0x01);
    }
}
