//! Tokenizing corpora too big for memory with a given tokenizer (GPT-2 BPE or a trained one): the text is
//! read in blocks, cut only where the tokenizer's pre-tokenization allows (so the ids equal those of the
//! whole text), each block encoded on every core, and the ids streamed to a temporary file; the train/val
//! split and the shard headers are written at the end, when the token count is known.

use super::prepare::{PrepareReport, check_val_fraction, corpus_files, corpus_label, missing_or_io, save_tokenizer};
use super::shard::{TRAIN_SHARD, VAL_SHARD, token_width, write_header};
use crate::data::split_point;
use crate::error::{Result, TrainError};
use lushan_model::checkpoint::atomic_write_with;
use lushan_tokenizer::Tokenizer;
use lushan_tokenizer::bpe::pretokenize::next_safe_cut;
use std::fs::{self, File};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Bytes read per block; peak memory is a few times this (text, ids, buffers), whatever the corpus size.
const BLOCK_BYTES: usize = 16 << 20;

/// Tokenizes `inputs` with `tokenizer` into `out_dir` (train.bin, val.bin, lushan-tokenizer.json), reporting
/// `(bytes done, bytes total)` to `progress` after each block.
pub fn prepare_streaming(
    tokenizer: &Tokenizer,
    inputs: &[PathBuf],
    out_dir: &Path,
    val_fraction: f64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<PrepareReport> {
    prepare_in_blocks(tokenizer, inputs, out_dir, val_fraction, progress, BLOCK_BYTES)
}

fn prepare_in_blocks(
    tokenizer: &Tokenizer,
    inputs: &[PathBuf],
    out_dir: &Path,
    val_fraction: f64,
    progress: &mut dyn FnMut(u64, u64),
    block: usize,
) -> Result<PrepareReport> {
    check_val_fraction(val_fraction)?;
    let files = corpus_files(inputs)?;
    let total: u64 = files.iter().map(|f| fs::metadata(f).map(|m| m.len()).unwrap_or(0)).sum();
    if total == 0 {
        return Err(TrainError::EmptyCorpus { paths: corpus_label(inputs) });
    }
    fs::create_dir_all(out_dir).map_err(|source| TrainError::Io { path: out_dir.to_path_buf(), source })?;
    let vocab_size = tokenizer.vocab_size();
    let width = token_width(vocab_size) as usize;
    let temp_path = out_dir.join(format!(".tokens.tmp-{}-0", std::process::id()));
    let result = (|| {
        let count = encode_to_file(tokenizer, &files, &temp_path, width, total, progress, block)?;
        write_split(tokenizer, &temp_path, out_dir, count, width, val_fraction, files)
    })();
    let _ = fs::remove_file(&temp_path);
    result
}

fn encode_to_file(
    tokenizer: &Tokenizer,
    files: &[PathBuf],
    temp_path: &Path,
    width: usize,
    total: u64,
    progress: &mut dyn FnMut(u64, u64),
    block: usize,
) -> Result<u64> {
    let io = |source| TrainError::Io { path: temp_path.to_path_buf(), source };
    let mut out = BufWriter::new(File::create(temp_path).map_err(io)?);
    let mut pending: Vec<u8> = Vec::new();
    let mut count = 0u64;
    let mut done = 0u64;
    let threads = rayon::current_num_threads();
    let mut emit = |text: &str, count: &mut u64| -> Result<()> {
        let ids = match tokenizer {
            Tokenizer::Bpe(bpe) => bpe.encode_parallel(text, threads),
            other => other
                .encode(text)
                .map_err(|source| TrainError::Tokenizer { path: corpus_label(files).into(), source })?,
        };
        let mut bytes = Vec::with_capacity(ids.len() * width);
        for &id in &ids {
            if width == 2 {
                bytes.extend_from_slice(&(id as u16).to_le_bytes());
            } else {
                bytes.extend_from_slice(&id.to_le_bytes());
            }
        }
        out.write_all(&bytes).map_err(io)?;
        *count += ids.len() as u64;
        Ok(())
    };
    for file in files {
        let mut reader = File::open(file).map_err(|source| missing_or_io(file, source))?;
        let mut file_offset = 0u64;
        loop {
            let start = pending.len();
            pending.resize(start + block, 0);
            let n =
                reader.read(&mut pending[start..]).map_err(|source| TrainError::Io { path: file.clone(), source })?;
            pending.truncate(start + n);
            if n == 0 {
                break;
            }
            done += n as u64;
            // The valid UTF-8 prefix; an incomplete character at the end waits for the next block.
            let valid = match std::str::from_utf8(&pending) {
                Ok(_) => pending.len(),
                Err(e) if e.error_len().is_none() => e.valid_up_to(),
                Err(e) => {
                    let offset = file_offset as usize + e.valid_up_to() - start.min(e.valid_up_to());
                    return Err(TrainError::NotUtf8 { path: file.clone(), offset });
                }
            };
            file_offset += n as u64;
            let text = std::str::from_utf8(&pending[..valid]).unwrap_or_default();
            // Cut where encoding the two sides separately gives the ids of the whole.
            if let Some(cut) = next_safe_cut(text, text.len() * 3 / 4).filter(|&c| c < text.len()) {
                emit(&text[..cut], &mut count)?;
                pending.drain(..cut);
            }
            progress(done, total);
        }
    }
    if !pending.is_empty() {
        let text = std::str::from_utf8(&pending).map_err(|e| TrainError::NotUtf8 {
            path: files.last().cloned().unwrap_or_default(),
            offset: e.valid_up_to(),
        })?;
        emit(text, &mut count)?;
    }
    out.flush().map_err(io)?;
    progress(total, total);
    Ok(count)
}

fn write_split(
    tokenizer: &Tokenizer,
    temp_path: &Path,
    out_dir: &Path,
    count: u64,
    width: usize,
    val_fraction: f64,
    files: Vec<PathBuf>,
) -> Result<PrepareReport> {
    let n_train = split_point(count as usize, val_fraction)?;
    let description = tokenizer.describe();
    let mut source =
        File::open(temp_path).map_err(|source| TrainError::Io { path: temp_path.to_path_buf(), source })?;
    let mut write_part = |path: &Path, first: u64, n: u64| -> Result<()> {
        source
            .seek(SeekFrom::Start(first * width as u64))
            .map_err(|e| TrainError::Io { path: temp_path.to_path_buf(), source: e })?;
        atomic_write_with(path, |file| {
            let mut w = BufWriter::new(file);
            write_header(&mut w, width as u32, n, &description)?;
            std::io::copy(&mut (&mut source).take(n * width as u64), &mut w)?;
            w.flush()
        })
        .map_err(|source| TrainError::Io { path: path.to_path_buf(), source })
    };
    let train_path = out_dir.join(TRAIN_SHARD);
    let val_path = out_dir.join(VAL_SHARD);
    write_part(&train_path, 0, n_train as u64)?;
    write_part(&val_path, n_train as u64, count - n_train as u64)?;
    let tokenizer_path = save_tokenizer(out_dir, tokenizer)?;
    Ok(PrepareReport {
        files,
        vocab_size: tokenizer.vocab_size(),
        description,
        train_tokens: n_train,
        val_tokens: count as usize - n_train,
        train_path,
        val_path,
        tokenizer_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Shard;

    fn shard_ids(path: &Path) -> Vec<u32> {
        let shard = Shard::open(path, None).unwrap();
        let mut ids = vec![0; shard.len()];
        shard.copy_window(0, &mut ids).unwrap();
        ids
    }

    #[test]
    fn small_blocks_and_several_files_give_the_ids_of_the_whole_text() {
        let dir = tempfile::tempdir().unwrap();
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/tinyshakespeare.txt")).unwrap();
        // Multi-byte characters straddle the block boundaries too.
        let text = format!("{}\n\n naïve café 世界 🌍🌍 \n{}", &text[..60_000], &text[60_000..120_000]);
        let (a, b) = text.split_at(text.char_indices().nth(70_001).unwrap().0);
        let inputs = dir.path().join("in");
        std::fs::create_dir(&inputs).unwrap();
        std::fs::write(inputs.join("a.txt"), a).unwrap();
        std::fs::write(inputs.join("b.txt"), b).unwrap();
        let tokenizer = Tokenizer::gpt2().unwrap();
        let mut calls = 0;
        let out = dir.path().join("out");
        let report = prepare_in_blocks(
            &tokenizer,
            &[inputs],
            &out,
            0.1,
            &mut |done, total| {
                calls += 1;
                assert!(done <= total);
            },
            4099,
        )
        .unwrap();
        assert!(calls > 10, "{calls} progress reports");
        let mut ids = shard_ids(&report.train_path);
        ids.extend(shard_ids(&report.val_path));
        assert_eq!(ids, tokenizer.encode(&text).unwrap());
        assert_eq!(report.train_tokens, split_point(ids.len(), 0.1).unwrap());
        assert_eq!(Shard::open(&report.train_path, Some(50257)).unwrap().token_width(), 2);
        assert!(std::fs::read_dir(&out).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().contains(".tmp")));
    }

    #[test]
    fn bad_inputs_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.txt");
        std::fs::write(&bad, b"hello \xff world").unwrap();
        let tokenizer = Tokenizer::gpt2().unwrap();
        let e = prepare_streaming(&tokenizer, &[bad], &dir.path().join("o"), 0.1, &mut |_, _| {}).unwrap_err();
        assert!(e.to_string().contains("bad.txt"), "{e}");
        let empty = dir.path().join("empty.txt");
        std::fs::write(&empty, b"").unwrap();
        let e = prepare_streaming(&tokenizer, &[empty], &dir.path().join("o"), 0.1, &mut |_, _| {}).unwrap_err();
        assert!(e.to_string().contains("empty.txt"), "{e}");
        let e = prepare_streaming(&tokenizer, &[dir.path().join("nope")], &dir.path().join("o"), 0.1, &mut |_, _| {})
            .unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }
}
