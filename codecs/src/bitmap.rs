//! Bitmaps: which data elements a message carries. Bit 1 is the most significant bit of the first
//! byte; bit 1 announces the secondary bitmap (fields 65-128) and, in dialects with three bitmaps,
//! bit 65 announces the tertiary one (129-192). Kept as three big-endian words so that presence
//! tests, iteration and "how many fields come before N" are a few instructions each.

/// Presence of fields 1..=192.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bitmap {
    words: [u64; 3],
}

impl Bitmap {
    /// An empty bitmap.
    pub const fn new() -> Self {
        Bitmap { words: [0; 3] }
    }

    /// The three 64-bit words (primary, secondary, tertiary), most significant bit = lowest field.
    pub fn words(&self) -> [u64; 3] {
        self.words
    }

    /// Builds a bitmap from its three words.
    pub fn from_words(words: [u64; 3]) -> Self {
        Bitmap { words }
    }

    #[inline]
    fn locate(field: u16) -> Option<(usize, u32)> {
        if field == 0 || field > 192 {
            return None;
        }
        let i = usize::from(field - 1);
        Some((i / 64, 63 - (i % 64) as u32))
    }

    /// Whether field `field` (1..=192) is present.
    #[inline]
    pub fn contains(&self, field: u16) -> bool {
        match Self::locate(field) {
            Some((w, b)) => self.words[w] >> b & 1 == 1,
            None => false,
        }
    }

    /// Marks a field present (numbers outside 1..=192 are ignored).
    #[inline]
    pub fn insert(&mut self, field: u16) {
        if let Some((w, b)) = Self::locate(field) {
            self.words[w] |= 1 << b;
        }
    }

    /// Marks a field absent.
    #[inline]
    pub fn remove(&mut self, field: u16) {
        if let Some((w, b)) = Self::locate(field) {
            self.words[w] &= !(1 << b);
        }
    }

    /// Number of set bits before `field` (its index among present fields, bitmap bits included).
    #[inline]
    pub fn rank(&self, field: u16) -> usize {
        match Self::locate(field) {
            Some((w, b)) => {
                let before: u32 = self.words[..w].iter().map(|x| x.count_ones()).sum();
                let mask = if b == 63 { 0 } else { !0u64 << (b + 1) };
                (before + (self.words[w] & mask).count_ones()) as usize
            }
            None => 0,
        }
    }

    /// The highest field present (bitmap bits included), `None` when empty.
    #[inline]
    pub fn highest(&self) -> Option<u16> {
        let (w, word) = self
            .words
            .iter()
            .enumerate()
            .rev()
            .find(|(_, w)| **w != 0)?;
        // The lowest set bit of a word is its highest field.
        Some((w * 64) as u16 + 64 - word.trailing_zeros() as u16)
    }

    /// Number of set bits.
    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// True when no bit is set.
    pub fn is_empty(&self) -> bool {
        self.words == [0; 3]
    }

    /// Present field numbers in ascending order (bitmap bits 1 and 65 included if set).
    pub fn iter(&self) -> BitmapIter {
        BitmapIter {
            words: self.words,
            word: 0,
        }
    }
}

/// Iterator over the set bits of a [`Bitmap`].
#[derive(Debug, Clone)]
pub struct BitmapIter {
    words: [u64; 3],
    word: usize,
}

impl Iterator for BitmapIter {
    type Item = u16;

    #[inline]
    fn next(&mut self) -> Option<u16> {
        while self.word < 3 {
            let bits = self.words[self.word];
            if bits != 0 {
                let lz = bits.leading_zeros();
                self.words[self.word] = bits & !(1u64 << (63 - lz));
                return Some((self.word as u16) * 64 + lz as u16 + 1);
            }
            self.word += 1;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highest_is_the_last_field_iterated() {
        let mut b = Bitmap::new();
        assert_eq!(b.highest(), None);
        for field in [2, 64, 65, 128, 129, 192] {
            b.insert(field);
            assert_eq!(b.highest(), Some(field));
            assert_eq!(b.highest(), b.iter().last());
        }
        b.remove(192);
        assert_eq!(b.highest(), Some(129));
    }

    #[test]
    fn insert_iterate_rank() {
        let mut b = Bitmap::new();
        for f in [1, 2, 3, 64, 65, 128, 129, 192] {
            b.insert(f);
        }
        assert_eq!(
            b.iter().collect::<Vec<_>>(),
            vec![1, 2, 3, 64, 65, 128, 129, 192]
        );
        assert_eq!(b.rank(1), 0);
        assert_eq!(b.rank(64), 3);
        assert_eq!(b.rank(65), 4);
        assert_eq!(b.rank(192), 7);
        assert!(b.contains(128) && !b.contains(127) && !b.contains(0) && !b.contains(193));
        assert_eq!(b.words()[0], 0xE000_0000_0000_0001);
        b.remove(2);
        assert_eq!(b.len(), 7);
    }
}
