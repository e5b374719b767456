//! GPT-2's pre-tokenization, written out as a scanner instead of a regular expression.
//!
//! GPT-2 (and tiktoken's `gpt2` encoding) first splits text with
//!
//! ```text
//! 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//! ```
//!
//! and runs BPE on each piece separately. At every position the first alternative that matches wins, so
//! the scanner below tries them in that order:
//!
//! 1. `'` followed by `s`, `t`, `m`, `d`, `re`, `ve` or `ll` (lower case only: the pattern is case-sensitive,
//!    so `'S` and `'LL` fall through to rule 3 and become `'` + `S`).
//! 2. An optional single U+0020 space, then a run of letters, or of numbers, or of "other" characters
//!    (neither whitespace, letter nor number — apostrophes included).
//! 3. A whitespace run. `\s+(?!\S)` backtracks so that the run stops *before* its last character when a
//!    non-space follows — that last character then starts the next piece (a space joins the word after
//!    it by rule 2; a newline or tab stands alone by `\s+`). A run that reaches the end of the text is one
//!    piece, and so is a lone whitespace character followed by a non-space.
//!
//! Rule 3 is why where text ends matters: `"a\n\nb"` splits as `a`, `\n`, `\n`, `b`, but `"a\n\n"` as `a`,
//! `\n\n`. Nothing looks backwards, so a piece boundary stays a boundary for the text that follows it.
//!
//! Character classes are those of tiktoken's regular-expression engine (Unicode 16.0): `\p{L}` is General
//! Category L (Lu, Ll, Lt, Lm, Lo) — not Rust's `char::is_alphabetic`, which is the wider Alphabetic
//! property (it adds Nl, Other_Alphabetic marks, …) — and `\p{N}` is Nd, Nl and No. Categories come from the
//! `unicode-general-category` crate, pinned to the same Unicode version as tiktoken (std's tables follow
//! the compiler's newer Unicode and differ on 13 code points added in 17.0). `\s` is the White_Space
//! property, which is `char::is_whitespace` (stable since Unicode 6). A test checks all 1 114 112 code points
//! against the classes read out of tiktoken by `tools/make_tokenizer_fixtures.py`.

use unicode_general_category::{GeneralCategory as G, get_general_category};

/// The four classes the GPT-2 pattern distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CharClass {
    /// `\p{L}`
    Letter,
    /// `\p{N}`
    Number,
    /// `\s`
    Space,
    /// everything else: punctuation, symbols, marks, controls, unassigned code points
    Other,
}

/// Classes of the 128 ASCII characters, the fast path for nearly all English text.
const ASCII_CLASS: [CharClass; 128] = {
    let mut table = [CharClass::Other; 128];
    let mut b = 0usize;
    while b < 128 {
        let c = b as u8;
        table[b] = if c.is_ascii_alphabetic() {
            CharClass::Letter
        } else if c.is_ascii_digit() {
            CharClass::Number
        } else if matches!(c, b'\t' | b'\n' | 0x0B | 0x0C | b'\r' | b' ') {
            CharClass::Space
        } else {
            CharClass::Other
        };
        b += 1;
    }
    table
};

/// The class of one character, as tiktoken's `gpt2` pattern sees it.
pub fn char_class(c: char) -> CharClass {
    let code = c as u32;
    if code < 128 {
        return ASCII_CLASS[code as usize];
    }
    if c.is_whitespace() {
        return CharClass::Space;
    }
    match get_general_category(c) {
        G::UppercaseLetter | G::LowercaseLetter | G::TitlecaseLetter | G::ModifierLetter | G::OtherLetter => {
            CharClass::Letter
        }
        G::DecimalNumber | G::LetterNumber | G::OtherNumber => CharClass::Number,
        _ => CharClass::Other,
    }
}

/// The character starting at byte `pos` of valid UTF-8 and its length, or `None` at the end.
#[inline]
fn char_at(bytes: &[u8], pos: usize) -> Option<(char, usize)> {
    let b0 = *bytes.get(pos)?;
    if b0 < 0x80 {
        return Some((b0 as char, 1));
    }
    // Continuation bytes carry 6 bits each; `bytes` is a `str`, so the sequence is complete and valid.
    let cont = |k: usize| u32::from(bytes.get(pos + k).copied().unwrap_or(0x80) & 0x3F);
    let (code, len) = if b0 < 0xE0 {
        ((u32::from(b0 & 0x1F) << 6) | cont(1), 2)
    } else if b0 < 0xF0 {
        ((u32::from(b0 & 0x0F) << 12) | (cont(1) << 6) | cont(2), 3)
    } else {
        ((u32::from(b0 & 0x07) << 18) | (cont(1) << 12) | (cont(2) << 6) | cont(3), 4)
    };
    Some((char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER), len))
}

/// The end of the run of `class` characters starting at `pos`.
#[inline]
fn run_end(bytes: &[u8], mut pos: usize, class: CharClass) -> usize {
    while let Some(&b) = bytes.get(pos) {
        if b < 0x80 {
            if ASCII_CLASS[b as usize] != class {
                break;
            }
            pos += 1;
        } else {
            match char_at(bytes, pos) {
                Some((c, len)) if char_class(c) == class => pos += len,
                _ => break,
            }
        }
    }
    pos
}

/// Length of a contraction (`'s`, `'re`, …) starting at `pos`, which holds an apostrophe.
#[inline]
fn contraction_len(bytes: &[u8], pos: usize) -> Option<usize> {
    match (bytes.get(pos + 1), bytes.get(pos + 2)) {
        (Some(b's' | b't' | b'm' | b'd'), _) => Some(2),
        (Some(b'r' | b'v'), Some(b'e')) | (Some(b'l'), Some(b'l')) => Some(3),
        _ => None,
    }
}

/// Rule 3: the piece of a whitespace run starting at `start`, whose first character is `first_len` long.
#[inline]
fn whitespace_end(bytes: &[u8], start: usize, first_len: usize) -> usize {
    let mut pos = start + first_len;
    let mut last_start = start;
    while let Some((c, len)) = char_at(bytes, pos) {
        if char_class(c) != CharClass::Space {
            // `\s+(?!\S)`: give back the last whitespace character, unless it is the only one (`\s+`).
            return if last_start > start { last_start } else { pos };
        }
        last_start = pos;
        pos += len;
    }
    pos // the run reaches the end of the text: `\s+(?!\S)` takes all of it
}

/// End (exclusive) of the piece that starts at byte `start` (< `text.len()`, on a character boundary).
/// Always greater than `start`.
pub fn piece_end(text: &str, start: usize) -> usize {
    let bytes = text.as_bytes();
    let Some((c, len)) = char_at(bytes, start) else {
        return bytes.len().max(start + 1);
    };
    match char_class(c) {
        CharClass::Space => {
            if c == ' '
                && let Some((next, next_len)) = char_at(bytes, start + 1)
                && char_class(next) != CharClass::Space
            {
                return run_end(bytes, start + 1 + next_len, char_class(next));
            }
            whitespace_end(bytes, start, len)
        }
        CharClass::Other if c == '\'' => match contraction_len(bytes, start) {
            Some(n) => start + n,
            None => run_end(bytes, start + 1, CharClass::Other),
        },
        class => run_end(bytes, start + len, class),
    }
}

/// The pieces of `text`, in order; concatenated they are `text`.
pub fn pieces(text: &str) -> Pieces<'_> {
    Pieces { text, pos: 0 }
}

/// Iterator over GPT-2 pre-tokenization pieces (see [`pieces`]).
#[derive(Debug, Clone)]
pub struct Pieces<'t> {
    text: &'t str,
    pos: usize,
}

impl<'t> Iterator for Pieces<'t> {
    type Item = &'t str;

    #[inline]
    fn next(&mut self) -> Option<&'t str> {
        if self.pos >= self.text.len() {
            return None;
        }
        let end = piece_end(self.text, self.pos);
        let piece = self.text.get(self.pos..end);
        self.pos = end;
        piece
    }
}

/// Whether encoding `text[..cut]` and `text[cut..]` separately gives exactly the pieces of `text`.
///
/// True when the character before `cut` is not whitespace and the one at `cut` is: the piece ending at
/// `cut` (a letter, number or other run, or a contraction) cannot continue into whitespace, and no rule
/// looked past `cut` to decide it (rule 3's look-ahead only matters for whitespace runs, and the text
/// before `cut` does not end in one). The text after `cut` is scanned from a piece boundary, exactly as
/// in the whole. Cutting *after* whitespace is what breaks: `"\n\n"` at the end of a chunk is one piece
/// but two inside the text.
pub fn is_safe_cut(text: &str, cut: usize) -> bool {
    let (Some(before), Some(after)) = (text.get(..cut), text.get(cut..)) else {
        return false;
    };
    match (before.chars().next_back(), after.chars().next()) {
        (Some(b), Some(a)) => char_class(b) != CharClass::Space && char_class(a) == CharClass::Space,
        _ => false,
    }
}

/// The first safe cut (see [`is_safe_cut`]) at or after byte `from`, if any. Only ASCII whitespace is
/// looked for, which is where real text has its cuts.
pub fn next_safe_cut(text: &str, from: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut pos = from.max(1);
    while pos < bytes.len() {
        let rel = bytes.get(pos..)?.iter().position(|&b| b < 0x80 && ASCII_CLASS[b as usize] == CharClass::Space)?;
        pos += rel;
        if is_safe_cut(text, pos) {
            return Some(pos);
        }
        pos += 1;
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod tests {
    use super::*;

    fn split(text: &str) -> Vec<&str> {
        pieces(text).collect()
    }

    #[test]
    fn words_numbers_punctuation() {
        assert_eq!(split("Hello world!"), ["Hello", " world", "!"]);
        assert_eq!(split("abc123 45.6"), ["abc", "123", " 45", ".", "6"]);
        assert_eq!(split("a?!b ?! c"), ["a", "?!", "b", " ?!", " c"]);
    }

    #[test]
    fn contractions_are_case_sensitive() {
        assert_eq!(split("it's we'll they're I'd"), ["it", "'s", " we", "'ll", " they", "'re", " I", "'d"]);
        assert_eq!(split("IT'S WE'LL"), ["IT", "'", "S", " WE", "'", "LL"]);
        assert_eq!(split("'sup ''s ' s"), ["'s", "up", " ''", "s", " '", " s"]);
        assert_eq!(split("?'s"), ["?'", "s"]);
    }

    #[test]
    fn whitespace_runs_give_back_their_last_character() {
        assert_eq!(split("a  b"), ["a", " ", " b"]);
        assert_eq!(split("a\n\nb"), ["a", "\n", "\n", "b"]);
        assert_eq!(split("a\n\n"), ["a", "\n\n"]);
        assert_eq!(split("a \n b"), ["a", " \n", " b"]);
        assert_eq!(split("a\tb"), ["a", "\t", "b"]);
        assert_eq!(split("   "), ["   "]);
        assert_eq!(split(" "), [" "]);
        assert_eq!(split("a\r\n\r\nb  "), ["a", "\r\n\r", "\n", "b", "  "]);
        assert_eq!(split("x\u{3000}\u{3000}y"), ["x", "\u{3000}", "\u{3000}", "y"]);
    }

    #[test]
    fn unicode_classes() {
        assert_eq!(split("日本語です。"), ["日本語です", "。"]);
        assert_eq!(split(" é 42 ½ Ⅻ"), [" é", " 42", " ½", " Ⅻ"]);
        // A combining mark (Mn) is "other", so it splits a word.
        assert_eq!(split("cafe\u{301} ok"), ["cafe", "\u{301}", " ok"]);
        assert_eq!(split("👍🏽 hi"), ["👍🏽", " hi"]);
        assert_eq!(char_class('\u{85}'), CharClass::Space);
        assert_eq!(char_class('\u{1C}'), CharClass::Other);
        assert_eq!(char_class('ǅ'), CharClass::Letter); // Lt
        assert_eq!(char_class('ʰ'), CharClass::Letter); // Lm
        assert_eq!(char_class('Ⅻ'), CharClass::Number); // Nl: Alphabetic, but not \p{L}
        assert!('Ⅻ'.is_alphabetic());
    }

    #[test]
    fn pieces_cover_the_text() {
        let text = "First Citizen:\nBefore we proceed, hear me speak.\n\nAll:\nSpeak, speak.\n \t\n";
        assert_eq!(split(text).concat(), text);
        assert!(split(text).iter().all(|p| !p.is_empty()));
        assert_eq!(split(""), Vec::<&str>::new());
    }

    #[test]
    fn safe_cuts_do_not_change_pieces() {
        let text = "a b\n\nc d  \n e\u{3000}f\n";
        let whole = split(text);
        for cut in 1..text.len() {
            if is_safe_cut(text, cut) {
                let mut parts = split(&text[..cut]);
                parts.extend(split(&text[cut..]));
                assert_eq!(parts, whole, "cut at {cut}");
            }
        }
        assert!(!is_safe_cut(text, text.find("\n\n").unwrap() + 1));
        assert_eq!(next_safe_cut(text, 0), Some(1));
        assert_eq!(next_safe_cut(text, 4), Some(6));
        assert_eq!(next_safe_cut("aaaa", 0), None);
    }
}
