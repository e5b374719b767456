//! Reading task records from JSON Lines and CSV files, with errors that name the file, the line and the
//! field.
//!
//! Both readers bound the memory one line can take ([`MAX_LINE_BYTES`]), so a file that is not line-based
//! (a multi-gigabyte single line) is refused before it is buffered whole.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use lushan_tokenizer::chat::Message;
use serde_json::{Map, Value};

use crate::error::{Result, TrainError};

/// The longest line (one record) a task file may have: 16 MiB, far above any real example (the spam
/// e-mails are capped at 3 000 characters) and small enough that a wrong file cannot exhaust memory.
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// One record and the 1-based line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located<T> {
    pub line: usize,
    pub value: T,
}

/// The records of one file; `path` is kept for error messages about them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordFile<T> {
    pub path: PathBuf,
    pub records: Vec<Located<T>>,
}

/// A classification record: `{"text": …, "label": …}` or a CSV row with `text,label` columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabeledText {
    pub text: String,
    pub label: String,
}

/// The three shapes of supervised fine-tuning records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SftRecord {
    /// `{"text": …}`: every token is trained.
    Text(String),
    /// `{"prompt": …, "completion": …}`: only the completion is trained.
    PromptCompletion { prompt: String, completion: String },
    /// `{"messages": [{"role": …, "content": …}, …]}`: only the assistant replies are trained.
    Messages(Vec<Message>),
}

const CLASSIFY_EXAMPLE: &str = r#"{"text": "…", "label": "spam"}"#;
const SFT_EXAMPLE: &str = r#"{"prompt": "…", "completion": "…"}"#;

/// Whether a path names a CSV file (by its extension, any case).
pub fn is_csv(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("csv"))
}

/// Reads classification records: CSV when the file name ends in `.csv`, JSON Lines otherwise.
pub fn read_labeled(path: &Path) -> Result<RecordFile<LabeledText>> {
    let file = if is_csv(path) {
        read_csv(path)?
    } else {
        read_jsonl(path, CLASSIFY_EXAMPLE, |fields| {
            Ok(LabeledText {
                text: fields.text("text", CLASSIFY_EXAMPLE)?,
                label: fields.text("label", CLASSIFY_EXAMPLE)?,
            })
        })?
    };
    non_empty(file, "expected classification records such as {\"text\": \"…\", \"label\": \"spam\"}")
}

/// Reads SFT records from JSON Lines (CSV cannot hold conversations, so it is refused).
pub fn read_sft(path: &Path) -> Result<RecordFile<SftRecord>> {
    if is_csv(path) {
        return Err(TrainError::TaskFormat {
            path: path.to_path_buf(),
            task: "sft",
            expected: "JSON Lines (one {\"text\"}, {\"prompt\", \"completion\"} or {\"messages\"} object per line), \
                       not CSV",
        });
    }
    let file = read_jsonl(path, SFT_EXAMPLE, sft_record)?;
    non_empty(file, "expected SFT records such as {\"prompt\": \"…\", \"completion\": \"…\"}")
}

fn non_empty<T>(file: RecordFile<T>, expected: &'static str) -> Result<RecordFile<T>> {
    if file.records.is_empty() {
        return Err(TrainError::TaskNoRecords { path: file.path, expected });
    }
    Ok(file)
}

fn sft_record(fields: &Fields<'_>) -> Result<SftRecord> {
    let present: Vec<&str> =
        ["text", "prompt", "completion", "messages"].into_iter().filter(|f| fields.map.contains_key(*f)).collect();
    match present.as_slice() {
        ["text"] => Ok(SftRecord::Text(fields.text("text", SFT_EXAMPLE)?)),
        ["messages"] => fields.messages().map(SftRecord::Messages),
        ["prompt", "completion"] => Ok(SftRecord::PromptCompletion {
            prompt: fields.text("prompt", SFT_EXAMPLE)?,
            completion: fields.text("completion", SFT_EXAMPLE)?,
        }),
        ["prompt"] => Err(fields.missing("completion", "a \"completion\" beside the \"prompt\"")),
        ["completion"] => Err(fields.missing("prompt", "a \"prompt\" beside the \"completion\"")),
        [] => Err(TrainError::TaskRecordShape {
            path: fields.path.to_path_buf(),
            line: fields.line,
            fields: "none of these fields".to_owned(),
        }),
        several => Err(TrainError::TaskRecordShape {
            path: fields.path.to_path_buf(),
            line: fields.line,
            fields: format!("fields {}", several.iter().map(|f| format!("\"{f}\"")).collect::<Vec<_>>().join(", ")),
        }),
    }
}

/// The fields of one JSON object, with the file and line to blame.
pub struct Fields<'a> {
    path: &'a Path,
    line: usize,
    map: &'a Map<String, Value>,
}

impl Fields<'_> {
    fn missing(&self, field: &str, expected: &'static str) -> TrainError {
        TrainError::TaskMissingField {
            path: self.path.to_path_buf(),
            line: self.line,
            field: field.to_owned(),
            expected,
        }
    }

    /// A required, non-empty string field.
    fn text(&self, field: &str, example: &'static str) -> Result<String> {
        let value = self.map.get(field).ok_or_else(|| self.missing(field, example))?;
        self.string_value(field, value)
    }

    fn string_value(&self, field: &str, value: &Value) -> Result<String> {
        let Value::String(text) = value else {
            return Err(TrainError::TaskFieldType {
                path: self.path.to_path_buf(),
                line: self.line,
                field: field.to_owned(),
                expected: "a string",
                found: json_kind(value),
            });
        };
        // Whitespace alone has nothing to learn from and is almost always a broken export.
        if text.trim().is_empty() {
            return Err(TrainError::TaskEmptyField {
                path: self.path.to_path_buf(),
                line: self.line,
                field: field.to_owned(),
            });
        }
        Ok(text.clone())
    }

    /// `messages`: an array of `{"role", "content"}` objects; the turn order is checked by the SFT builder.
    fn messages(&self) -> Result<Vec<Message>> {
        let value = self.map.get("messages").ok_or_else(|| self.missing("messages", SFT_EXAMPLE))?;
        let type_error = |field: String, expected, found| TrainError::TaskFieldType {
            path: self.path.to_path_buf(),
            line: self.line,
            field,
            expected,
            found,
        };
        let Value::Array(items) = value else {
            return Err(type_error(
                "messages".to_owned(),
                "an array of {\"role\", \"content\"} objects",
                json_kind(value),
            ));
        };
        let mut messages = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let Value::Object(message) = item else {
                return Err(type_error(
                    format!("messages[{index}]"),
                    "a {\"role\", \"content\"} object",
                    json_kind(item),
                ));
            };
            let get = |name: &str| {
                let field = format!("messages[{index}].{name}");
                message.get(name).ok_or_else(|| self.missing(&field, "every message to have \"role\" and \"content\""))
            };
            let role_field = format!("messages[{index}].role");
            let role_value = get("role")?;
            let Value::String(role_name) = role_value else {
                return Err(type_error(role_field, "a string", json_kind(role_value)));
            };
            let role = role_name.parse().map_err(|source| TrainError::TaskChat {
                path: self.path.to_path_buf(),
                line: self.line,
                field: role_field,
                source,
            })?;
            let content = self.string_value(&format!("messages[{index}].content"), get("content")?)?;
            messages.push(Message { role, content });
        }
        Ok(messages)
    }
}

/// JSON's name for a value's type, for error messages.
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Reads a JSON Lines file: one object per line, blank lines skipped, each object turned into a `T` by
/// `parse`. Lines are read with a bounded buffer, so a line over [`MAX_LINE_BYTES`] is an error, not an
/// allocation of the whole file.
pub fn read_jsonl<T>(
    path: &Path,
    example: &'static str,
    mut parse: impl FnMut(&Fields<'_>) -> Result<T>,
) -> Result<RecordFile<T>> {
    let io = |source| TrainError::Io { path: path.to_path_buf(), source };
    let mut reader = BufReader::new(File::open(path).map_err(io)?);
    let mut records = Vec::new();
    let mut buf = Vec::new();
    let mut line = 0usize;
    loop {
        buf.clear();
        // One byte over the limit tells "exactly at the limit" from "longer".
        let limit = MAX_LINE_BYTES as u64 + 1;
        let read = (&mut reader).take(limit).read_until(b'\n', &mut buf).map_err(io)?;
        if read == 0 {
            break;
        }
        line += 1;
        if buf.last() == Some(&b'\n') {
            buf.pop();
        } else if buf.len() > MAX_LINE_BYTES {
            return Err(TrainError::TaskLineTooLong { path: path.to_path_buf(), line, limit: MAX_LINE_BYTES });
        }
        let mut bytes = buf.as_slice();
        if line == 1 {
            bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes); // a UTF-8 byte-order mark
        }
        let text = std::str::from_utf8(bytes).map_err(|e| TrainError::TaskNotUtf8 {
            path: path.to_path_buf(),
            line,
            offset: e.valid_up_to(),
        })?;
        if text.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(text).map_err(|source| TrainError::TaskJson {
            path: path.to_path_buf(),
            line,
            source,
        })?;
        let Value::Object(map) = &value else {
            return Err(TrainError::TaskNotObject {
                path: path.to_path_buf(),
                line,
                found: json_kind(&value),
                example,
            });
        };
        let value = parse(&Fields { path, line, map })?;
        records.push(Located { line, value });
    }
    Ok(RecordFile { path: path.to_path_buf(), records })
}

/// Reads a CSV file whose header names `text` and `label` columns (others are ignored).
pub fn read_csv(path: &Path) -> Result<RecordFile<LabeledText>> {
    let file = File::open(path).map_err(|source| TrainError::Io { path: path.to_path_buf(), source })?;
    let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(LineLimit::new(file));
    let csv_error = |e: csv::Error| csv_error(path, e);
    let header: Vec<String> = reader.headers().map_err(csv_error)?.iter().map(|h| h.trim().to_owned()).collect();
    let column = |name: &str| header.iter().position(|h| h == name);
    let (Some(text_col), Some(label_col)) = (column("text"), column("label")) else {
        return Err(TrainError::TaskCsvHeader { path: path.to_path_buf(), header });
    };
    let mut records = Vec::new();
    let mut record = csv::StringRecord::new();
    while reader.read_record(&mut record).map_err(csv_error)? {
        let line = record.position().map_or(0, |p| p.line()) as usize;
        // A quoted field may span lines, so the per-line bound does not cover a whole record.
        if record.as_slice().len() > MAX_LINE_BYTES {
            return Err(TrainError::TaskLineTooLong { path: path.to_path_buf(), line, limit: MAX_LINE_BYTES });
        }
        let field = |col: usize, name: &str| -> Result<String> {
            let value = record.get(col).unwrap_or_default();
            if value.trim().is_empty() {
                return Err(TrainError::TaskEmptyField { path: path.to_path_buf(), line, field: name.to_owned() });
            }
            Ok(value.to_owned())
        };
        let value = LabeledText { text: field(text_col, "text")?, label: field(label_col, "label")? };
        records.push(Located { line, value });
    }
    Ok(RecordFile { path: path.to_path_buf(), records })
}

fn csv_error(path: &Path, error: csv::Error) -> TrainError {
    if let csv::ErrorKind::Io(io) = error.kind()
        && let Some(too_long) = io.get_ref().and_then(|inner| inner.downcast_ref::<LineTooLong>())
    {
        return TrainError::TaskLineTooLong { path: path.to_path_buf(), line: too_long.line, limit: MAX_LINE_BYTES };
    }
    let line = error.position().map_or(0, |p| p.line());
    TrainError::TaskCsv { path: path.to_path_buf(), line, message: error.to_string() }
}

#[derive(Debug, thiserror::Error)]
#[error("line {line} is longer than {MAX_LINE_BYTES} bytes")]
struct LineTooLong {
    line: usize,
}

/// A reader that fails once a line grows past [`MAX_LINE_BYTES`], so the CSV parser (which buffers a
/// whole record) never holds more than that for one line.
struct LineLimit<R> {
    inner: R,
    line: usize,
    run: usize,
}

impl<R: Read> LineLimit<R> {
    fn new(inner: R) -> Self {
        Self { inner, line: 1, run: 0 }
    }
}

impl<R: Read> Read for LineLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        for &byte in &buf[..n] {
            if byte == b'\n' {
                self.line += 1;
                self.run = 0;
            } else {
                self.run += 1;
                if self.run > MAX_LINE_BYTES {
                    return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, LineTooLong { line: self.line }));
                }
            }
        }
        Ok(n)
    }
}
