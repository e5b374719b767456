#![allow(clippy::unwrap_used)] // tests may unwrap
//! BPE training: deterministic, reaches the requested size (or reports stopping early), round-trips its
//! corpus, breaks ties by bytes, and encodes its training words the way training segmented them.

use std::path::PathBuf;
use std::time::Instant;

use lushan_tokenizer::{Bpe, BpeTrainer, END_OF_TEXT, TokenizerError, TrainOptions};

fn shakespeare() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/tinyshakespeare.txt");
    std::fs::read_to_string(path).unwrap()
}

fn train(texts: &[&str], options: &TrainOptions) -> (Bpe, lushan_tokenizer::TrainReport) {
    let mut trainer = BpeTrainer::new();
    for text in texts {
        trainer.add_text(text);
    }
    trainer.train(options).unwrap()
}

#[test]
fn shakespeare_to_8192_is_deterministic_fast_and_round_trips() {
    let text = shakespeare();
    let start = Instant::now();
    let (bpe, report) = train(&[&text], &TrainOptions::new(8192));
    let seconds = start.elapsed().as_secs_f64();
    assert!(seconds < 30.0, "training took {seconds:.1} s");
    assert_eq!(bpe.vocab_size(), 8192);
    assert_eq!(report.vocab_size, 8192);
    assert!(!report.stopped_early);
    assert_eq!(report.merges, 8192 - 256 - 1);
    assert_eq!(report.corpus_bytes, text.len() as u64);
    assert_eq!(bpe.special_id(END_OF_TEXT), Some(8191));

    // The same corpus gives the same merges, split across two texts or not.
    let (mid, _) = text.char_indices().find(|&(i, c)| i > text.len() / 2 && c == '\n').unwrap();
    let (again, _) = train(&[&text[..mid], &text[mid..]], &TrainOptions::new(8192));
    assert_eq!(again.merges(), bpe.merges());
    assert_eq!(again.fingerprint(), bpe.fingerprint());

    let ids = bpe.encode_ordinary(&text);
    assert_eq!(bpe.decode_bytes(&ids).unwrap(), text.as_bytes());
    assert!(ids.len() * 3 < text.len(), "{} ids for {} bytes", ids.len(), text.len());
    // The first merges of English text with GPT-2's pre-tokenization.
    let first: Vec<String> = bpe.merges()[..3]
        .iter()
        .map(|&(l, r)| {
            String::from_utf8_lossy(&[bpe.token_bytes(l).unwrap(), bpe.token_bytes(r).unwrap()].concat()).into_owned()
        })
        .collect();
    assert!(
        first.contains(&" t".to_owned()) || first.contains(&"e ".to_owned()) || first.contains(&"th".to_owned()),
        "{first:?}"
    );
    assert_eq!(bpe.encode_parallel(&text, 3), ids);
}

#[test]
fn encoding_a_training_word_reproduces_the_training_merges() {
    let text = shakespeare();
    let (bpe, _) = train(&[&text[..200_000]], &TrainOptions::new(2000));
    // Frequent words end up as single tokens.
    for word in [" the", " and", "First", " Citizen", " you"] {
        let ids = bpe.encode_ordinary(word);
        assert_eq!(ids.len(), 1, "{word:?} -> {ids:?}");
        assert_eq!(bpe.token_bytes(ids[0]).unwrap(), word.as_bytes());
    }
    // Every merged token, encoded alone, comes back as itself.
    for id in 256..(bpe.vocab_size() - 1) as u32 {
        assert_eq!(bpe.merge_bytes(bpe.token_bytes(id).unwrap()), [id], "token {id}");
    }
}

#[test]
fn ties_go_to_the_smallest_bytes() {
    // Each pair occurs once; with min_frequency 1 the first merge is the smallest (left, right) bytes:
    // (" ", "c") < ("a", "b") < ("c", "d").
    let options = TrainOptions { vocab_size: 256 + 1 + 1, min_frequency: 1, special_tokens: vec![END_OF_TEXT.into()] };
    let (bpe, _) = train(&["ab cd"], &options);
    let (l, r) = bpe.merges()[0];
    assert_eq!((bpe.token_bytes(l).unwrap(), bpe.token_bytes(r).unwrap()), (&b" "[..], &b"c"[..]));
    // Counts beat bytes: ("c", "d") three times wins over (" ", "c") twice.
    let (bpe, _) = train(&["ab cd cdcd"], &options);
    let (l, r) = bpe.merges()[0];
    assert_eq!((bpe.token_bytes(l).unwrap(), bpe.token_bytes(r).unwrap()), (&b"c"[..], &b"d"[..]));
}

#[test]
fn small_corpus_stops_early_and_says_so() {
    let (bpe, report) = train(&["abab abab abab"], &TrainOptions::new(1000));
    assert!(report.stopped_early);
    assert!(bpe.vocab_size() < 300, "{}", bpe.vocab_size());
    assert_eq!(report.vocab_size, bpe.vocab_size());
    assert_eq!(report.requested_vocab_size, 1000);
    assert_eq!(bpe.encode_ordinary("abab"), [bpe.token_id(b"abab").unwrap()]);
    assert_eq!(bpe.decode(&bpe.encode_ordinary("abab abab xyz")).unwrap(), "abab abab xyz");
}

#[test]
fn repeated_characters_merge_without_overlap() {
    let options = TrainOptions { vocab_size: 256 + 3 + 1, min_frequency: 1, special_tokens: vec![END_OF_TEXT.into()] };
    let (bpe, _) = train(&["aaaaaaa"], &options);
    // "aaaaaaa" (7): (a,a) ×3 left to right → aa aa aa a; (aa,aa) twice → aaaa aa a; then (aaaa,aa) and
    // (aa,a) are tied at one each, and "aa" < "aaaa" picks (aa,a).
    let merged: Vec<&[u8]> = (256..259).map(|id| bpe.token_bytes(id).unwrap()).collect();
    assert_eq!(merged, [&b"aa"[..], b"aaaa", b"aaa"]);
    let ids = bpe.encode_ordinary("aaaaaaa");
    assert_eq!(ids, [257, 258]);
}

#[test]
fn bad_options_are_errors() {
    let mut trainer = BpeTrainer::new();
    trainer.add_text("hello");
    let err = trainer.train(&TrainOptions::new(100)).unwrap_err();
    assert!(matches!(err, TokenizerError::VocabSizeOutOfRange { requested: 100, minimum: 257, .. }), "{err}");
    assert!(err.to_string().contains("at least 257"), "{err}");
    let err = BpeTrainer::new().train(&TrainOptions::new(1000)).unwrap_err();
    assert!(err.to_string().contains("empty corpus"), "{err}");
}
