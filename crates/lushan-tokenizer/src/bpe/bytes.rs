//! GPT-2's byte ↔ character map (`bytes_to_unicode` in OpenAI's `encoder.py`).
//!
//! Byte-level BPE works on bytes, but the vocabulary files store tokens as JSON strings. GPT-2 therefore maps
//! every byte to a printable character: the 188 bytes that are already printable and not whitespace
//! (`!`..=`~`, `¡`..=`¬`, `®`..=`ÿ`) map to themselves, and the other 68 bytes (controls, space, DEL, NBSP,
//! soft hyphen, …) map, in byte order, to U+0100 onwards — so the space byte is `Ġ` (U+0120) and `\n` is `Ċ`
//! (U+010A). `encoder.json`, `vocab.json`, `merges.txt` and `tokenizer.json` all spell tokens this way.
//!
//! The same order (printable bytes first) gives the ids of the 256 single-byte tokens in GPT-2's
//! vocabulary: id 0 is `!`, id 255 is byte 0xAD. The trainer uses that order too, so the first 256 ids of a
//! lushan-trained vocabulary mean what they mean in GPT-2.

/// `true` for the 188 bytes that GPT-2 keeps as their own Latin-1 character.
const fn is_printable(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// Byte → character, built once at compile time.
const BYTE_TO_CHAR: [char; 256] = {
    let mut table = ['\0'; 256];
    let mut next_extra = 0u32;
    let mut b = 0usize;
    while b < 256 {
        let code = if is_printable(b as u8) {
            b as u32
        } else {
            let code = 256 + next_extra;
            next_extra += 1;
            code
        };
        table[b] = match char::from_u32(code) {
            Some(c) => c,
            None => '\0', // unreachable: every code here is below U+0144
        };
        b += 1;
    }
    table
};

/// Highest code point used by the map, plus one (256 + 68 = U+0144).
const CHAR_LIMIT: usize = 0x144;

/// Character code → byte + 1 (0 = not in the map), for code points below [`CHAR_LIMIT`].
const CHAR_TO_BYTE: [u16; CHAR_LIMIT] = {
    let mut table = [0u16; CHAR_LIMIT];
    let mut b = 0usize;
    while b < 256 {
        table[BYTE_TO_CHAR[b] as usize] = b as u16 + 1;
        b += 1;
    }
    table
};

/// The 256 bytes in GPT-2's id order: printable bytes first, then the remapped ones.
pub const GPT2_BYTE_ORDER: [u8; 256] = {
    let mut order = [0u8; 256];
    let mut n = 0;
    let mut pass = 0;
    while pass < 2 {
        let mut b = 0usize;
        while b < 256 {
            if is_printable(b as u8) == (pass == 0) {
                order[n] = b as u8;
                n += 1;
            }
            b += 1;
        }
        pass += 1;
    }
    order
};

/// The character that stands for `byte` in vocabulary files.
pub fn byte_to_char(byte: u8) -> char {
    BYTE_TO_CHAR[byte as usize]
}

/// The byte a vocabulary-file character stands for, or `None` for a character outside GPT-2's alphabet.
pub fn char_to_byte(ch: char) -> Option<u8> {
    let code = ch as usize;
    if code < CHAR_LIMIT {
        // Entries are byte + 1, so every stored value is in 1..=256 and the subtraction is exact.
        CHAR_TO_BYTE[code].checked_sub(1).map(|b| b as u8)
    } else {
        None
    }
}

/// A token's bytes spelled as a vocabulary-file string (`b" the"` → `"Ġthe"`).
pub fn token_to_string(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| byte_to_char(b)).collect()
}

/// A vocabulary-file string back to bytes; `Err` carries the first character outside GPT-2's alphabet.
pub fn string_to_token(text: &str) -> Result<Vec<u8>, char> {
    text.chars().map(|c| char_to_byte(c).ok_or(c)).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn map_is_a_bijection_matching_gpt2() {
        let mut seen = std::collections::HashSet::new();
        for b in 0..=255u8 {
            let c = byte_to_char(b);
            assert!(seen.insert(c));
            assert_eq!(char_to_byte(c), Some(b));
        }
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(b'a'), 'a');
        assert_eq!(byte_to_char(0), 'Ā');
        assert_eq!(byte_to_char(0xAD), 'Ń');
        assert_eq!(char_to_byte('z'), Some(b'z'));
        assert_eq!(char_to_byte(' '), None);
        assert_eq!(char_to_byte('中'), None);
    }

    #[test]
    fn id_order_starts_with_printable_bytes() {
        assert_eq!(GPT2_BYTE_ORDER[0], b'!');
        assert_eq!(GPT2_BYTE_ORDER[93], b'~');
        assert_eq!(GPT2_BYTE_ORDER[188], 0);
        assert_eq!(GPT2_BYTE_ORDER[255], 0xAD);
        let mut sorted = GPT2_BYTE_ORDER;
        sorted.sort_unstable();
        assert!(sorted.iter().enumerate().all(|(i, &b)| i == b as usize));
    }

    #[test]
    fn strings_round_trip() {
        let bytes = b" hello\n\xff\x00";
        let s = token_to_string(bytes);
        assert_eq!(s, "ĠhelloĊÿĀ");
        assert_eq!(string_to_token(&s).unwrap(), bytes);
        assert_eq!(string_to_token("a b"), Err(' '));
    }
}
