//! Task data: reading records, classification labels, SFT masks, variable-length batches and the
//! length-grouped loader, on small slices of the bundled task data sets (tests/fixtures/tasks).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use lushan_kernels::crossentropy::IGNORE_INDEX;
use lushan_kernels::rng::Rng;
use lushan_tokenizer::chat::Role;
use lushan_tokenizer::{CharTokenizer, Tokenizer};
use lushan_train::tasks::{
    ClassifyData, PaddingStats, SftData, SftRecord, Split, Task, TaskData, TaskDataOptions, TaskLoader,
    TaskLoaderState, eval_order, label_list, read_labeled, read_sft, split_records,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tasks").join(name)
}

fn gpt2() -> Tokenizer {
    Tokenizer::gpt2().expect("bundled GPT-2 tokenizer")
}

/// A character tokenizer whose vocabulary covers `texts` and the chat template.
fn char_tokenizer<'a>(texts: impl IntoIterator<Item = &'a str>) -> Tokenizer {
    let mut all = String::from("System: User: Assistant:\n");
    for text in texts {
        all.push_str(text);
    }
    Tokenizer::Char(CharTokenizer::from_text(&all).expect("vocabulary"))
}

fn options(task: Task, data: &str) -> TaskDataOptions {
    TaskDataOptions {
        task,
        data: fixture(data),
        val_data: None,
        val_fraction: 0.25,
        seed: 1,
        max_len: 1024,
        labels: None,
    }
}

fn error_of<T: std::fmt::Debug>(result: lushan_train::Result<T>) -> String {
    result.expect_err("the input is invalid").to_string()
}

/// Decoded text of the trained tokens, one string per contiguous trained run.
fn trained_runs(tok: &Tokenizer, ids: &[u32], trained: &[bool]) -> Vec<String> {
    let mut runs = Vec::new();
    let mut run = Vec::new();
    for (&id, &t) in ids.iter().zip(trained) {
        if t {
            run.push(id);
        } else if !run.is_empty() {
            runs.push(tok.decode(&run).expect("decode"));
            run.clear();
        }
    }
    if !run.is_empty() {
        runs.push(tok.decode(&run).expect("decode"));
    }
    runs
}

// ---- reading records ----

#[test]
fn bad_inputs_name_file_line_and_field() {
    let classify = |name: &str| error_of(read_labeled(&fixture(name)));
    let sft = |name: &str| error_of(read_sft(&fixture(name)).and_then(|f| SftData::build(&f, &gpt2(), 64)));
    let cases: Vec<(String, &str, &[&str])> = vec![
        (classify("bad/bad_json.jsonl"), "bad_json.jsonl:3", &["not valid JSON"]),
        (classify("bad/no_label.jsonl"), "no_label.jsonl:2", &["no field \"label\""]),
        (classify("bad/empty_text.jsonl"), "empty_text.jsonl:2", &["field \"text\" is empty"]),
        (classify("bad/label_number.jsonl"), "label_number.jsonl:2", &["field \"label\" must be a string", "number"]),
        (classify("bad/not_object.jsonl"), "not_object.jsonl:1", &["JSON object", "an array"]),
        (classify("bad/blank.jsonl"), "blank.jsonl", &["has no records"]),
        (classify("bad/bad_header.csv"), "bad_header.csv", &["\"text\"", "\"label\"", "body"]),
        (classify("bad/csv_empty_label.csv"), "csv_empty_label.csv:3", &["field \"label\" is empty"]),
        (classify("bad/csv_ragged.csv"), "csv_ragged.csv:3", &["CSV"]),
        (sft("bad/sft_prompt_only.jsonl"), "sft_prompt_only.jsonl:2", &["no field \"completion\""]),
        (sft("bad/sft_no_shape.jsonl"), "sft_no_shape.jsonl:2", &["none of these fields", "\"messages\""]),
        (sft("bad/sft_two_shapes.jsonl"), "sft_two_shapes.jsonl:1", &["\"text\", \"messages\""]),
        (sft("bad/sft_completion_number.jsonl"), "sft_completion_number.jsonl:1", &["\"completion\" must be a string"]),
        (
            sft("bad/chat_not_alternating.jsonl"),
            "chat_not_alternating.jsonl:2",
            &["field \"messages\"", "message 1 has role \"user\"", "expected an assistant message"],
        ),
        (
            sft("bad/chat_ends_with_user.jsonl"),
            "chat_ends_with_user.jsonl:1",
            &["field \"messages\"", "message 2 (the last)", "end with an assistant message"],
        ),
        (sft("bad/chat_bad_role.jsonl"), "chat_bad_role.jsonl:1", &["messages[1].role", "\"robot\""]),
        (sft("bad/chat_no_content.jsonl"), "chat_no_content.jsonl:1", &["no field \"messages[1].content\""]),
        (error_of(read_sft(&fixture("spam.csv"))), "spam.csv", &["sft data must be JSON Lines", "not CSV"]),
    ];
    for (message, location, parts) in cases {
        assert!(message.contains(location), "{message:?} should name {location}");
        for part in parts {
            assert!(message.contains(part), "{message:?} should say {part:?}");
        }
    }
}

#[test]
fn long_lines_and_bad_utf8_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let long = dir.path().join("long.jsonl");
    let mut body = String::from("{\"text\": \"ok\", \"label\": \"a\"}\n{\"text\": \"");
    body.push_str(&"x".repeat(16 << 20));
    body.push_str("\", \"label\": \"b\"}\n");
    std::fs::write(&long, &body).expect("write");
    let message = error_of(read_labeled(&long));
    assert!(message.contains("long.jsonl:2") && message.contains("longer than 16777216 bytes"), "{message}");

    let long_csv = dir.path().join("long.csv");
    std::fs::write(&long_csv, format!("text,label\n{},a\n", "y".repeat((16 << 20) + 1))).expect("write");
    let message = error_of(read_labeled(&long_csv));
    assert!(message.contains("long.csv:2") && message.contains("longer than"), "{message}");

    let latin1 = dir.path().join("latin1.jsonl");
    std::fs::write(&latin1, b"{\"text\": \"ok\", \"label\": \"a\"}\n{\"text\": \"caf\xE9\", \"label\": \"b\"}\n")
        .expect("write");
    let message = error_of(read_labeled(&latin1));
    assert!(message.contains("latin1.jsonl:2") && message.contains("not valid UTF-8"), "{message}");

    let missing = error_of(read_labeled(&dir.path().join("absent.jsonl")));
    assert!(missing.contains("absent.jsonl"), "{missing}");
}

#[test]
fn csv_records_keep_their_line_numbers() {
    let file = read_labeled(&fixture("spam.csv")).expect("csv");
    let lines: Vec<usize> = file.records.iter().map(|r| r.line).collect();
    assert_eq!(lines, [2, 3, 4, 6]);
    assert_eq!(file.records[1].value.text, "WIN a prize, now");
    assert_eq!(file.records[2].value.text, "Call me\nlater please");
    let labels = label_list(&file, None).expect("labels");
    assert_eq!(labels, ["ham", "spam"]);
}

// ---- classification ----

#[test]
fn labels_are_sorted_and_long_texts_keep_their_start() {
    let tok = gpt2();
    let file = read_labeled(&fixture("spam.jsonl")).expect("spam");
    let labels = label_list(&file, None).expect("labels");
    assert_eq!(labels, ["ham", "spam"]);
    let max_len = 64;
    let data = ClassifyData::build(&file, &labels, Split::Train, &tok, max_len).expect("build");
    assert_eq!(data.label_counts(), [10, 10]);
    let mut expected_truncated = 0;
    for (record, example) in file.records.iter().zip(&data.examples) {
        let full = tok.encode(&record.value.text).expect("encode");
        expected_truncated += usize::from(full.len() > max_len);
        assert_eq!(example.ids, full[..full.len().min(max_len)], "the start of the text is kept");
        assert_eq!(labels[example.label as usize], record.value.label);
    }
    assert!(expected_truncated > 0 && expected_truncated < 20, "the slice has long and short texts");
    assert_eq!(data.truncated, expected_truncated);

    // A character tokenizer sees the same records.
    let tok = char_tokenizer(file.records.iter().map(|r| r.value.text.as_str()));
    let data = ClassifyData::build(&file, &labels, Split::Train, &tok, 100_000).expect("build");
    assert_eq!(data.truncated, 0);
    assert_eq!(data.examples[0].ids.len(), file.records[0].value.text.chars().count());
}

#[test]
fn a_checkpoint_label_list_is_kept_and_enforced() {
    let file = read_labeled(&fixture("spam.jsonl")).expect("spam");
    let given = ["spam".to_owned(), "ham".to_owned(), "unused".to_owned()];
    let labels = label_list(&file, Some(&given)).expect("labels");
    assert_eq!(labels, given, "the head's order wins over sorting");
    let data = ClassifyData::build(&file, &labels, Split::Train, &gpt2(), 32).expect("build");
    assert_eq!(data.label_counts(), [10, 10, 0]);

    let head = ["ham".to_owned(), "eggs".to_owned()];
    let message = error_of(label_list(&file, Some(&head)));
    assert!(message.contains("spam.jsonl:") && message.contains("\"spam\"") && message.contains("--reset-head"));
    let message = error_of(label_list(&file, Some(&["ham".to_owned()])));
    assert!(message.contains("at least two labels"), "{message}");
}

#[test]
fn label_errors_name_file_line_and_label() {
    let mut opts = options(Task::Classify, "spam.jsonl");
    opts.val_data = Some(fixture("bad/val_unseen.jsonl"));
    let message = error_of(TaskData::load(&opts, &gpt2()));
    assert!(message.contains("val_unseen.jsonl:2") && message.contains("\"eggs\""), "{message}");

    let message = error_of(TaskData::load(&options(Task::Classify, "bad/one_class.jsonl"), &gpt2()));
    assert!(message.contains("one_class.jsonl") && message.contains("only one label") && message.contains("\"ham\""));
}

// ---- SFT ----

#[test]
fn prompt_completion_trains_the_completion_and_end_of_turn() {
    let file = read_sft(&fixture("translate-en-es.jsonl")).expect("translate");
    let texts: Vec<String> = file
        .records
        .iter()
        .flat_map(|r| match &r.value {
            SftRecord::PromptCompletion { prompt, completion } => vec![prompt.clone(), completion.clone()],
            other => panic!("unexpected record {other:?}"),
        })
        .collect();
    for (tok, eot) in [(gpt2(), "<|endoftext|>"), (char_tokenizer(texts.iter().map(String::as_str)), "\n")] {
        let data = SftData::build(&file, &tok, 1024).expect("build");
        assert_eq!((data.examples.len(), data.truncated, data.dropped), (20, 0, 0));
        for (record, example) in file.records.iter().zip(&data.examples) {
            let SftRecord::PromptCompletion { prompt, completion } = &record.value else { unreachable!() };
            assert_eq!(trained_runs(&tok, &example.ids, &example.trained), [format!("{completion}{eot}")]);
            assert_eq!(tok.decode(&example.ids).expect("decode"), format!("{prompt}{completion}{eot}"));
        }
    }
}

#[test]
fn text_records_train_every_token() {
    let tok = gpt2();
    let file = read_sft(&fixture("sentiment-zh.jsonl")).expect("text records");
    let data = SftData::build(&file, &tok, 4096).expect("build");
    for (record, example) in file.records.iter().zip(&data.examples) {
        let SftRecord::Text(text) = &record.value else { panic!("unexpected record {:?}", record.value) };
        assert!(example.trained.iter().all(|&t| t));
        assert_eq!(tok.decode(&example.ids).expect("decode"), format!("{text}<|endoftext|>"));
    }
}

#[test]
fn chat_records_train_the_assistant_replies() {
    let file = read_sft(&fixture("chat.jsonl")).expect("chat");
    let contents: Vec<String> = file
        .records
        .iter()
        .flat_map(|r| match &r.value {
            SftRecord::Messages(messages) => messages.iter().map(|m| m.content.clone()).collect::<Vec<_>>(),
            other => panic!("unexpected record {other:?}"),
        })
        .collect();
    for (tok, eot) in [(gpt2(), "<|endoftext|>"), (char_tokenizer(contents.iter().map(String::as_str)), "\n")] {
        let data = SftData::build(&file, &tok, 4096).expect("build");
        assert_eq!(data.examples.len(), 20);
        let mut multi_turn = 0;
        for (record, example) in file.records.iter().zip(&data.examples) {
            let SftRecord::Messages(messages) = &record.value else { unreachable!() };
            let replies: Vec<String> =
                messages.iter().filter(|m| m.role == Role::Assistant).map(|m| format!(" {}{eot}", m.content)).collect();
            multi_turn += usize::from(replies.len() > 1);
            assert_eq!(trained_runs(&tok, &example.ids, &example.trained), replies);
            assert!(tok.decode(&example.ids).expect("decode").starts_with("User: "));
        }
        assert!(multi_turn > 0, "the slice has multi-turn conversations");
    }
}

#[test]
fn sft_truncation_and_dropping_are_counted() {
    let tok = gpt2();
    let file = read_sft(&fixture("translate-en-es.jsonl")).expect("translate");
    let max_len = 24;
    let (mut truncated, mut dropped) = (0, 0);
    for record in &file.records {
        let SftRecord::PromptCompletion { prompt, .. } = &record.value else { unreachable!() };
        let prompt_len = tok.encode(prompt).expect("encode").len();
        let full = prompt_len + tok.encode(&record_completion(&record.value)).expect("encode").len() + 1;
        truncated += usize::from(full > max_len + 1);
        // Trained targets are the positions ≥ prompt_len; the window keeps positions < max_len + 1.
        dropped += usize::from(prompt_len > max_len);
    }
    assert!(truncated > dropped && dropped > 0, "the slice must exercise both ({truncated}, {dropped})");
    let data = SftData::build(&file, &tok, max_len).expect("build");
    assert_eq!((data.truncated, data.dropped, data.examples.len()), (truncated, dropped, 20 - dropped));
    assert!(data.examples.iter().all(|e| e.ids.len() <= max_len + 1 && e.trained[1..].contains(&true)));

    let message = error_of(SftData::build(&file, &tok, 2));
    assert!(message.contains("every example was dropped (20)"), "{message}");
}

fn record_completion(record: &SftRecord) -> String {
    match record {
        SftRecord::PromptCompletion { completion, .. } => completion.clone(),
        _ => String::new(),
    }
}

// ---- batches ----

#[test]
fn batches_are_padded_to_the_longest_example_in_them() {
    let tok = gpt2();
    let file = read_labeled(&fixture("spam.jsonl")).expect("spam");
    let labels = label_list(&file, None).expect("labels");
    let data = ClassifyData::build(&file, &labels, Split::Train, &tok, 1024).expect("build");
    let indices = [3, 0, 17];
    let pad = 50256;
    let batch = data.batch(&indices, pad).expect("batch");
    let longest = indices.iter().map(|&i| data.examples[i].ids.len()).max().expect("rows");
    assert_eq!((batch.b, batch.t, batch.inputs.len()), (3, longest, 3 * longest));
    assert_eq!(batch.examples, indices);
    for (row, &i) in batch.inputs.chunks_exact(batch.t).zip(&indices) {
        let ids = &data.examples[i].ids;
        assert_eq!(&row[..ids.len()], ids.as_slice());
        assert!(row[ids.len()..].iter().all(|&id| id == pad));
    }
    assert_eq!(batch.targets, indices.map(|i| data.examples[i].label));
    assert_eq!(batch.real_tokens(), indices.iter().map(|&i| data.examples[i].ids.len()).sum::<usize>());
    assert!(data.batch(&[20], pad).is_err() && data.batch(&[], pad).is_err());

    let file = read_sft(&fixture("translate-en-es.jsonl")).expect("translate");
    let data = SftData::build(&file, &tok, 1024).expect("build");
    let indices = [5, 1, 12, 8];
    let batch = data.batch(&indices, 0).expect("batch");
    let longest = indices.iter().map(|&i| data.examples[i].ids.len() - 1).max().expect("rows");
    assert_eq!((batch.b, batch.t, batch.targets.len()), (4, longest, 4 * longest));
    for ((x, y), &i) in batch.inputs.chunks_exact(batch.t).zip(batch.targets.chunks_exact(batch.t)).zip(&indices) {
        let example = &data.examples[i];
        let n = example.ids.len() - 1;
        assert_eq!(&x[..n], &example.ids[..n]);
        assert!(x[n..].iter().all(|&id| id == 0) && y[n..].iter().all(|&t| t == IGNORE_INDEX));
        for (j, (&target, (&id, &trained))) in
            y.iter().zip(example.ids[1..].iter().zip(&example.trained[1..])).enumerate()
        {
            let expected = if trained { id } else { IGNORE_INDEX };
            assert_eq!(target, expected, "example {i} position {j}");
        }
        assert!(y[..n].contains(&IGNORE_INDEX) && y[..n].iter().any(|&t| t != IGNORE_INDEX));
    }
}

#[test]
fn grouping_by_length_pads_less_than_random_batches() {
    let file = read_labeled(&fixture("spam.jsonl")).expect("spam");
    let labels = label_list(&file, None).expect("labels");
    let data = ClassifyData::build(&file, &labels, Split::Train, &gpt2(), 1024).expect("build");
    let lengths = data.lengths();
    let batch_size = 4;
    let mut grouped = PaddingStats::default();
    let mut loader = TaskLoader::new(lengths.clone(), batch_size, 7).expect("loader");
    let mut random = PaddingStats::default();
    let mut rng = Rng::new(7);
    for _ in 0..100 {
        let indices = loader.next_indices();
        assert_eq!(indices.len(), batch_size);
        grouped.add(&lengths, &indices);
        // Random batches: each a fresh draw of B distinct examples.
        let mut order: Vec<usize> = (0..lengths.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        random.add(&lengths, &order[..batch_size]);
    }
    assert!(
        grouped.efficiency() > random.efficiency() + 0.1,
        "grouped {:.3} vs random {:.3}",
        grouped.efficiency(),
        random.efficiency()
    );
    let built: Vec<_> = (0..3).map(|_| data.batch(&loader.next_indices(), 0).expect("batch")).collect::<Vec<_>>();
    let stats = lushan_train::tasks::padding_stats(&built);
    assert_eq!(stats.batches, 3);
    assert!(stats.real <= stats.padded && stats.efficiency() > 0.0);
}

#[test]
fn the_loader_fills_every_batch_and_covers_each_epoch() {
    let lengths: Vec<usize> = (0..23).map(|i| (i * 7) % 11 + 1).collect();
    let mut loader = TaskLoader::new(lengths, 4, 5).expect("loader");
    // 6 batches = 24 slots: the whole first epoch plus one example of the second.
    let drawn: Vec<usize> = (0..6).flat_map(|_| loader.next_indices()).collect();
    assert_eq!(drawn.len(), 24);
    assert_eq!(drawn.iter().copied().collect::<BTreeSet<_>>(), (0..23).collect());
    assert!(TaskLoader::new(vec![], 4, 1).is_err() && TaskLoader::new(vec![1], 0, 1).is_err());
}

#[test]
fn a_resumed_loader_draws_the_same_batches() {
    let lengths: Vec<usize> = (0..157).map(|i| (i * 31) % 97 + 1).collect();
    let batch_size = 3; // a chunk is 150 examples: chunks and epochs end at different places
    for taken in [0, 1, 49, 50, 51, 52, 104, 400] {
        let mut original = TaskLoader::new(lengths.clone(), batch_size, 11).expect("loader");
        for _ in 0..taken {
            original.next_indices();
        }
        let saved = original.state();
        let json = serde_json::to_string(&saved).expect("serialize");
        let restored_state: TaskLoaderState = serde_json::from_str(&json).expect("deserialize");
        let mut resumed = TaskLoader::new(lengths.clone(), batch_size, 999).expect("loader");
        resumed.set_state(restored_state).expect("set_state");
        assert_eq!(resumed.state(), saved, "after {taken} batches");
        for step in 0..200 {
            assert_eq!(resumed.next_indices(), original.next_indices(), "after {taken} batches, step {step}");
        }
        assert_eq!(resumed.epoch(), original.epoch());
    }
    let mut other_data = TaskLoader::new(vec![1; 157], batch_size, 11).expect("loader");
    let state = TaskLoader::new(lengths.clone(), batch_size, 11).expect("loader").state();
    assert!(error_of(other_data.set_state(state)).contains("other lengths"));
    let mut other_batch = TaskLoader::new(lengths, 4, 11).expect("loader");
    assert!(error_of(other_batch.set_state(state)).contains("batch size 3"));
}

#[test]
fn eval_batches_cover_every_example_once() {
    let lengths = [5, 1, 9, 3, 3, 7, 2];
    let order = eval_order(&lengths, 3).expect("order");
    assert_eq!(order, [vec![1, 6, 3], vec![4, 0, 5], vec![2]]);

    let mut opts = options(Task::Sft, "chat.jsonl");
    opts.val_data = Some(fixture("translate-en-es.jsonl"));
    let data = TaskData::load(&opts, &gpt2()).expect("load");
    let batches = data.val_batches(6, 50256).expect("batches");
    assert_eq!(batches.iter().map(|b| b.b).collect::<Vec<_>>(), [6, 6, 6, 2]);
    let mut seen: Vec<usize> = batches.iter().flat_map(|b| b.examples.clone()).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..20).collect::<Vec<_>>());
    assert_eq!(data.val_batches(6, 50256).expect("batches"), batches, "the same batches every evaluation");
}

// ---- loading ----

#[test]
fn task_data_splits_the_records_deterministically() {
    let tok = gpt2();
    let load = |seed| {
        let mut opts = options(Task::Classify, "spam.jsonl");
        opts.seed = seed;
        TaskData::load(&opts, &tok).expect("load")
    };
    let (a, b, c) = (load(1), load(1), load(2));
    assert_eq!(a, b);
    assert_ne!(a, c);
    let TaskData::Classify { train, val } = &a else { panic!("classification data") };
    assert_eq!((train.examples.len(), val.examples.len()), (15, 5));
    assert_eq!(train.labels, ["ham", "spam"]);
    assert_eq!(val.labels, train.labels);
    assert_eq!(a.task(), Task::Classify);
    assert_eq!(a.train_lengths().len(), 15);

    let file = read_labeled(&fixture("spam.jsonl")).expect("spam");
    let (train, val) = split_records(file.clone(), 0.0, 1).expect("split");
    assert_eq!((train.records.len(), val.records.len()), (20, 0));
    let (train, val) = split_records(file.clone(), 0.01, 1).expect("split");
    assert_eq!((train.records.len(), val.records.len()), (19, 1));
    assert!(train.records.windows(2).all(|w| w[0].line < w[1].line), "file order is kept");
    assert!(split_records(file.clone(), 1.0, 1).is_err());
    let one = lushan_train::tasks::RecordFile { path: file.path.clone(), records: file.records[..1].to_vec() };
    assert!(error_of(split_records(one, 0.5, 1)).contains("leaves the training split empty"));

    let message = error_of(TaskData::load(&options(Task::Lm, "spam.jsonl"), &tok));
    assert!(message.contains("token shards"), "{message}");
}

#[test]
fn task_names_parse_from_config_and_flags() {
    use clap::ValueEnum;
    assert_eq!(Task::default(), Task::Lm);
    assert_eq!(serde_json::to_string(&Task::Classify).expect("json"), "\"classify\"");
    assert_eq!(serde_json::from_str::<Task>("\"sft\"").expect("json"), Task::Sft);
    assert_eq!(Task::from_str("classify", false).expect("flag"), Task::Classify);
    assert!(Task::from_str("regression", false).is_err());
    assert_eq!(Task::Sft.as_str(), "sft");
}
