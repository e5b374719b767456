#![allow(clippy::unwrap_used)] // tests may unwrap
//! GPT-2 BPE against tiktoken: exact ids on tinyshakespeare, a Unicode-heavy sample and edge cases
//! (fixtures written by `tools/make_tokenizer_fixtures.py`), byte-exact round trips, parallel == serial,
//! streaming decode, and the character classes of the pre-tokenizer on every code point.

use std::path::PathBuf;

use lushan_tokenizer::bpe::pretokenize::{CharClass, char_class};
use lushan_tokenizer::{Bpe, Tokenizer, utf8_text};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("gpt2_expected.json")).unwrap()).unwrap()
}

fn ids(value: &Value) -> Vec<u32> {
    value.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
}

fn shakespeare() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/tinyshakespeare.txt");
    std::fs::read_to_string(path).unwrap()
}

fn shakespeare_ids() -> Vec<u32> {
    let raw = std::fs::read(fixture("tinyshakespeare.gpt2.u16le")).unwrap();
    raw.chunks_exact(2).map(|c| u32::from(u16::from_le_bytes([c[0], c[1]]))).collect()
}

/// Index and values around the first difference, for a readable failure.
fn first_difference(ours: &[u32], theirs: &[u32]) -> String {
    let at = ours.iter().zip(theirs).position(|(a, b)| a != b).unwrap_or(ours.len().min(theirs.len()));
    let lo = at.saturating_sub(3);
    format!(
        "lengths {} vs {}; first difference at {at}: ours {:?} tiktoken {:?}",
        ours.len(),
        theirs.len(),
        &ours[lo..(at + 4).min(ours.len())],
        &theirs[lo..(at + 4).min(theirs.len())]
    )
}

fn assert_same(ours: &[u32], theirs: &[u32], what: &str) {
    assert!(ours == theirs, "{what}: {}", first_difference(ours, theirs));
}

#[test]
fn tinyshakespeare_matches_tiktoken_and_round_trips() {
    let bpe = Bpe::gpt2().unwrap();
    let text = shakespeare();
    let meta = &expected()["tinyshakespeare"];
    assert_eq!(text.len() as u64, meta["bytes"].as_u64().unwrap(), "data/tinyshakespeare.txt changed");
    let theirs = shakespeare_ids();
    assert_eq!(theirs.len() as u64, meta["tokens"].as_u64().unwrap());
    let ours = bpe.encode_ordinary(&text);
    assert_same(&ours, &theirs, "tinyshakespeare");
    assert_eq!(bpe.decode_bytes(&ours).unwrap(), text.as_bytes());
    assert_eq!(bpe.decode(&ours).unwrap(), text);
    // The file has no special-token text, so allowing special tokens changes nothing.
    assert_same(&bpe.encode_with_special(&text), &theirs, "tinyshakespeare with special");
}

#[test]
fn parallel_encoding_equals_serial_for_every_thread_count() {
    let bpe = Bpe::gpt2().unwrap();
    let text = shakespeare();
    let theirs = shakespeare_ids();
    for threads in [2, 3, 4, 7, 16, 64] {
        let chunks = lushan_tokenizer::bpe::parallel_chunks(&text, threads);
        assert!(chunks.len() > 1, "{threads} threads: the text should be split");
        assert_eq!(chunks.concat(), text);
        assert_same(&bpe.encode_parallel(&text, threads), &theirs, &format!("{threads} threads"));
        assert_same(&bpe.encode_with_special_parallel(&text, threads), &theirs, &format!("{threads} threads, special"));
    }
    // Paragraph chunks cut *before* each blank line, as tokenizer_bench.py does, through encode_batch.
    let paragraphs: Vec<String> =
        text.split("\n\n").enumerate().map(|(i, p)| if i == 0 { p.to_owned() } else { format!("\n\n{p}") }).collect();
    let refs: Vec<&str> = paragraphs.iter().map(String::as_str).collect();
    assert_same(&bpe.encode_batch(&refs, 2).concat(), &theirs, "paragraph batch");
    // Cutting *after* the blank line instead is exactly what must not happen: it changes the ids.
    let after: Vec<String> = text.split_inclusive("\n\n").map(str::to_owned).collect();
    let refs: Vec<&str> = after.iter().map(String::as_str).collect();
    assert_ne!(bpe.encode_batch(&refs, 2).concat(), theirs);
}

#[test]
fn unicode_sample_matches_tiktoken_and_round_trips() {
    let bpe = Bpe::gpt2().unwrap();
    let text = std::fs::read_to_string(fixture("unicode_sample.txt")).unwrap();
    let sample = &expected()["unicode_sample"];
    let ordinary = bpe.encode_ordinary(&text);
    assert_same(&ordinary, &ids(&sample["ordinary"]), "sample, ordinary");
    let special = bpe.encode_with_special(&text);
    assert_same(&special, &ids(&sample["special"]), "sample, special tokens allowed");
    assert!(special.contains(&50256) && !ordinary.contains(&50256));
    assert_eq!(bpe.decode_bytes(&ordinary).unwrap(), text.as_bytes());
    assert_eq!(bpe.decode_bytes(&special).unwrap(), text.as_bytes());
    for threads in [2, 5] {
        // The sample is small: parallel falls back to one chunk; repeat it to make it split.
        let big = text.repeat(100);
        assert_eq!(bpe.encode_parallel(&big, threads), bpe.encode_ordinary(&big));
    }
}

#[test]
fn edge_cases_match_tiktoken_and_round_trip() {
    let bpe = Bpe::gpt2().unwrap();
    let cases = expected()["edge_cases"].as_array().unwrap().clone();
    assert!(cases.len() > 100);
    for case in &cases {
        let text = case["text"].as_str().unwrap();
        let ordinary = bpe.encode_ordinary(text);
        assert_same(&ordinary, &ids(&case["ordinary"]), &format!("{text:?} ordinary"));
        let special = bpe.encode_with_special(text);
        assert_same(&special, &ids(&case["special"]), &format!("{text:?} special"));
        assert_eq!(bpe.decode_bytes(&ordinary).unwrap(), text.as_bytes(), "{text:?}");
        assert_eq!(bpe.decode_bytes(&special).unwrap(), text.as_bytes(), "{text:?}");
    }
}

#[test]
fn tokenizer_enum_treats_special_text_as_plain_unless_asked() {
    let tok = Tokenizer::gpt2().unwrap();
    assert_eq!(tok.vocab_size(), 50257);
    assert_eq!(tok.describe(), "gpt2-bpe:50257");
    assert_eq!(tok.end_of_text(), Some(50256));
    let text = "Hello<|endoftext|>";
    assert_eq!(tok.encode(text).unwrap(), [15496, 27, 91, 437, 1659, 5239, 91, 29]);
    assert_eq!(tok.encode_with_special(text).unwrap(), [15496, 50256]);
    assert_eq!(tok.decode(&[15496, 50256]).unwrap(), text);
    // A lone byte of a multi-byte character decodes lossily as text but exactly as bytes.
    let bpe = Bpe::gpt2().unwrap();
    let first_byte = bpe.token_id(&[0xE6]).unwrap();
    assert_eq!(tok.decode(&[first_byte]).unwrap(), "\u{FFFD}");
    assert_eq!(tok.decode_bytes(&[first_byte]).unwrap(), [0xE6]);
    let message = tok.decode(&[50257]).unwrap_err().to_string();
    assert!(message.contains("token id 50257") && message.contains("50257 tokens"), "{message}");
    // lushan-tokenizer.json names the built-in vocabulary instead of copying it.
    assert_eq!(tok.to_json(), r#"{"name":"gpt2","type":"bpe"}"#);
    assert_eq!(Tokenizer::from_json(&tok.to_json()).unwrap(), tok);
}

#[test]
fn invalid_utf8_input_is_rejected_with_its_offset() {
    assert_eq!(utf8_text(b"abc").unwrap(), "abc");
    let message = utf8_text(b"ok \xE6\x9C then \xFF").unwrap_err().to_string();
    assert!(message.contains("byte 3 (0xE6)"), "{message}");
    let message = utf8_text(b"caf\xE9").unwrap_err().to_string();
    assert!(message.contains("byte 3 (0xE9)"), "{message}");
}

#[test]
fn stream_decoder_never_emits_partial_characters() {
    let tok = Tokenizer::gpt2().unwrap();
    let text = std::fs::read_to_string(fixture("unicode_sample.txt")).unwrap();
    let ids = tok.encode(&text).unwrap();
    let mut stream = tok.stream_decoder();
    let mut out = String::new();
    let mut held_back = 0;
    for &id in &ids {
        let piece = stream.push(id).unwrap();
        assert!(!piece.contains('\u{FFFD}'), "emitted a replacement character for id {id}");
        if !stream.pending().is_empty() {
            held_back += 1;
        }
        out.push_str(&piece);
    }
    assert!(held_back > 20, "CJK and emoji should be split across tokens ({held_back} holds)");
    out.push_str(&stream.finish());
    assert_eq!(out, text);
}

#[test]
fn stream_decoder_equals_lossy_decoding_for_any_id_sequence() {
    let tok = Tokenizer::gpt2().unwrap();
    let mut state = 7u64;
    for _ in 0..200 {
        let ids: Vec<u32> = (0..20)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                // Mostly single-byte tokens (ids below 256), where characters get cut.
                (state >> 33) as u32 % if state & 1 == 0 { 256 } else { 50257 }
            })
            .collect();
        let mut stream = tok.stream_decoder();
        let mut out = String::new();
        for &id in &ids {
            out.push_str(&stream.push(id).unwrap());
        }
        out.push_str(&stream.finish());
        assert_eq!(out, String::from_utf8_lossy(&tok.decode_bytes(&ids).unwrap()), "{ids:?}");
    }
}

#[test]
fn char_classes_match_tiktoken_on_every_code_point() {
    let classes: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("tiktoken_classes.json")).unwrap()).unwrap();
    let mut expected = vec![CharClass::Other; 0x110000];
    for (key, class) in [("L", CharClass::Letter), ("N", CharClass::Number), ("S", CharClass::Space)] {
        for range in classes[key].as_array().unwrap() {
            let (lo, hi) = (range[0].as_u64().unwrap() as usize, range[1].as_u64().unwrap() as usize);
            expected[lo..=hi].fill(class);
        }
    }
    let mut wrong = Vec::new();
    for (code, &want) in expected.iter().enumerate() {
        if let Some(c) = char::from_u32(code as u32)
            && char_class(c) != want
        {
            wrong.push(format!("U+{code:04X}: ours {:?}, tiktoken {want:?}", char_class(c)));
        }
    }
    assert!(wrong.is_empty(), "{} code points differ, e.g. {:?}", wrong.len(), &wrong[..wrong.len().min(5)]);
}

/// tiktoken's `_byte_pair_merge`: rank the *concatenated bytes* of each adjacent pair by token id.
fn tiktoken_merge(bpe: &Bpe, piece: &[u8]) -> Vec<u32> {
    let mut parts: Vec<Vec<u8>> = piece.iter().map(|&b| vec![b]).collect();
    loop {
        let best = (0..parts.len().saturating_sub(1))
            .filter_map(|i| bpe.token_id(&[parts[i].as_slice(), parts[i + 1].as_slice()].concat()).map(|r| (r, i)))
            .min();
        let Some((_, i)) = best else { break };
        let right = parts.remove(i + 1);
        parts[i].extend(right);
    }
    parts.iter().map(|p| bpe.token_id(p).unwrap()).collect()
}

#[test]
fn merge_list_ranking_equals_tiktoken_ranking_on_gpt2() {
    let bpe = Bpe::gpt2().unwrap();
    // Every ordinary token, taken alone, merges back into itself (so tiktoken's shortcut of looking a whole
    // piece up first never changes a result).
    for id in 0..50256u32 {
        let bytes = bpe.token_bytes(id).unwrap();
        assert_eq!(bpe.merge_bytes(bytes), [id], "token {id} {:?}", String::from_utf8_lossy(bytes));
    }
    // Random concatenations of tokens: merge-list ranks and byte-concatenation ranks agree.
    let mut state = 99u64;
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    for _ in 0..3000 {
        let parts = 2 + next() % 3;
        let piece: Vec<u8> = (0..parts).flat_map(|_| bpe.token_bytes(next() % 50256).unwrap().to_vec()).collect();
        assert_eq!(bpe.merge_bytes(&piece), tiktoken_merge(&bpe, &piece), "{:?}", String::from_utf8_lossy(&piece));
    }
}

#[test]
fn long_runs_of_one_character_are_one_piece_and_round_trip() {
    let bpe = Bpe::gpt2().unwrap();
    for unit in ["a", " ", "\n", "é", "🙂", "!"] {
        let text = unit.repeat(100_000);
        let ids = bpe.encode_ordinary(&text);
        assert_eq!(bpe.decode_bytes(&ids).unwrap(), text.as_bytes(), "{unit:?}");
        // The heap merge agrees with tiktoken's loop (the fixture's 5000 × "a" is checked exactly above).
        let short = unit.repeat(300);
        assert_eq!(bpe.encode_ordinary(&short), tiktoken_merge(&bpe, short.as_bytes()), "{unit:?}");
    }
    assert_eq!(utf8_text("x".as_bytes()).unwrap(), "x");
}
