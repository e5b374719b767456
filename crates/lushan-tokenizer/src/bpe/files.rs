//! Vocabulary files: GPT-2's `encoder.json` + `vocab.bpe`, Hugging Face's `vocab.json` + `merges.txt` and
//! `tokenizer.json` (see `hf_json`), and lushan's own `lushan-tokenizer.json`.
//!
//! All of them spell tokens with GPT-2's byte ↔ character map ([`super::bytes`]). `encoder.json` and
//! `vocab.json` are the same format (token → id), and so are `vocab.bpe` and `merges.txt` (one merge
//! `left right` per line, an optional `#version: …` first line, blank lines ignored).
//!
//! Loading is strict: malformed JSON, a token or id that appears twice, ids with a gap, a merge naming a
//! token that is not in the vocabulary or making one that is not, a merge listed twice, and a missing
//! single-byte token are errors naming the file, line and token. A vocabulary entry that is neither a
//! single byte nor made by any merge is accepted only if it looks like a special token (`<…>` or `[…]`,
//! e.g. GPT-2's `<|endoftext|>`): it becomes a special token, matched only by
//! [`Bpe::encode_with_special`]. Anything else unreachable means the merges file is truncated or belongs
//! to another vocabulary, and is reported as such.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

use super::bytes::{string_to_token, token_to_string};
use super::{BPE_TYPE, Bpe, BpeParts, END_OF_TEXT};
use crate::error::{Result, TokenizerError, VocabError, json_kind};

/// Hugging Face's file names.
pub const VOCAB_JSON: &str = "vocab.json";
pub const MERGES_TXT: &str = "merges.txt";
pub const TOKENIZER_JSON: &str = "tokenizer.json";
pub const TOKENIZER_CONFIG_JSON: &str = "tokenizer_config.json";
/// GPT-2's original file names.
pub const ENCODER_JSON: &str = "encoder.json";
pub const VOCAB_BPE: &str = "vocab.bpe";

/// The header line Hugging Face and OpenAI write at the top of a merges file.
const MERGES_HEADER: &str = "#version: 0.2";

/// Token → id entries of a JSON object in file order, keeping repeated keys (which `serde_json::Map` would
/// silently collapse) so they can be reported.
pub(super) struct OrderedEntries(pub Vec<(String, Value)>);

impl<'de> Deserialize<'de> for OrderedEntries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = OrderedEntries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object mapping tokens to ids")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<OrderedEntries, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    entries.push(entry);
                }
                Ok(OrderedEntries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor)
    }
}

/// A vocabulary read from a token → id object: token strings by id.
pub(super) struct StringVocab {
    pub by_id: Vec<String>,
    pub ids: HashMap<String, u32>,
}

/// Checks token → id entries: ids are integers, no token or id repeats, ids run `0..n`.
pub(super) fn string_vocab(entries: Vec<(String, Value)>, file: &str) -> Result<StringVocab> {
    if entries.is_empty() {
        return Err(VocabError::BpeVocabSize { file: file.to_owned(), size: 0 }.into());
    }
    let mut ids: HashMap<String, u32> = HashMap::with_capacity(entries.len());
    let size = entries.len();
    let mut by_id: Vec<Option<String>> = vec![None; size];
    for (token, value) in entries {
        let id = value.as_u64().filter(|&id| id <= u64::from(u32::MAX)).ok_or_else(|| VocabError::VocabBadId {
            file: file.to_owned(),
            token: token.clone(),
            found: value.to_string(),
        })?;
        if let Some(&first) = ids.get(&token) {
            return Err(VocabError::DuplicateToken {
                file: file.to_owned(),
                token,
                first: u64::from(first),
                second: id,
            }
            .into());
        }
        let slot =
            by_id.get_mut(id as usize).ok_or_else(|| VocabError::VocabIdGap { file: file.to_owned(), id, size })?;
        if let Some(first) = slot.replace(token.clone()) {
            return Err(VocabError::DuplicateId { file: file.to_owned(), id, first, second: token }.into());
        }
        ids.insert(token, id as u32);
    }
    // n entries with distinct ids all below n: no gaps.
    let by_id = by_id.into_iter().flatten().collect();
    Ok(StringVocab { by_id, ids })
}

/// One merge given as its two token strings, looked up in `vocab`.
pub(super) fn merge_ids(
    left: &str,
    right: &str,
    vocab: &StringVocab,
    location: &dyn Fn() -> String,
) -> Result<(u32, u32)> {
    let id = |token: &str| {
        vocab
            .ids
            .get(token)
            .copied()
            .ok_or_else(|| VocabError::MergeUnknownToken { location: location(), token: token.to_owned() })
    };
    Ok((id(left)?, id(right)?))
}

/// Splits a `left right` merge line.
pub(super) fn split_merge_line<'l>(line: &'l str, location: &dyn Fn() -> String) -> Result<(&'l str, &'l str)> {
    match line.split_once(' ') {
        Some((left, right)) if !left.is_empty() && !right.is_empty() && !right.contains(' ') => Ok((left, right)),
        _ => Err(VocabError::MergeSyntax { location: location(), text: line.to_owned() }.into()),
    }
}

/// Merges as (left id, right id), and the line number of each.
type MergesWithLines = (Vec<(u32, u32)>, Vec<usize>);

/// Reads a merges file (`vocab.bpe` / `merges.txt`).
fn parse_merges_txt(text: &[u8], vocab: &StringVocab, file: &str) -> Result<MergesWithLines> {
    let text = std::str::from_utf8(text)
        .map_err(|e| TokenizerError::FileNotUtf8 { file: file.to_owned(), offset: e.valid_up_to() })?;
    let mut merges = Vec::new();
    let mut lines = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if line.is_empty() || line.starts_with("#version") {
            continue;
        }
        let location = || format!("{file} line {number}");
        let (left, right) = split_merge_line(line, &location)?;
        merges.push(merge_ids(left, right, vocab, &location)?);
        lines.push(number);
    }
    Ok((merges, lines))
}

/// Builds the [`BpeParts`] of a string vocabulary and its merges: decodes byte-level token strings and
/// decides which entries are special (see the module comment). `added` are ids declared special by the
/// file itself (`tokenizer.json`'s `added_tokens`).
pub(super) fn parts_from_strings(
    vocab: StringVocab,
    merges: Vec<(u32, u32)>,
    merge_lines: Vec<usize>,
    added: &[u32],
    vocab_file: &str,
    merges_file: &str,
) -> Result<BpeParts> {
    let n = vocab.by_id.len();
    let mut reachable = vec![false; n];
    for (id, token) in vocab.by_id.iter().enumerate() {
        let mut chars = token.chars();
        if let (Some(c), None) = (chars.next(), chars.next()) {
            reachable[id] = super::bytes::char_to_byte(c).is_some();
        }
    }
    // A merge's result is the concatenation of its two strings (the byte map is one character per byte).
    let mut concat = String::new();
    for (index, &(left, right)) in merges.iter().enumerate() {
        concat.clear();
        concat.push_str(&vocab.by_id[left as usize]);
        concat.push_str(&vocab.by_id[right as usize]);
        match vocab.ids.get(&concat) {
            Some(&merged) => reachable[merged as usize] = true,
            None => {
                let location = match merge_lines.get(index) {
                    Some(line) => format!("{merges_file} line {line}"),
                    None => format!("{merges_file} merge {index}"),
                };
                return Err(VocabError::MergeResultMissing {
                    location,
                    left: vocab.by_id[left as usize].clone(),
                    right: vocab.by_id[right as usize].clone(),
                    merged: concat,
                }
                .into());
            }
        }
    }
    let mut specials: Vec<u32> = added.to_vec();
    let mut tokens = Vec::with_capacity(n);
    for (id, token) in vocab.by_id.into_iter().enumerate() {
        let declared = added.contains(&(id as u32));
        if declared || !reachable[id] {
            let looks_special =
                (token.starts_with('<') && token.ends_with('>')) || (token.starts_with('[') && token.ends_with(']'));
            if !declared && !looks_special {
                return Err(VocabError::UnreachableToken {
                    file: vocab_file.to_owned(),
                    merges_file: merges_file.to_owned(),
                    token,
                    id,
                }
                .into());
            }
            if !declared {
                specials.push(id as u32);
            }
            tokens.push(token.into_bytes());
        } else {
            let bytes = string_to_token(&token).map_err(|ch| VocabError::NotByteLevel {
                file: vocab_file.to_owned(),
                token: token.clone(),
                ch,
            })?;
            tokens.push(bytes);
        }
    }
    Ok(BpeParts { tokens, merges, merge_lines, specials, source: merges_file.to_owned() })
}

/// Parses a token → id JSON object, keeping repeats for the error message.
pub(super) fn parse_vocab_json(text: &[u8], file: &str) -> Result<StringVocab> {
    let entries: OrderedEntries =
        serde_json::from_slice(text).map_err(|source| TokenizerError::FileJson { file: file.to_owned(), source })?;
    string_vocab(entries.0, file)
}

/// GPT-2's `encoder.json` + `vocab.bpe` (or Hugging Face's `vocab.json` + `merges.txt`: the same formats),
/// given as file contents; `source` names them in errors.
pub fn from_encoder_and_vocab_bpe(encoder_json: &[u8], vocab_bpe: &[u8], source: &str) -> Result<Bpe> {
    let vocab_file = format!("{source} {ENCODER_JSON}");
    let merges_file = format!("{source} {VOCAB_BPE}");
    from_vocab_and_merges_bytes(encoder_json, vocab_bpe, &vocab_file, &merges_file)
}

fn from_vocab_and_merges_bytes(vocab: &[u8], merges: &[u8], vocab_file: &str, merges_file: &str) -> Result<Bpe> {
    let vocab = parse_vocab_json(vocab, vocab_file)?;
    let (merges, lines) = parse_merges_txt(merges, &vocab, merges_file)?;
    Bpe::from_parts(parts_from_strings(vocab, merges, lines, &[], vocab_file, merges_file)?)
}

/// Reads a vocabulary file, refusing anything but a regular file (a FIFO would block forever).
pub(crate) fn read(path: &Path) -> Result<Vec<u8>> {
    lushan_fs::read_regular(path).map_err(|source| TokenizerError::Io { path: path.to_owned(), source })
}

impl Bpe {
    /// Reads a token → id JSON file (`vocab.json` / `encoder.json`) and a merges file (`merges.txt` /
    /// `vocab.bpe`).
    pub fn from_vocab_and_merges(vocab_json: &Path, merges_txt: &Path) -> Result<Self> {
        let vocab = read(vocab_json)?;
        let merges = read(merges_txt)?;
        from_vocab_and_merges_bytes(
            &vocab,
            &merges,
            &vocab_json.display().to_string(),
            &merges_txt.display().to_string(),
        )
    }

    /// Reads a BPE tokenizer from a directory holding, in this order of preference, `tokenizer.json`,
    /// `vocab.json` + `merges.txt`, or `encoder.json` + `vocab.bpe`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        // `exists`, not `is_file`: a FIFO or directory under one of these names is refused by name when read.
        let tokenizer_json = dir.join(TOKENIZER_JSON);
        if tokenizer_json.exists() {
            return Self::from_tokenizer_json_file(&tokenizer_json);
        }
        for (vocab, merges) in [(VOCAB_JSON, MERGES_TXT), (ENCODER_JSON, VOCAB_BPE)] {
            let (vocab, merges) = (dir.join(vocab), dir.join(merges));
            if vocab.exists() || merges.exists() {
                return Self::from_vocab_and_merges(&vocab, &merges);
            }
        }
        Err(TokenizerError::NoTokenizerFiles { dir: dir.to_owned() })
    }

    /// Reads Hugging Face's `tokenizer.json` (the GPT-2 subset: see `hf_json`).
    pub fn from_tokenizer_json_file(path: &Path) -> Result<Self> {
        let text = read(path)?;
        super::hf_json::parse(&text, &path.display().to_string())
    }

    /// The merges file's text: the `#version: 0.2` header, then one `left right` line per merge.
    pub fn merges_txt(&self) -> String {
        let mut text = String::with_capacity(self.merges().len() * 12 + 16);
        text.push_str(MERGES_HEADER);
        text.push('\n');
        for &(left, right) in self.merges() {
            let _ = writeln!(text, "{} {}", self.token_string(left), self.token_string(right));
        }
        text
    }

    /// The `vocab.json` text: every token → id, in id order.
    pub fn vocab_json(&self) -> String {
        let mut text = String::with_capacity(self.vocab_size() * 16);
        text.push('{');
        for id in 0..self.vocab_size() as u32 {
            if id > 0 {
                text.push(',');
            }
            let _ = write!(text, "{}:{id}", Value::String(self.token_string(id)));
        }
        text.push('}');
        text
    }

    /// A token as vocabulary files spell it: byte-level for ordinary tokens, the text for special ones.
    pub fn token_string(&self, id: u32) -> String {
        if let Some((text, _)) = self.special_tokens().iter().find(|&&(_, s)| s == id) {
            return text.clone();
        }
        self.token_bytes(id).map(token_to_string).unwrap_or_default()
    }

    /// Writes `vocab.json`, `merges.txt`, `tokenizer.json` and `tokenizer_config.json` into `dir` (created
    /// if needed), which `transformers`' `AutoTokenizer.from_pretrained(dir)` loads as a GPT-2 tokenizer.
    /// Returns the paths written.
    pub fn write_hf_files(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).map_err(|source| TokenizerError::Write { path: dir.to_owned(), source })?;
        let files = [
            (VOCAB_JSON, self.vocab_json()),
            (MERGES_TXT, self.merges_txt()),
            (TOKENIZER_JSON, super::hf_json::to_string(self)),
            (TOKENIZER_CONFIG_JSON, self.tokenizer_config_json()),
        ];
        let mut written = Vec::with_capacity(files.len());
        for (name, text) in files {
            let path = dir.join(name);
            write_file(&path, text.as_bytes())?;
            written.push(path);
        }
        Ok(written)
    }

    /// `tokenizer_config.json`: tells `AutoTokenizer` the class, and the end-of-text token if there is one.
    fn tokenizer_config_json(&self) -> String {
        let mut config = Map::new();
        config.insert("tokenizer_class".into(), Value::String("GPT2Tokenizer".into()));
        config.insert("add_prefix_space".into(), Value::Bool(false));
        if self.special_id(END_OF_TEXT).is_some() {
            for key in ["bos_token", "eos_token", "unk_token"] {
                config.insert(key.into(), Value::String(END_OF_TEXT.into()));
            }
        }
        config.insert("errors".into(), Value::String("replace".into()));
        format!("{:#}\n", Value::Object(config))
    }

    /// The `lushan-tokenizer.json` form: `{"type":"bpe","name":"gpt2"}` for GPT-2 (the bundled files), else
    /// `{"type":"bpe","vocab":[…],"merges":["left right",…],"special_tokens":[{"id":…,"content":…}]}` with
    /// the vocabulary as a list in id order.
    pub fn to_json(&self) -> String {
        let mut object = Map::new();
        object.insert("type".into(), Value::String(BPE_TYPE.into()));
        if self.is_gpt2() {
            object.insert("name".into(), Value::String("gpt2".into()));
        } else {
            let vocab = (0..self.vocab_size() as u32).map(|id| Value::String(self.token_string(id))).collect();
            object.insert("vocab".into(), Value::Array(vocab));
            let merges = self
                .merges()
                .iter()
                .map(|&(l, r)| Value::String(format!("{} {}", self.token_string(l), self.token_string(r))))
                .collect();
            object.insert("merges".into(), Value::Array(merges));
            let specials = self
                .special_tokens()
                .iter()
                .map(|(text, id)| {
                    let mut s = Map::new();
                    s.insert("id".into(), Value::from(*id));
                    s.insert("content".into(), Value::String(text.clone()));
                    Value::Object(s)
                })
                .collect();
            object.insert("special_tokens".into(), Value::Array(specials));
        }
        Value::Object(object).to_string()
    }

    /// Reads the `lushan-tokenizer.json` form written by [`Bpe::to_json`] (already parsed; `"type"` checked).
    pub(crate) fn from_value(value: &Value) -> Result<Self> {
        const FILE: &str = "lushan-tokenizer.json";
        let object = value.as_object().ok_or(TokenizerError::NotAnObject { found: json_kind(value) })?;
        if let Some(field) =
            object.keys().find(|k| !["type", "name", "vocab", "merges", "special_tokens"].contains(&k.as_str()))
        {
            return Err(TokenizerError::BpeUnknownField { field: field.clone() });
        }
        if let Some(name) = object.get("name") {
            return match name.as_str() {
                Some("gpt2") if !object.contains_key("vocab") => Self::gpt2(),
                Some("gpt2") => Err(TokenizerError::BpeNameAndVocab),
                Some(other) => Err(TokenizerError::UnknownBpeName { found: other.to_owned() }),
                None => Err(TokenizerError::FieldType { field: "name", expected: "a string", found: json_kind(name) }),
            };
        }
        let array = |field: &'static str, expected: &'static str| -> Result<&Vec<Value>> {
            let v = object.get(field).ok_or(TokenizerError::MissingField { field })?;
            v.as_array().ok_or(TokenizerError::FieldType { field, expected, found: json_kind(v) })
        };
        let vocab = array("vocab", "an array of token strings")?;
        let merges = array("merges", "an array of \"left right\" strings")?;
        let specials = match object.get("special_tokens") {
            Some(_) => array("special_tokens", "an array of {\"id\":…,\"content\":…} objects")?.as_slice(),
            None => &[],
        };
        let mut entries = Vec::with_capacity(vocab.len());
        for (id, token) in vocab.iter().enumerate() {
            let token = token.as_str().ok_or(TokenizerError::FieldType {
                field: "vocab",
                expected: "an array of token strings",
                found: json_kind(token),
            })?;
            entries.push((token.to_owned(), Value::from(id)));
        }
        let vocab = string_vocab(entries, FILE)?;
        let mut added = Vec::with_capacity(specials.len());
        for special in specials {
            let id = special.get("id").and_then(Value::as_u64);
            let content = special.get("content").and_then(Value::as_str);
            match (id, content) {
                (Some(id), Some(content)) if vocab.by_id.get(id as usize).is_some_and(|t| t == content) => {
                    added.push(id as u32);
                }
                _ => {
                    return Err(
                        VocabError::BadSpecialEntry { file: FILE.to_owned(), entry: special.to_string() }.into()
                    );
                }
            }
        }
        let mut pairs = Vec::with_capacity(merges.len());
        for (index, merge) in merges.iter().enumerate() {
            let location = || format!("{FILE} merge {index}");
            let line = merge
                .as_str()
                .ok_or_else(|| VocabError::MergeSyntax { location: location(), text: merge.to_string() })?;
            let (left, right) = split_merge_line(line, &location)?;
            pairs.push(merge_ids(left, right, &vocab, &location)?);
        }
        Bpe::from_parts(parts_from_strings(vocab, pairs, Vec::new(), &added, FILE, FILE)?)
    }
}

/// Writes a file crash-safely (see [`lushan_fs::atomic_write`]): a reader never sees half a vocabulary.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    lushan_fs::atomic_write(path, bytes).map_err(|source| TokenizerError::Write { path: path.to_owned(), source })
}
