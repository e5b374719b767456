//! `lushan explain`: why the model says what it says about a prompt — next-token probabilities, attention
//! maps, the logit lens, optionally a sampled continuation and embedding neighbours — as a self-contained
//! HTML report (default), JSON (`--format json`) and/or PNG pictures (`--png DIR`).

use crate::commands::generate::SamplingArgs;
use crate::explain::pictures::{self, Picture};
use crate::explain::{HeadSelection, html, text};
use crate::model_dir;
use anyhow::{Context, Result, bail, ensure};
use lushan_model::features::{feature_view, load_sae_dir};
use lushan_model::inspect::{ExplainOptions, explain};
use lushan_tokenizer::Tokenizer;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Where the report goes when neither `--out` nor `--format json` says otherwise.
const DEFAULT_REPORT: &str = "explain.html";
/// Features listed per prompt token with `--features`, and contexts per feature.
const FEATURES_PER_TOKEN: usize = 5;
const CONTEXTS_PER_FEATURE: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One self-contained HTML file (pictures embedded); a text summary on stdout.
    Html,
    /// Every number, as the JSON of `lushan_model::inspect::Explanation`.
    Json,
}

#[derive(clap::Args)]
#[command(allow_negative_numbers = true)] // so `--layer -1` reaches the validation that names the flag
pub struct Args {
    /// Checkpoint directory (config.json + model.safetensors + tokenizer file).
    #[arg(short = 'm', long)]
    model: PathBuf,
    /// A LoRA adapter directory (PEFT's files) to merge into the model first.
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    #[command(flatten)]
    dtype: model_dir::DtypeArg,
    /// Text to explain (the same as --prompt); it must fit the model's context.
    #[arg(value_name = "PROMPT", conflicts_with = "prompt", required_unless_present = "prompt")]
    positional_prompt: Option<String>,
    /// Text to explain; it must fit the model's context.
    #[arg(short = 'p', long)]
    prompt: Option<String>,
    /// html: a report file (default explain.html) and a summary on stdout; json: every number, on stdout
    /// unless --out is given.
    #[arg(long, value_enum, default_value_t = Format::Html)]
    format: Format,
    /// File to write the report (html) or the JSON (json) to.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also write every picture as a PNG into this directory, with pictures.json listing them and their sizes.
    #[arg(long, value_name = "DIR")]
    png: Option<PathBuf>,
    /// Alternatives listed per position, per logit-lens cell and per sampling step.
    #[arg(long, default_value_t = 5, value_name = "N")]
    alternatives: usize,
    /// Layer whose attention heads are drawn large (1-based; default: the last layer).
    #[arg(long, value_name = "L")]
    layer: Option<i64>,
    /// Only this head of that layer is drawn large (1-based; default: every head).
    #[arg(long, value_name = "H")]
    head: Option<i64>,
    /// Generate N tokens after the prompt and show the distribution each was drawn from.
    #[arg(long, default_value_t = 0, value_name = "N")]
    generate: usize,
    /// How --generate samples: the flags of `lushan generate`, with the same defaults.
    #[command(flatten, next_help_heading = "Sampling for --generate")]
    sampling: SamplingArgs,
    /// Tokens whose nearest neighbours in the token embedding to show: each TOKEN is text that encodes to
    /// exactly one token, or #ID for a token id.
    #[arg(long, num_args = 1.., value_name = "TOKEN")]
    neighbors: Vec<String>,
    /// A sparse autoencoder directory (`lushan features train`): show each token's most active features
    /// with their top contexts.
    #[arg(long, value_name = "DIR")]
    features: Option<PathBuf>,
    /// Neighbours listed per --neighbors token.
    #[arg(long, default_value_t = 8, value_name = "N")]
    neighbor_count: usize,
    /// The prediction that attribution, ablation and patching explain: the one made after prompt token N
    /// (1-based; default: the last token).
    #[arg(long, value_name = "N", help_heading = "Causes")]
    position: Option<i64>,
    /// The token whose logit is explained: one token's text, or #ID (default: the prompt's next token, or after
    /// the last token the model's top prediction).
    #[arg(long, value_name = "TOKEN", help_heading = "Causes")]
    target: Option<String>,
    /// Explain logit(target) − logit(TOKEN) instead (one token's text, or #ID). Patching compares against it
    /// too (default there: the corrupted prompt's top prediction).
    #[arg(long, value_name = "TOKEN", help_heading = "Causes")]
    versus: Option<String>,
    /// Zero-ablate each attention head and each MLP in turn and report the change of ln p(target).
    #[arg(long, help_heading = "Causes")]
    ablate: bool,
    /// Also mean-ablate: each component's output replaced by its mean over every position of this text file
    /// (implies --ablate).
    #[arg(long, value_name = "FILE", help_heading = "Causes")]
    reference: Option<PathBuf>,
    /// Also report each ablation's change of the mean next-token loss over this text file (implies --ablate).
    #[arg(long, value_name = "FILE", help_heading = "Causes")]
    data: Option<PathBuf>,
    /// Activation patching: a corrupted prompt with as many tokens as the prompt; clean activations are
    /// copied into its run one at a time.
    #[arg(long, value_name = "TEXT", help_heading = "Causes")]
    corrupt: Option<String>,
    /// Components named in each top list of attribution, ablation and patching.
    #[arg(long, default_value_t = 10, value_name = "N", help_heading = "Causes")]
    components: usize,
}

/// Largest --reference / --data file read (the ablation sweep runs over at most `MAX_TEXT_TOKENS` of it).
const MAX_TEXT_FILE_BYTES: u64 = 16 << 20;
/// Tokens of --reference / --data used: each costs one forward per component for --data.
const MAX_TEXT_TOKENS: usize = 4096;

pub fn run(args: Args) -> Result<ExitCode> {
    // Checks that need no model come first, so a typo fails fast.
    let Some(prompt_text) = args.positional_prompt.as_deref().or(args.prompt.as_deref()) else {
        bail!("give the text to explain, as an argument or with --prompt")
    };
    ensure!(!prompt_text.is_empty(), "--prompt must not be empty: give the text to explain");
    ensure!(args.alternatives >= 1, "--alternatives must be at least 1 (how many alternatives to list), got 0");
    ensure!(args.neighbor_count >= 1, "--neighbor-count must be at least 1, got 0");
    let sampling = args.sampling.sampling()?;
    if args.generate == 0 && args.sampling.top_k.is_some() {
        // --top-k once counted the alternatives here; it now samples, as in `lushan generate`.
        eprintln!(
            "note: --top-k limits the sampling of --generate (off here); the alternatives listed per position \
             are set with --alternatives"
        );
    }

    // Explain reads the weights as f32 (attribution, ablation): a converted model is widened back, so
    // what is explained is the converted weights' behaviour.
    let (model, tokenizer) = model_dir::load_as(&args.model, args.adapter.as_deref(), args.dtype.dtype)?;
    let model = model.into_f32_weights();
    let config = &model.config;
    let prompt = tokenizer.encode(prompt_text).context("encoding --prompt with the model's tokenizer")?;
    ensure!(!prompt.is_empty(), "--prompt encodes to no tokens: give some text to explain");
    ensure!(
        prompt.len() <= config.block_size,
        "--prompt is {} tokens long but the model's context (block_size) is {} tokens: shorten it",
        prompt.len(),
        config.block_size
    );
    let selection = head_selection(args.layer, args.head, config.n_layer, config.n_head)?;
    let neighbors = args
        .neighbors
        .iter()
        .map(|token| single_token(&tokenizer, "--neighbors", token))
        .collect::<Result<Vec<u32>>>()?;
    ensure!(args.components >= 1, "--components must be at least 1 (how many components to list), got 0");
    let target = args.target.as_deref().map(|t| single_token(&tokenizer, "--target", t)).transpose()?;
    let versus = args.versus.as_deref().map(|t| single_token(&tokenizer, "--versus", t)).transpose()?;
    let position = match args.position {
        None => None,
        Some(n) => match usize::try_from(n) {
            Ok(n) if (1..=prompt.len()).contains(&n) => Some(n - 1),
            _ => bail!(
                "--position {n} is out of range: the prompt has {} tokens (valid: 1..={})",
                prompt.len(),
                prompt.len()
            ),
        },
    };
    let corrupt = match args.corrupt.as_deref() {
        None => None,
        Some(text) => {
            let ids = tokenizer.encode(text).context("encoding --corrupt with the model's tokenizer")?;
            ensure!(
                ids.len() == prompt.len(),
                "--corrupt is {} tokens long but the prompt is {} tokens: activation patching pairs the prompts \
                 position by position, so give a corrupted text with the same number of tokens",
                ids.len(),
                prompt.len()
            );
            Some(ids)
        }
    };
    let mut text_notes = Vec::new();
    let mut read_text = |path: &Path, flag: &str| -> Result<Vec<u32>> {
        let (ids, total) = read_token_file(&tokenizer, path, flag)?;
        if total > ids.len() {
            text_notes.push(format!("note: {flag}: using the first {} of the file's {total} tokens", ids.len()));
        }
        Ok(ids)
    };
    let reference = args.reference.as_deref().map(|p| read_text(p, "--reference")).transpose()?;
    let data = args.data.as_deref().map(|p| read_text(p, "--data")).transpose()?;
    let room = config.block_size - prompt.len();
    if args.generate > room {
        eprintln!(
            "note: --generate {} but only {room} more tokens fit the model's context after the prompt; \
             generating {room}",
            args.generate
        );
    }

    let options = ExplainOptions {
        top_k: args.alternatives,
        generate: args.generate,
        sampling,
        seed: args.sampling.seed,
        neighbors,
        neighbor_count: args.neighbor_count,
        position,
        target,
        versus,
        top_components: args.components,
        ablate: args.ablate,
        ablation_reference: reference,
        ablation_data: data,
        corrupt,
    };
    let token_text = |id: u32| tokenizer.decode(&[id]).unwrap_or_else(|_| format!("<{id}>"));
    let mut explanation = explain(&model, &prompt, &token_text, &options).context("explaining --prompt")?;
    if let Some(dir) = &args.features {
        let saved = load_sae_dir(dir).with_context(|| format!("--features {}", dir.display()))?;
        let view = feature_view(&model, &saved, &prompt, FEATURES_PER_TOKEN, CONTEXTS_PER_FEATURE)
            .with_context(|| format!("--features {}", dir.display()))?;
        explanation.features = Some(view);
    }

    // Pictures are drawn only when something shows them.
    let pictures = if args.format == Format::Html || args.png.is_some() {
        Some(pictures::draw_all(&explanation, &selection).context("drawing the pictures")?)
    } else {
        None
    };
    // Every file is written before anything is printed, so that a closed stdout (`| head`) loses no file.
    // stdout gets the JSON alone in json mode (notes then go to stderr), the summary and notes in html mode.
    let mut stdout_text = String::new();
    let mut notes = text_notes;
    match args.format {
        Format::Json => {
            let json = serde_json::to_string(&explanation).context("serialising the explanation")?;
            match &args.out {
                Some(path) => {
                    write_file(path, format!("{json}\n").as_bytes(), "--out")?;
                    notes.push(format!("wrote the explanation as JSON to {}", path.display()));
                }
                None => stdout_text = format!("{json}\n"),
            }
        }
        Format::Html => {
            let Some(pictures) = &pictures else { bail!("internal: the pictures were not drawn") };
            let model_name = args.model.display().to_string();
            let context = html::ReportContext { prompt: prompt_text, model: &model_name };
            let report = html::render(&explanation, pictures, &context);
            let path = args.out.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_REPORT));
            write_file(&path, report.as_bytes(), "--out")?;
            stdout_text = text::summary(&explanation);
            notes.push(format!("\nwrote the report to {} (open it in a browser)", shown_path(&path)));
        }
    }
    if let (Some(dir), Some(pictures)) = (&args.png, &pictures) {
        write_pngs(dir, &pictures.all())?;
        notes.push(format!("wrote {} pictures to {} (listed in pictures.json)", pictures.all().len(), dir.display()));
    }
    let notes: String = notes.iter().map(|n| format!("{n}\n")).collect();
    if args.format == Format::Json {
        print_quietly(std::io::stdout().lock(), &stdout_text)?;
        print_quietly(std::io::stderr().lock(), &notes)?;
    } else {
        print_quietly(std::io::stdout().lock(), &format!("{stdout_text}{notes}"))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `text` to a standard stream; a reader that went away (`| head`) is not an error.
fn print_quietly(mut stream: impl Write, text: &str) -> Result<()> {
    match stream.write_all(text.as_bytes()).and_then(|()| stream.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing the output"),
        _ => Ok(()),
    }
}

/// The heads drawn large: `--layer` (default: the last) and `--head` (default: all of that layer), 1-based on
/// the command line.
fn head_selection(layer: Option<i64>, head: Option<i64>, n_layer: usize, n_head: usize) -> Result<HeadSelection> {
    let in_range = |value: i64, count: usize, flag: &str, what: &str| -> Result<usize> {
        match usize::try_from(value) {
            Ok(v) if (1..=count).contains(&v) => Ok(v - 1),
            _ => bail!("{flag} {value} is out of range: the model has {count} {what} (valid: 1..={count})"),
        }
    };
    let layer = match layer {
        Some(l) => in_range(l, n_layer, "--layer", "layers")?,
        None => n_layer.saturating_sub(1),
    };
    let head = head.map(|h| in_range(h, n_head, "--head", "heads per layer")).transpose()?;
    Ok(HeadSelection::of_layer(layer, head, n_head))
}

/// A --reference / --data text file as token ids (at most `MAX_TEXT_FILE_BYTES` read, at most
/// `MAX_TEXT_TOKENS` kept) and how many tokens the whole file has.
fn read_token_file(tokenizer: &Tokenizer, path: &Path, flag: &str) -> Result<(Vec<u32>, usize)> {
    let size = std::fs::metadata(path).with_context(|| format!("{flag}: reading {}", path.display()))?.len();
    ensure!(
        size <= MAX_TEXT_FILE_BYTES,
        "{flag}: {} is {size} bytes; at most {MAX_TEXT_FILE_BYTES} are read (only its first {MAX_TEXT_TOKENS} tokens \
         are used): give a smaller file",
        path.display()
    );
    let text =
        std::fs::read_to_string(path).with_context(|| format!("{flag}: reading {} as UTF-8 text", path.display()))?;
    let mut ids = tokenizer.encode(&text).with_context(|| format!("{flag}: encoding {}", path.display()))?;
    ensure!(ids.len() >= 2, "{flag}: {} has {} token(s); give a text of at least 2 tokens", path.display(), ids.len());
    let total = ids.len();
    ids.truncate(MAX_TEXT_TOKENS);
    Ok((ids, total))
}

/// The id of one TOKEN given to `flag` (`--neighbors`, `--target`, `--versus`): `#ID`, or text that the
/// tokenizer turns into exactly one token.
fn single_token(tokenizer: &Tokenizer, flag: &str, token: &str) -> Result<u32> {
    let vocab_size = tokenizer.vocab_size();
    if let Some(digits) = token.strip_prefix('#')
        && !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
    {
        let id: u32 = digits.parse().with_context(|| format!("{flag} {token:?}: the id is too large"))?;
        ensure!(
            (id as usize) < vocab_size,
            "{flag} {token:?}: token id {id} is out of range (the vocabulary has ids 0..={})",
            vocab_size.saturating_sub(1)
        );
        return Ok(id);
    }
    ensure!(!token.is_empty(), "{flag}: a TOKEN is empty; give a token's text or #ID");
    let ids = tokenizer
        .encode(token)
        .with_context(|| format!("{flag} {token:?} is not a token of this model's vocabulary"))?;
    match ids[..] {
        [id] => Ok(id),
        _ => {
            let pieces: Vec<String> = ids.iter().map(|&id| tokenizer.decode(&[id]).unwrap_or_default()).collect();
            bail!(
                "{flag} {token:?} is not a single token of this model's vocabulary: it encodes to {} tokens \
                 {pieces:?}; give one token's text, or its id as #ID",
                ids.len()
            )
        }
    }
}

fn write_file(path: &Path, bytes: &[u8], flag: &str) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("{flag}: creating {}", parent.display()))?;
    }
    std::fs::write(path, bytes).with_context(|| format!("{flag}: writing {}", path.display()))
}

/// `path` as the user can open it: absolute when it can be made so.
fn shown_path(path: &Path) -> String {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()).display().to_string()
}

/// Every picture as `DIR/<name>.png`, and `DIR/pictures.json` listing file, title, width and height.
fn write_pngs(dir: &Path, pictures: &[&Picture]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("--png: creating the directory {}", dir.display()))?;
    let mut manifest = Vec::with_capacity(pictures.len());
    for picture in pictures {
        write_file(&dir.join(&picture.file_name), &picture.png, "--png")?;
        manifest.push(serde_json::json!({
            "file": picture.file_name,
            "title": picture.title,
            "description": picture.description,
            "width": picture.width,
            "height": picture.height,
        }));
    }
    let json = serde_json::to_string_pretty(&manifest).context("serialising pictures.json")?;
    write_file(&dir.join("pictures.json"), format!("{json}\n").as_bytes(), "--png")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_selection_is_one_based_and_checked() {
        assert_eq!(head_selection(None, None, 2, 3).unwrap().heads, vec![(1, 0), (1, 1), (1, 2)]);
        assert_eq!(head_selection(Some(1), Some(3), 2, 3).unwrap().heads, vec![(0, 2)]);
        let err = head_selection(Some(3), None, 2, 3).unwrap_err().to_string();
        assert!(err.contains("--layer 3") && err.contains("1..=2"), "{err}");
        let err = head_selection(None, Some(0), 2, 3).unwrap_err().to_string();
        assert!(err.contains("--head 0") && err.contains("1..=3"), "{err}");
        assert!(head_selection(Some(-1), None, 2, 3).unwrap_err().to_string().contains("--layer -1"));
    }

    #[test]
    fn neighbours_are_single_tokens_or_ids() {
        let tokenizer = Tokenizer::from(lushan_tokenizer::CharTokenizer::from_text("abc #").unwrap());
        assert_eq!(single_token(&tokenizer, "--neighbors", "b").unwrap(), 3);
        assert_eq!(single_token(&tokenizer, "--neighbors", "#2").unwrap(), 2);
        assert_eq!(single_token(&tokenizer, "--neighbors", "#").unwrap(), 1);
        let err = format!("{:#}", single_token(&tokenizer, "--neighbors", "ab").unwrap_err());
        assert!(err.contains("--neighbors \"ab\"") && err.contains("2 tokens"), "{err}");
        assert!(format!("{:#}", single_token(&tokenizer, "--neighbors", "#9").unwrap_err()).contains("out of range"));
        assert!(
            format!("{:#}", single_token(&tokenizer, "--neighbors", "z").unwrap_err()).contains("--neighbors \"z\"")
        );
    }
}
