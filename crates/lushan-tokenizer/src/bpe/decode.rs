//! Ids → bytes, and a streaming decoder that only ever emits whole characters.
//!
//! A byte-level token can end in the middle of a UTF-8 character (GPT-2 spells many CJK characters and
//! emoji as two or three tokens), so text generated one token at a time cannot be printed token by token.
//! [`StreamDecoder`] keeps the bytes of an unfinished character until the token that completes it arrives.

use crate::Tokenizer;
use crate::error::{Result, TokenizerError};

use super::Bpe;

impl Bpe {
    /// The exact bytes `ids` stand for; an id outside the vocabulary is an error naming it and its position.
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for (index, &id) in ids.iter().enumerate() {
            let bytes = self.token_bytes(id).ok_or(TokenizerError::IdOutOfRange {
                id,
                index,
                vocab_size: self.vocab_size(),
            })?;
            out.extend_from_slice(bytes);
        }
        Ok(out)
    }

    /// [`Bpe::decode_bytes`] as text: bytes that are not UTF-8 (a character cut off by the end of `ids`, or
    /// ids in an order no encoding produces) become U+FFFD, as in tiktoken's `decode(errors="replace")`.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let bytes = self.decode_bytes(ids)?;
        Ok(match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }
}

/// Decodes a stream of ids into text, one id at a time, never emitting part of a character.
///
/// The concatenation of everything [`StreamDecoder::push`] returns and then [`StreamDecoder::finish`] equals
/// `String::from_utf8_lossy` of all the ids' bytes: invalid sequences become U+FFFD as soon as they are known
/// to be invalid, and an incomplete character is held back until the next id completes it (or `finish`
/// gives up on it).
#[derive(Debug)]
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    pending: Vec<u8>,
    pushed: usize,
}

impl<'a> StreamDecoder<'a> {
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        Self { tokenizer, pending: Vec::new(), pushed: 0 }
    }

    /// Adds one id and returns the text it completes (often empty for the first half of a character).
    pub fn push(&mut self, id: u32) -> Result<String> {
        let index = self.pushed;
        self.tokenizer.append_token_bytes(id, &mut self.pending).map_err(|e| match e {
            TokenizerError::IdOutOfRange { id, vocab_size, .. } => {
                TokenizerError::IdOutOfRange { id, index, vocab_size }
            }
            other => other,
        })?;
        self.pushed += 1;
        Ok(self.take_complete())
    }

    /// Bytes held back because they may be the start of a character.
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }

    /// The rest: held-back bytes of an unfinished character become U+FFFD.
    pub fn finish(self) -> String {
        String::from_utf8_lossy(&self.pending).into_owned()
    }

    /// Moves every complete character (and U+FFFD for each invalid sequence) out of `pending`.
    fn take_complete(&mut self) -> String {
        let mut text = String::new();
        let mut start = 0;
        loop {
            let rest = &self.pending[start..];
            match std::str::from_utf8(rest) {
                Ok(valid) => {
                    text.push_str(valid);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // `valid_up_to` bytes were just checked, so this cannot fail.
                    text.push_str(std::str::from_utf8(&rest[..valid]).unwrap_or_default());
                    match e.error_len() {
                        Some(bad) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            start += valid + bad;
                        }
                        None => {
                            // An incomplete character at the end: keep it for the next id.
                            start += valid;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        text
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn stream_holds_back_partial_characters() {
        let tok = Tokenizer::Bpe(Bpe::gpt2().unwrap());
        let Tokenizer::Bpe(bpe) = &tok else { unreachable!() };
        let text = "月光🙂 ok";
        let ids = bpe.encode_ordinary(text);
        let mut stream = StreamDecoder::new(&tok);
        let mut out = String::new();
        for &id in &ids {
            let piece = stream.push(id).unwrap();
            assert!(!piece.contains('\u{FFFD}'));
            out.push_str(&piece);
        }
        assert!(stream.pending().is_empty());
        out.push_str(&stream.finish());
        assert_eq!(out, text);
    }

    #[test]
    fn stream_matches_lossy_decoding_of_invalid_sequences() {
        let tok = Tokenizer::Bpe(Bpe::gpt2().unwrap());
        let Tokenizer::Bpe(bpe) = &tok else { unreachable!() };
        // Byte tokens: 0xE6 0x9C (start of 月), 'a', 0xFF, 0xE6 (cut off at the end).
        let ids: Vec<u32> = [0xE6u8, 0x9C, b'a', 0xFF, 0xE6].iter().map(|&b| bpe.token_id(&[b]).unwrap()).collect();
        let mut stream = StreamDecoder::new(&tok);
        let mut out = String::new();
        for &id in &ids {
            out.push_str(&stream.push(id).unwrap());
        }
        out.push_str(&stream.finish());
        assert_eq!(out, bpe.decode(&ids).unwrap());
        assert_eq!(out, "\u{FFFD}a\u{FFFD}\u{FFFD}");
    }

    #[test]
    fn stream_works_for_the_char_tokenizer() {
        let tok = Tokenizer::Char(crate::CharTokenizer::from_text("月光 ok").unwrap());
        let ids = tok.encode("光月 ko").unwrap();
        let mut stream = tok.stream_decoder();
        let pieces: Vec<String> = ids.iter().map(|&id| stream.push(id).unwrap()).collect();
        assert_eq!(pieces, ["光", "月", " ", "k", "o"]);
        assert_eq!(stream.finish(), "");
    }

    #[test]
    fn out_of_range_ids_are_named() {
        let tok = Tokenizer::Bpe(Bpe::gpt2().unwrap());
        let mut stream = StreamDecoder::new(&tok);
        stream.push(50256).unwrap();
        let message = stream.push(50257).unwrap_err().to_string();
        assert!(message.contains("token id 50257 at position 1"), "{message}");
        let Tokenizer::Bpe(bpe) = &tok else { unreachable!() };
        let message = bpe.decode_bytes(&[1, 2, 99999]).unwrap_err().to_string();
        assert!(message.contains("token id 99999 at position 2"), "{message}");
    }
}
