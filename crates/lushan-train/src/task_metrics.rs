//! Task evaluation metrics for fine-tuning: classification reports (accuracy, macro-F1, per-class
//! precision/recall/F1, confusion matrix), exact match, and chrF.
//!
//! Conventions follow the tools people compare against, so numbers can be quoted next to theirs:
//! the classification report is scikit-learn's `classification_report` with `zero_division=0` and
//! `labels=range(len(labels))`, and chrF is sacrebleu's `CHRF()` with its defaults. The tests hard-code
//! reference values printed by `tools/metrics_reference.py`.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Name given to the extra class that collects ids outside the label list.
pub const UNKNOWN_LABEL: &str = "<unknown>";

/// Precision, recall, F1 and support of one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub label: String,
    /// Correct predictions of this class over all predictions of it; 0 when it is never predicted.
    pub precision: f64,
    /// Correct predictions of this class over its gold examples; 0 when it has none.
    pub recall: f64,
    /// Harmonic mean of precision and recall, `2·tp / (2·tp + fp + fn)`; 0 when that denominator is 0.
    pub f1: f64,
    /// Number of gold examples of this class.
    pub support: u64,
}

/// Precision, recall and F1 averaged over classes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AverageMetrics {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

/// Everything scikit-learn's `classification_report` says, plus the confusion matrix.
///
/// `Display` prints the report in scikit-learn's layout (two decimals, or the formatter's precision:
/// `format!("{report:.4}")`), followed by the confusion matrix with label names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationReport {
    /// One entry per class, in label order (class `i` is label id `i`).
    pub classes: Vec<ClassMetrics>,
    /// Fraction of examples whose predicted class is the gold class; 0 when there are none.
    pub accuracy: f64,
    /// Unweighted mean of the per-class F1 scores (same as `macro_avg.f1`).
    pub macro_f1: f64,
    /// Unweighted mean over every class, including classes with no support.
    pub macro_avg: AverageMetrics,
    /// Mean weighted by support.
    pub weighted_avg: AverageMetrics,
    /// Number of (gold, predicted) pairs counted.
    pub samples: u64,
    /// `confusion[gold][predicted]`: how many examples of class `gold` were predicted as `predicted`.
    pub confusion: Vec<Vec<u64>>,
}

/// `numerator / denominator`, or 0 when the denominator is 0 (scikit-learn's `zero_division=0`).
fn ratio(numerator: u64, denominator: u64) -> f64 {
    if denominator == 0 { 0.0 } else { numerator as f64 / denominator as f64 }
}

impl ClassificationReport {
    /// Builds the report from label names and parallel gold / predicted label ids.
    ///
    /// Every label gets a row, also one that occurs in neither list (it counts as 0 in the macro average, as
    /// in scikit-learn with `labels=range(len(labels))`). Ids outside `0..labels.len()` are not dropped: they
    /// are all counted as one extra class named [`UNKNOWN_LABEL`], appended last. Only the first
    /// `min(gold.len(), predicted.len())` pairs are counted; callers pass lists of equal length.
    pub fn from_predictions(labels: &[String], gold: &[u32], predicted: &[u32]) -> ClassificationReport {
        let known = labels.len();
        let index = |id: u32| usize::try_from(id).ok().filter(|&i| i < known).unwrap_or(known);
        let has_unknown = gold.iter().zip(predicted).any(|(&g, &p)| index(g) == known || index(p) == known);
        let k = known + usize::from(has_unknown);

        let mut confusion = vec![vec![0u64; k]; k];
        let mut samples = 0u64;
        for (&g, &p) in gold.iter().zip(predicted) {
            confusion[index(g)][index(p)] += 1;
            samples += 1;
        }

        let names = labels.iter().cloned().chain(has_unknown.then(|| UNKNOWN_LABEL.to_string()));
        let classes: Vec<ClassMetrics> = names
            .enumerate()
            .map(|(c, label)| {
                let tp = confusion[c][c];
                let support: u64 = confusion[c].iter().sum();
                let predicted_as: u64 = confusion.iter().map(|row| row[c]).sum();
                let (fp, fn_) = (predicted_as - tp, support - tp);
                ClassMetrics {
                    label,
                    precision: ratio(tp, predicted_as),
                    recall: ratio(tp, support),
                    f1: ratio(2 * tp, 2 * tp + fp + fn_),
                    support,
                }
            })
            .collect();

        let correct: u64 = (0..k).map(|c| confusion[c][c]).sum();
        let macro_avg = average(&classes, |_| 1.0);
        let weighted_avg = average(&classes, |m| m.support as f64);
        ClassificationReport {
            accuracy: ratio(correct, samples),
            macro_f1: macro_avg.f1,
            macro_avg,
            weighted_avg,
            samples,
            confusion,
            classes,
        }
    }

    /// The label names, in class order.
    pub fn labels(&self) -> impl Iterator<Item = &str> {
        self.classes.iter().map(|m| m.label.as_str())
    }

    /// `confusion[gold][predicted]`, or 0 outside the matrix.
    pub fn count(&self, gold: usize, predicted: usize) -> u64 {
        self.confusion.get(gold).and_then(|row| row.get(predicted)).copied().unwrap_or(0)
    }
}

/// Weighted mean of precision, recall and F1 over classes; all 0 when the weights sum to 0.
fn average(classes: &[ClassMetrics], weight: impl Fn(&ClassMetrics) -> f64) -> AverageMetrics {
    let total: f64 = classes.iter().map(&weight).sum();
    if total == 0.0 {
        return AverageMetrics { precision: 0.0, recall: 0.0, f1: 0.0 };
    }
    let mean = |field: fn(&ClassMetrics) -> f64| classes.iter().map(|m| field(m) * weight(m)).sum::<f64>() / total;
    AverageMetrics { precision: mean(|m| m.precision), recall: mean(|m| m.recall), f1: mean(|m| m.f1) }
}

impl fmt::Display for ClassificationReport {
    /// scikit-learn's `classification_report` text, then the confusion matrix.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = f.precision().unwrap_or(2);
        const LAST_HEADING: &str = "weighted avg";
        let width = self.labels().map(|l| l.chars().count()).max().unwrap_or(0).max(LAST_HEADING.len()).max(digits);
        writeln!(f, "{:>width$}  {:>9} {:>9} {:>9} {:>9}", "", "precision", "recall", "f1-score", "support")?;
        writeln!(f)?;
        for m in &self.classes {
            let (p, r, f1, s) = (m.precision, m.recall, m.f1, m.support);
            writeln!(f, "{:>width$}  {p:>9.digits$} {r:>9.digits$} {f1:>9.digits$} {s:>9}", m.label)?;
        }
        writeln!(f)?;
        let (acc, n) = (self.accuracy, self.samples);
        writeln!(f, "{:>width$}  {:>9} {:>9} {acc:>9.digits$} {n:>9}", "accuracy", "", "")?;
        for (name, a) in [("macro avg", &self.macro_avg), (LAST_HEADING, &self.weighted_avg)] {
            let (p, r, f1) = (a.precision, a.recall, a.f1);
            writeln!(f, "{name:>width$}  {p:>9.digits$} {r:>9.digits$} {f1:>9.digits$} {n:>9}")?;
        }
        writeln!(f)?;
        self.fmt_confusion(f)
    }
}

impl ClassificationReport {
    /// The confusion matrix as text: gold classes on rows, predicted classes on columns.
    fn fmt_confusion(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "confusion matrix (rows: gold, columns: predicted)")?;
        let k = self.classes.len();
        let name_width = self.labels().map(|l| l.chars().count()).max().unwrap_or(0).max("gold".len());
        let widest_count = self.confusion.iter().flatten().max().copied().unwrap_or(0).to_string().len();
        let col_width: Vec<usize> = self.labels().map(|l| l.chars().count().max(widest_count)).collect();
        write!(f, "{:>name_width$}", "gold")?;
        for (label, w) in self.labels().zip(&col_width) {
            write!(f, "  {label:>w$}")?;
        }
        writeln!(f)?;
        for (g, label) in self.labels().enumerate() {
            write!(f, "{label:>name_width$}")?;
            for (p, w) in (0..k).zip(&col_width) {
                write!(f, "  {:>w$}", self.count(g, p))?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------------
// Exact match

/// Whether `prediction` equals `reference` after trimming whitespace at both ends.
pub fn exact_match(prediction: &str, reference: &str) -> bool {
    prediction.trim() == reference.trim()
}

/// Whether `prediction` equals `reference` after trimming and collapsing every run of internal whitespace to
/// one space ("a \n b" matches "a b"). Case and punctuation still count.
pub fn exact_match_normalized(prediction: &str, reference: &str) -> bool {
    prediction.split_whitespace().eq(reference.split_whitespace())
}

// ---------------------------------------------------------------------------------------------------------
// chrF (Popović 2015), as sacrebleu's `CHRF()` computes it

/// Character n-gram orders (sacrebleu's `CHAR_ORDER`).
pub const CHRF_CHAR_ORDER: usize = 6;
/// Recall weight (sacrebleu's `BETA`).
pub const CHRF_BETA: f64 = 2.0;

/// Per order: hypothesis n-grams, reference n-grams, matched n-grams.
type ChrfStats = [[u64; 3]; CHRF_CHAR_ORDER];

/// Whitespace as Python's `str.split()` sees it: Unicode White_Space plus the separators U+001C..U+001F.
fn is_python_whitespace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// n-gram counts for every order 1..=6 of `text`'s characters (Unicode scalar values), whitespace removed.
fn char_ngrams(chars: &[char]) -> Vec<HashMap<&[char], u64>> {
    (1..=CHRF_CHAR_ORDER)
        .map(|n| {
            let mut counts: HashMap<&[char], u64> = HashMap::new();
            for gram in chars.windows(n) {
                *counts.entry(gram).or_insert(0) += 1;
            }
            counts
        })
        .collect()
}

fn chrf_pair_stats(hypothesis: &str, reference: &str) -> ChrfStats {
    let strip = |s: &str| s.chars().filter(|&c| !is_python_whitespace(c)).collect::<Vec<char>>();
    let (hyp_chars, ref_chars) = (strip(hypothesis), strip(reference));
    let (hyp, refs) = (char_ngrams(&hyp_chars), char_ngrams(&ref_chars));
    let mut stats = [[0u64; 3]; CHRF_CHAR_ORDER];
    for ((h, r), out) in hyp.iter().zip(&refs).zip(&mut stats) {
        let hyp_count: u64 = h.values().sum();
        let matched: u64 = h.iter().map(|(gram, &c)| r.get(gram).map_or(0, |&rc| c.min(rc))).sum();
        // Like sacrebleu, hypothesis n-grams do not count when the reference has none of that order.
        *out = [if r.is_empty() { 0 } else { hyp_count }, r.values().sum(), matched];
    }
    stats
}

/// chrF on a 0–100 scale from summed statistics, averaging precision and recall over the orders that occur
/// on both sides (sacrebleu's effective order) before taking the F-beta score.
fn chrf_from_stats(stats: &ChrfStats) -> f64 {
    let factor = CHRF_BETA * CHRF_BETA;
    let (mut avg_prec, mut avg_rec, mut effective_order) = (0.0f64, 0.0f64, 0u32);
    for &[n_hyp, n_ref, n_match] in stats {
        if n_hyp > 0 && n_ref > 0 {
            avg_prec += n_match as f64 / n_hyp as f64;
            avg_rec += n_match as f64 / n_ref as f64;
            effective_order += 1;
        }
    }
    if effective_order == 0 {
        return 0.0;
    }
    avg_prec /= f64::from(effective_order);
    avg_rec /= f64::from(effective_order);
    if avg_prec + avg_rec == 0.0 {
        return 0.0;
    }
    100.0 * ((1.0 + factor) * avg_prec * avg_rec / (factor * avg_prec + avg_rec))
}

/// Corpus-level chrF (0–100), exactly as sacrebleu's `CHRF().corpus_score(hypotheses, [references])`:
/// character 6-grams, no word n-grams, beta 2, whitespace removed, case kept, n-gram statistics summed over
/// all sentence pairs before the score. Characters are Unicode scalar values, with no normalisation
/// (a precomposed "é" and "e" + combining accent differ).
///
/// Pairs are taken in order; if the lists differ in length, the missing side is an empty string (a missing
/// hypothesis costs recall, an extra hypothesis counts nothing).
pub fn chrf(hypotheses: &[String], references: &[String]) -> f64 {
    let mut total: ChrfStats = [[0; 3]; CHRF_CHAR_ORDER];
    for i in 0..hypotheses.len().max(references.len()) {
        let hyp = hypotheses.get(i).map_or("", String::as_str);
        let reference = references.get(i).map_or("", String::as_str);
        for (sum, add) in total.iter_mut().zip(chrf_pair_stats(hyp, reference)) {
            for (s, a) in sum.iter_mut().zip(add) {
                *s += a;
            }
        }
    }
    chrf_from_stats(&total)
}

/// Sentence-level chrF (0–100) of one hypothesis against one reference, as sacrebleu's
/// `CHRF().sentence_score(hypothesis, [reference])`.
pub fn chrf_sentence(hypothesis: &str, reference: &str) -> f64 {
    chrf_from_stats(&chrf_pair_stats(hypothesis, reference))
}

#[cfg(test)]
mod tests {
    //! Reference values below are printed by `venv/bin/python tools/metrics_reference.py`
    //! (scikit-learn 1.9.1, sacrebleu 2.6.0); the cases here mirror the ones in that script.

    use super::*;

    fn names(labels: &[&str]) -> Vec<String> {
        labels.iter().map(|s| s.to_string()).collect()
    }

    fn strings(texts: &[&str]) -> Vec<String> {
        names(texts)
    }

    #[track_caller]
    fn close(actual: f64, expected: f64) {
        assert!((actual - expected).abs() <= 1e-12, "got {actual}, expected {expected}");
    }

    #[track_caller]
    fn class(m: &ClassMetrics, label: &str, (p, r, f1, support): (f64, f64, f64, u64)) {
        assert_eq!(m.label, label);
        close(m.precision, p);
        close(m.recall, r);
        close(m.f1, f1);
        assert_eq!(m.support, support, "support of {label}");
    }

    #[track_caller]
    fn avg(a: &AverageMetrics, (p, r, f1): (f64, f64, f64)) {
        close(a.precision, p);
        close(a.recall, r);
        close(a.f1, f1);
    }

    /// 3 classes, "bird" never predicted (sklearn case `never_predicted`).
    fn never_predicted() -> ClassificationReport {
        ClassificationReport::from_predictions(
            &names(&["cat", "dog", "bird"]),
            &[0, 0, 0, 1, 1, 2, 2, 0, 1, 2],
            &[0, 1, 0, 1, 1, 0, 1, 0, 0, 1],
        )
    }

    /// "neutral" predicted but never gold, "mixed" nowhere, a non-ASCII name (sklearn case `unseen_classes`).
    fn unseen_classes() -> ClassificationReport {
        ClassificationReport::from_predictions(
            &names(&["négatif", "positif", "neutral", "mixed"]),
            &[0, 1, 1, 0, 1, 0, 1, 1],
            &[0, 1, 2, 2, 1, 1, 1, 0],
        )
    }

    #[test]
    fn classification_matches_sklearn_with_a_class_never_predicted() {
        let r = never_predicted();
        close(r.accuracy, 0.5);
        close(r.macro_f1, 0.38888888888888884);
        avg(&r.macro_avg, (0.3333333333333333, 0.47222222222222215, 0.38888888888888884));
        avg(&r.weighted_avg, (0.36, 0.5, 0.41666666666666663));
        class(&r.classes[0], "cat", (0.6, 0.75, 0.6666666666666666, 4));
        class(&r.classes[1], "dog", (0.4, 0.6666666666666666, 0.5, 3));
        class(&r.classes[2], "bird", (0.0, 0.0, 0.0, 3));
        assert_eq!(r.confusion, vec![vec![3, 1, 0], vec![1, 2, 0], vec![1, 2, 0]]);
        assert_eq!(r.samples, 10);
        assert_eq!(r.classes.len(), 3);
    }

    #[test]
    fn classification_matches_sklearn_with_unseen_classes() {
        let r = unseen_classes();
        close(r.accuracy, 0.5);
        close(r.macro_f1, 0.26666666666666666);
        avg(&r.macro_avg, (0.3125, 0.23333333333333334, 0.26666666666666666));
        avg(&r.weighted_avg, (0.65625, 0.5, 0.5666666666666667));
        class(&r.classes[0], "négatif", (0.5, 0.3333333333333333, 0.4, 3));
        class(&r.classes[1], "positif", (0.75, 0.6, 0.6666666666666666, 5));
        class(&r.classes[2], "neutral", (0.0, 0.0, 0.0, 0));
        class(&r.classes[3], "mixed", (0.0, 0.0, 0.0, 0));
        assert_eq!(r.confusion, vec![vec![1, 1, 1, 0], vec![1, 3, 1, 0], vec![0; 4], vec![0; 4]]);
    }

    #[test]
    fn classification_perfect_binary() {
        let r = ClassificationReport::from_predictions(&names(&["no", "yes"]), &[1, 0, 1, 1], &[1, 0, 1, 1]);
        close(r.accuracy, 1.0);
        close(r.macro_f1, 1.0);
        avg(&r.weighted_avg, (1.0, 1.0, 1.0));
        class(&r.classes[0], "no", (1.0, 1.0, 1.0, 1));
        class(&r.classes[1], "yes", (1.0, 1.0, 1.0, 3));
        assert_eq!(r.confusion, vec![vec![1, 0], vec![0, 3]]);
    }

    #[test]
    fn display_matches_sklearn_classification_report() {
        // sklearn's classification_report(..., zero_division=0, digits=2 / 4) for the two cases above.
        let never_2 = "              precision    recall  f1-score   support\n\n         cat       0.60      0.75      0.67         4\n         dog       0.40      0.67      0.50         3\n        bird       0.00      0.00      0.00         3\n\n    accuracy                           0.50        10\n   macro avg       0.33      0.47      0.39        10\nweighted avg       0.36      0.50      0.42        10\n";
        let never_4 = "              precision    recall  f1-score   support\n\n         cat     0.6000    0.7500    0.6667         4\n         dog     0.4000    0.6667    0.5000         3\n        bird     0.0000    0.0000    0.0000         3\n\n    accuracy                         0.5000        10\n   macro avg     0.3333    0.4722    0.3889        10\nweighted avg     0.3600    0.5000    0.4167        10\n";
        // 0.65625 is a binary tie at 4 digits: Python rounds it to even ("0.6562"), and so must we.
        let unseen_2 = "              precision    recall  f1-score   support\n\n     négatif       0.50      0.33      0.40         3\n     positif       0.75      0.60      0.67         5\n     neutral       0.00      0.00      0.00         0\n       mixed       0.00      0.00      0.00         0\n\n    accuracy                           0.50         8\n   macro avg       0.31      0.23      0.27         8\nweighted avg       0.66      0.50      0.57         8\n";
        let unseen_4 = "              precision    recall  f1-score   support\n\n     négatif     0.5000    0.3333    0.4000         3\n     positif     0.7500    0.6000    0.6667         5\n     neutral     0.0000    0.0000    0.0000         0\n       mixed     0.0000    0.0000    0.0000         0\n\n    accuracy                         0.5000         8\n   macro avg     0.3125    0.2333    0.2667         8\nweighted avg     0.6562    0.5000    0.5667         8\n";
        for (report, two, four) in [(never_predicted(), never_2, never_4), (unseen_classes(), unseen_2, unseen_4)] {
            let text = report.to_string();
            assert!(text.starts_with(two), "{text}");
            let text = format!("{report:.4}");
            assert!(text.starts_with(four), "{text}");
        }
    }

    #[test]
    fn display_prints_the_confusion_matrix_with_names() {
        let text = never_predicted().to_string();
        let matrix = text.split("confusion matrix (rows: gold, columns: predicted)\n").nth(1).expect("matrix");
        assert_eq!(matrix, "gold  cat  dog  bird\n cat    3    1     0\n dog    1    2     0\nbird    1    2     0\n");
    }

    #[test]
    fn out_of_range_ids_become_one_unknown_class() {
        // Gold 7 and predicted 9 are both outside the 2 labels: they land in one extra class.
        let r = ClassificationReport::from_predictions(&names(&["a", "b"]), &[0, 1, 7, 1], &[0, 9, 1, 1]);
        assert_eq!(r.labels().collect::<Vec<_>>(), ["a", "b", UNKNOWN_LABEL]);
        assert_eq!(r.confusion, vec![vec![1, 0, 0], vec![0, 1, 1], vec![0, 1, 0]]);
        close(r.accuracy, 0.5);
        class(&r.classes[2], UNKNOWN_LABEL, (0.0, 0.0, 0.0, 1));
        // In-range ids add no extra class.
        let r = ClassificationReport::from_predictions(&names(&["a", "b"]), &[0, 1], &[1, 1]);
        assert_eq!(r.classes.len(), 2);
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        let empty = ClassificationReport::from_predictions(&[], &[], &[]);
        assert_eq!((empty.accuracy, empty.macro_f1, empty.samples), (0.0, 0.0, 0));
        assert!(empty.to_string().contains("accuracy"));
        // Labels but no samples: rows of zeros.
        let r = ClassificationReport::from_predictions(&names(&["x", "y"]), &[], &[]);
        assert_eq!((r.accuracy, r.classes.len()), (0.0, 2));
        // Unequal lengths: only the common prefix counts.
        let r = ClassificationReport::from_predictions(&names(&["x", "y"]), &[0, 1, 1], &[0]);
        assert_eq!((r.samples, r.accuracy), (1, 1.0));
        // A deserialized report with a ragged matrix still prints.
        let mut broken = never_predicted();
        broken.confusion.truncate(1);
        assert!(broken.to_string().contains("bird    0    0     0"));
        assert_eq!(broken.count(5, 5), 0);
    }

    #[test]
    fn report_round_trips_through_json() -> serde_json::Result<()> {
        let r = unseen_classes();
        let json = serde_json::to_string(&r)?;
        assert!(json.contains("\"macro_f1\"") && json.contains("\"confusion\":[[1,1,1,0]"), "{json}");
        let back: ClassificationReport = serde_json::from_str(&json)?;
        // serde_json's default float parser may land one ulp away (no `float_roundtrip` feature): compare
        // the numbers closely and everything else exactly.
        assert_eq!((&back.confusion, back.samples), (&r.confusion, r.samples));
        for (b, m) in back.classes.iter().zip(&r.classes) {
            class(b, &m.label, (m.precision, m.recall, m.f1, m.support));
        }
        assert_eq!(back.classes.len(), r.classes.len());
        close(back.accuracy, r.accuracy);
        close(back.macro_f1, r.macro_f1);
        avg(&back.macro_avg, (r.macro_avg.precision, r.macro_avg.recall, r.macro_avg.f1));
        avg(&back.weighted_avg, (r.weighted_avg.precision, r.weighted_avg.recall, r.weighted_avg.f1));
        Ok(())
    }

    #[test]
    fn exact_match_trims_and_normalizes() {
        assert!(exact_match("  Paris\n", "Paris"));
        assert!(exact_match("", " \t"));
        assert!(!exact_match("paris", "Paris"));
        assert!(!exact_match("New  York", "New York"));
        assert!(exact_match_normalized("New  York", "New York"));
        assert!(exact_match_normalized(" New\n\tYork ", "New York"));
        assert!(!exact_match_normalized("NewYork", "New York"));
        assert!(!exact_match_normalized("New York.", "New York"));
    }

    #[test]
    fn chrf_matches_sacrebleu_on_english() {
        let hyps = strings(&[
            "The cat sat on the mat.",
            "A quick brown fox jumps over the lazy dog",
            "It is raining today, so we stay at home.",
        ]);
        let refs = strings(&[
            "The cat is sitting on the mat.",
            "The quick brown fox jumped over the lazy dog.",
            "Today it rains, so we are staying home.",
        ]);
        close(chrf(&hyps, &refs), 57.24192499717138);
        let sentences = [49.6485170311433, 76.83490465534368, 40.018048051627034];
        for ((h, r), expected) in hyps.iter().zip(&refs).zip(sentences) {
            close(chrf_sentence(h, r), expected);
        }
    }

    #[test]
    fn chrf_matches_sacrebleu_on_spanish_with_accents() {
        let hyps = strings(&[
            "El niño comió una manzana en la mañana.",
            "¿Dónde está la estación de autobús?",
            "Mi corazón late rápido cuando corro.",
        ]);
        let refs = strings(&[
            "El niño se comió una manzana por la mañana.",
            "¿Dónde queda la estación de autobuses?",
            "Mi corazon late rapido cuando corro.",
        ]);
        close(chrf(&hyps, &refs), 69.22287037255869);
        let sentences = [70.35672391791145, 62.86151991951393, 74.62718113811923];
        for ((h, r), expected) in hyps.iter().zip(&refs).zip(sentences) {
            close(chrf_sentence(h, r), expected);
        }
        close(chrf_sentence("ñandú", "nandu"), 28.666666666666668);
    }

    #[test]
    fn chrf_edge_cases_match_sacrebleu() {
        let hyps = strings(&["ab", "a b c", "", "", "xyz", "café"]);
        let refs = strings(&["abc", "abc", "", "hello", "", "cafe\u{301}"]);
        close(chrf(&hyps, &refs), 32.49136442141624);
        let sentences = [63.636363636363626, 100.0, 0.0, 0.0, 0.0, 37.73656898656898];
        for ((h, r), expected) in hyps.iter().zip(&refs).zip(sentences) {
            close(chrf_sentence(h, r), expected);
        }
        close(chrf_sentence("identical sentence", "identical sentence"), 100.0);
        close(chrf_sentence("", ""), 0.0);
        close(chrf_sentence("", "non-empty"), 0.0);
        close(chrf_sentence("non-empty", ""), 0.0);
        // Python's str.split() treats U+001C as whitespace, so sacrebleu drops it.
        close(chrf_sentence("ab\u{1c}cd", "abcd"), 100.0);
        // NFC vs NFD: no normalisation, code points are compared.
        close(chrf_sentence("café au lait", "cafe\u{301} au lait"), 49.453426588098395);
        close(chrf(&[], &[]), 0.0);
    }

    #[test]
    fn chrf_pads_unequal_lists_with_empty_strings() {
        let hyps = strings(&["The cat sat on the mat."]);
        let refs = strings(&["The cat sat on the mat.", "Another reference"]);
        let padded = strings(&["The cat sat on the mat.", ""]);
        close(chrf(&hyps, &refs), chrf(&padded, &refs));
        assert!(chrf(&hyps, &refs) < 100.0);
        // An extra hypothesis with no reference adds nothing.
        close(chrf(&refs, &hyps), 100.0);
    }
}
