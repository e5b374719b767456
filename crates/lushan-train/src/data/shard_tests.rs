//! Tests of the shard format: round trips and one test per way a file can be wrong.
#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report

use super::*;

/// Shard bytes with every header field chosen by the test, for corrupting one at a time.
fn raw(version: u32, width: u32, count: u64, description: &[u8], body: &[u8]) -> Vec<u8> {
    let mut bytes = SHARD_MAGIC.to_vec();
    bytes.extend_from_slice(&version.to_le_bytes());
    bytes.extend_from_slice(&width.to_le_bytes());
    bytes.extend_from_slice(&count.to_le_bytes());
    bytes.extend_from_slice(&(description.len() as u32).to_le_bytes());
    bytes.extend_from_slice(description);
    bytes.extend_from_slice(body);
    bytes
}

/// A valid u16 shard of ids 0..10 described as `char:10`.
fn valid() -> Vec<u8> {
    let body: Vec<u8> = (0u16..10).flat_map(|i| i.to_le_bytes()).collect();
    raw(1, 2, 10, b"char:10", &body)
}

/// Writes `bytes` to a temp file, opens it expecting an error, and checks the path is named.
fn open_err(bytes: &[u8], vocab_size: Option<usize>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.bin");
    std::fs::write(&path, bytes).unwrap();
    let message = Shard::open(&path, vocab_size).unwrap_err().to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    message
}

#[test]
fn round_trip_u16() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(TRAIN_SHARD);
    let tokens: Vec<u32> = (0..1000).map(|i| (i * 7) % 65).collect();
    write_shard(&path, &tokens, 65, "char:65").unwrap();
    let expected_size = FIXED_HEADER_LEN + "char:65".len() + 2 * tokens.len();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), expected_size as u64);
    let shard = Shard::open(&path, Some(65)).unwrap();
    assert_eq!((shard.len(), shard.token_width()), (1000, 2));
    assert_eq!(shard.description(), "char:65");
    assert!((0..1000).all(|i| shard.token(i).unwrap() == tokens[i]));
    let mut window = vec![0; 37];
    shard.copy_window(963, &mut window).unwrap();
    assert_eq!(window, tokens[963..]);
}

#[test]
fn round_trip_u32() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(VAL_SHARD);
    let tokens = vec![0, 65_535, 65_536, 69_999, 12_345, 1];
    write_shard(&path, &tokens, 70_000, "bpe:70000").unwrap();
    let shard = Shard::open(&path, Some(70_000)).unwrap();
    assert_eq!(shard.token_width(), 4);
    let mut all = vec![0; tokens.len()];
    shard.copy_window(0, &mut all).unwrap();
    assert_eq!(all, tokens);
    assert_eq!(shard.description(), "bpe:70000");
}

#[test]
fn width_switches_above_65536() {
    assert_eq!(token_width(65), 2);
    assert_eq!(token_width(65_536), 2);
    assert_eq!(token_width(65_537), 4);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge.bin");
    write_shard(&path, &[65_535, 0], 65_536, "x").unwrap();
    let shard = Shard::open(&path, Some(65_536)).unwrap();
    assert_eq!((shard.token_width(), shard.token(0).unwrap()), (2, 65_535));
}

#[test]
fn empty_shard_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.bin");
    write_shard(&path, &[], 65, "char:65").unwrap();
    let shard = Shard::open(&path, Some(65)).unwrap();
    assert!(shard.is_empty());
}

#[test]
fn valid_fixture_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.bin");
    std::fs::write(&path, valid()).unwrap();
    assert_eq!(Shard::open(&path, Some(10)).unwrap().token(9).unwrap(), 9);
}

#[test]
fn bad_magic_says_not_a_shard() {
    let message = open_err(b"First Citizen:\nBefore we proceed any further", None);
    assert!(message.contains("not a lushan token shard"), "{message}");
    assert!(message.contains("re-run `lushan prepare`"), "{message}");
    let message = open_err(b"", None);
    assert!(message.contains("not a lushan token shard"), "{message}");
}

#[test]
fn wrong_version_names_both_versions() {
    let message = open_err(&raw(2, 2, 0, b"", b""), None);
    assert!(message.contains("version 2"), "{message}");
    assert!(message.contains("reads version 1"), "{message}");
}

#[test]
fn bad_width_is_named() {
    let message = open_err(&raw(1, 3, 0, b"", b""), None);
    assert!(message.contains("width is 3 bytes"), "{message}");
}

#[test]
fn truncated_header_names_sizes() {
    let message = open_err(&valid()[..20], None);
    assert!(message.contains("needs 28 bytes but the file has 20"), "{message}");
    // The description length points past the end of the file.
    let message = open_err(&valid()[..30], None);
    assert!(message.contains("needs 35 bytes but the file has 30"), "{message}");
}

#[test]
fn description_must_be_utf8() {
    let message = open_err(&raw(1, 2, 0, b"char\xff", b""), None);
    assert!(message.contains("not valid UTF-8"), "{message}");
}

#[test]
fn truncated_body_names_expected_and_actual_bytes() {
    let bytes = valid();
    let message = open_err(&bytes[..bytes.len() - 1], None);
    assert!(message.contains("10 tokens × 2 bytes = 20 bytes but has 19 bytes"), "{message}");
    assert!(message.contains("truncated"), "{message}");
}

#[test]
fn trailing_bytes_name_expected_and_actual_bytes() {
    let mut bytes = valid();
    bytes.extend_from_slice(&[0, 0, 0]);
    let message = open_err(&bytes, None);
    assert!(message.contains("= 20 bytes but has 23 bytes"), "{message}");
}

#[test]
fn huge_count_does_not_overflow() {
    let message = open_err(&raw(1, 4, u64::MAX, b"", b"abcd"), None);
    assert!(message.contains("but has 4 bytes"), "{message}");
}

#[test]
fn ids_out_of_range_name_first_id_index_and_vocab() {
    let message = open_err(&valid(), Some(7));
    assert!(message.contains("token id 7 at index 7"), "{message}");
    assert!(message.contains("vocabulary of 7 tokens"), "{message}");
    let body: Vec<u8> = [5u32, 70_000, 80_000].iter().flat_map(|i| i.to_le_bytes()).collect();
    let message = open_err(&raw(1, 4, 3, b"", &body), Some(70_000));
    assert!(message.contains("token id 70000 at index 1"), "{message}");
}

#[test]
fn write_rejects_bad_ids_and_vocab() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.bin");
    let message = write_shard(&path, &[1, 2, 65], 65, "char:65").unwrap_err().to_string();
    assert!(message.contains("token id 65 at index 2"), "{message}");
    let message = write_shard(&path, &[], 0, "").unwrap_err().to_string();
    assert!(message.contains("`vocab_size` = 0"), "{message}");
    assert!(!path.exists());
}

#[test]
fn missing_shard_names_path_and_hint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train.bin");
    let message = Shard::open(&path, None).unwrap_err().to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("lushan prepare"), "{message}");
}

#[test]
#[should_panic(expected = "outside the shard")]
fn window_past_the_end_panics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.bin");
    std::fs::write(&path, valid()).unwrap();
    let shard = Shard::open(&path, None).unwrap();
    let _ = shard.copy_window(8, &mut [0; 3]);
}

#[test]
fn a_shard_cut_short_after_opening_is_a_named_error_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(TRAIN_SHARD);
    let tokens: Vec<u32> = (0..1000).map(|i| i % 65).collect();
    write_shard(&path, &tokens, 65, "char:65").unwrap();
    let shard = Shard::open(&path, Some(65)).unwrap();
    let mut window = [0; 16];
    shard.copy_window(900, &mut window).unwrap();
    let full = std::fs::metadata(&path).unwrap().len();
    std::fs::File::options().write(true).open(&path).unwrap().set_len(full / 2).unwrap();
    // Even a window still inside the shorter file is refused: the shard is no longer the one validated.
    for start in [0, 900] {
        let message = shard.copy_window(start, &mut window).unwrap_err().to_string();
        assert!(message.contains("changed while the run was reading it"), "{message}");
        assert!(message.contains(&format!("{full} bytes")) && message.contains("--resume"), "{message}");
    }
}

#[test]
fn ids_rewritten_in_place_out_of_range_are_refused_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.bin");
    std::fs::write(&path, valid()).unwrap();
    let shard = Shard::open(&path, Some(10)).unwrap();
    let mut bytes = valid();
    let last = bytes.len() - 2;
    bytes[last..].copy_from_slice(&500u16.to_le_bytes());
    std::fs::write(&path, bytes).unwrap(); // same length, same inode
    let message = shard.copy_window(0, &mut [0; 10]).unwrap_err().to_string();
    assert!(message.contains("token id 500 at index 9"), "{message}");
}

#[test]
fn open_for_refuses_another_tokenizers_shard_before_checking_ids() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.bin");
    std::fs::write(&path, valid()).unwrap();
    let tokenizer: lushan_tokenizer::Tokenizer = lushan_tokenizer::CharTokenizer::from_text("abc").unwrap().into();
    let message = Shard::open_for(&path, &tokenizer).unwrap_err().to_string();
    assert!(message.contains("vocabulary mismatch") && message.contains("char:10"), "{message}");
}
