//! Ids and numbers into the printed entries of an [`Explanation`](super::Explanation): each entry carries
//! the token's decoded text next to its id.

use super::ranking::Ranked;
use super::{Candidate, TokenText};

/// The caller's id → text function (a tokenizer's decode of one id).
pub(super) type TokenTextFn<'a> = &'a dyn Fn(u32) -> String;

impl Ranked {
    /// The printed form of a ranked probability: the token's text, the probability as f32.
    pub fn candidate(&self, token_text: TokenTextFn) -> Candidate {
        Candidate { id: self.id, text: token_text(self.id), prob: self.value as f32, rank: self.rank }
    }
}

pub(super) fn token(id: u32, token_text: TokenTextFn) -> TokenText {
    TokenText { id, text: token_text(id) }
}
