#![allow(clippy::unwrap_used)]

use super::*;
use crate::sweep::SweepFlags;

fn spec(text: &str) -> SweepSpec {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sweep.toml");
    std::fs::write(&path, text).unwrap();
    SweepSpec::load(Some(&path), &SweepFlags::default()).unwrap()
}

const SPACE: &str = "[space]\nlearning_rate = { log_uniform = [1e-4, 1e-2] }\n";

#[test]
fn rungs_divide_by_eta_down_to_the_minimum() {
    assert_eq!(rungs(900, 3, 100), vec![100, 300, 900]);
    assert_eq!(rungs(900, 3, 101), vec![300, 900]);
    assert_eq!(rungs(1000, 2, 100), vec![125, 250, 500, 1000]);
    assert_eq!(rungs(5, 3, 1), vec![1, 5]);
}

#[test]
fn the_cost_counts_promoted_trials_from_where_they_stopped() {
    // 9 trials × 100 + 3 × (300 − 100) + 1 × (900 − 300)
    assert_eq!(halving_cost(9, &[100, 300, 900], 3), 900 + 600 + 600);
    assert_eq!(halving_cost(1, &[100, 300, 900], 3), 900);
    assert_eq!(survivors(9, 3), 3);
    assert_eq!(survivors(2, 3), 1);
}

#[test]
fn a_step_budget_buys_the_most_trials_that_fit() {
    let s = spec(&format!("method = \"halving\"\n[train]\nmax_iters = 900\n[budget]\ntotal_steps = 2100\n{SPACE}"));
    let h = s.halving.unwrap();
    assert_eq!((h.rungs.clone(), h.trials), (vec![100, 300, 900], 9));
    assert!(halving_cost(h.trials, &h.rungs, 3) <= 2100 && halving_cost(h.trials + 1, &h.rungs, 3) > 2100);
}

/// Plays a halving sweep with made-up results: trial i's value is `value(i)` at every rung.
fn play(spec: &SweepSpec, value: impl Fn(usize) -> f64) -> Journal {
    let mut journal = Journal::default();
    let busy = BTreeSet::new();
    for _ in 0..100 {
        match next_job(spec, &mut journal, &busy, true).unwrap() {
            NextJob::Launch(id) => {
                let last = *spec.halving.as_ref().unwrap().rungs.last().unwrap();
                let t = &mut journal.trials[id];
                t.steps = t.target_steps;
                t.best = Some(value(id));
                t.status = if t.target_steps == last { Status::Finished } else { Status::RungDone };
            }
            NextJob::Wait => unreachable!("nothing is busy"),
            NextJob::Done(_) => return journal,
        }
    }
    panic!("the sweep did not end");
}

#[test]
fn halving_promotes_the_best_third_at_each_rung() {
    let s = spec(&format!("method = \"halving\"\n[train]\nmax_iters = 900\n[budget]\ntrials = 9\n{SPACE}"));
    // Lower is better: trial 4 is the best, then 7, then 1.
    let values = [5.0, 3.0, 6.0, 7.0, 1.0, 8.0, 9.0, 2.0, 4.0];
    let journal = play(&s, |id| values[id]);
    let finished: Vec<usize> = journal.trials.iter().filter(|t| t.status == Status::Finished).map(|t| t.id).collect();
    assert_eq!(finished, vec![4]);
    let second: Vec<usize> = journal.trials.iter().filter(|t| t.rung >= 1).map(|t| t.id).collect();
    assert_eq!(second, vec![1, 4, 7]);
    assert_eq!(journal.trials.iter().map(|t| t.steps).sum::<u64>(), halving_cost(9, &[100, 300, 900], 3));
    let pruned = &journal.trials[0];
    assert_eq!(pruned.status, Status::Pruned);
    assert!(pruned.reason.contains("best 3 of 9") && pruned.reason.contains("100 steps"), "{}", pruned.reason);
}

#[test]
fn halving_on_accuracy_keeps_the_highest() {
    let s = spec(&format!(
        "method = \"halving\"\nmetric = \"val_accuracy\"\n[train]\nmax_iters = 90\n[budget]\ntrials = 3\n\
         [halving]\nmin_steps = 30\n{SPACE}"
    ));
    let journal = play(&s, |id| [0.5, 0.9, 0.7][id]);
    assert_eq!(journal.trials[1].status, Status::Finished);
    assert_eq!(journal.trials[0].status, Status::Pruned);
}

#[test]
fn a_rung_waits_for_its_running_trials_and_an_interrupted_trial_runs_again() {
    let s = spec(&format!("method = \"halving\"\n[train]\nmax_iters = 900\n[budget]\ntrials = 3\n{SPACE}"));
    let mut journal = Journal::default();
    assert_eq!(next_job(&s, &mut journal, &BTreeSet::new(), true).unwrap(), NextJob::Launch(0));
    journal.trials[0].status = Status::Running;
    let busy = BTreeSet::from([0]);
    assert_eq!(next_job(&s, &mut journal, &busy, true).unwrap(), NextJob::Launch(1));
    journal.trials[1].status = Status::RungDone;
    journal.trials[2].status = Status::RungDone;
    assert_eq!(next_job(&s, &mut journal, &busy, true).unwrap(), NextJob::Wait);
    // After a kill, the journal still says trial 0 is running: it is run again (from its resume state).
    assert_eq!(next_job(&s, &mut journal, &BTreeSet::new(), true).unwrap(), NextJob::Launch(0));
}

#[test]
fn random_stops_at_the_step_budget_counting_running_trials_in_full() {
    let s = spec(&format!("[train]\nmax_iters = 100\n[budget]\ntotal_steps = 250\n{SPACE}"));
    let mut journal = Journal::default();
    assert_eq!(next_job(&s, &mut journal, &BTreeSet::new(), true).unwrap(), NextJob::Launch(0));
    journal.trials[0].status = Status::Running;
    assert_eq!(next_job(&s, &mut journal, &BTreeSet::from([0]), true).unwrap(), NextJob::Launch(1));
    journal.trials[1].status = Status::Pruned;
    journal.trials[1].steps = 40; // stopped early: its unused steps go back to the budget
    assert_eq!(next_job(&s, &mut journal, &BTreeSet::from([0]), true).unwrap(), NextJob::Launch(2));
    journal.trials[2].status = Status::Running;
    assert_eq!(next_job(&s, &mut journal, &BTreeSet::from([0, 2]), true).unwrap(), NextJob::Wait);
    assert!(matches!(next_job(&s, &mut journal, &BTreeSet::new(), false).unwrap(), NextJob::Done(_)));
}

#[test]
fn grid_runs_each_point_once() {
    let s = spec("method = \"grid\"\n[train]\nmax_iters = 10\n[space]\nbatch_size = [4, 8]\nn_layer = [1, 2]\n");
    let mut journal = Journal::default();
    let mut seen = Vec::new();
    while let NextJob::Launch(id) = next_job(&s, &mut journal, &BTreeSet::new(), true).unwrap() {
        journal.trials[id].status = Status::Finished;
        seen.push(journal.trials[id].settings.clone());
    }
    assert_eq!(seen.len(), 4);
    assert_ne!(seen[0], seen[1]);
}

fn curve(points: &[(u64, f64)]) -> Curve {
    Curve { points: points.to_vec() }
}

#[test]
fn the_median_rule_stops_a_trial_worse_than_the_median_after_the_grace_period() {
    let s = spec(&format!("[train]\nmax_iters = 100\n[budget]\ntrials = 8\n[median]\ngrace_steps = 20\n{SPACE}"));
    let others = [
        curve(&[(10, 3.0), (20, 2.0), (40, 1.8)]),
        curve(&[(10, 3.0), (20, 2.2), (40, 2.0)]),
        curve(&[(10, 3.0), (20, 2.4), (40, 2.1)]),
    ];
    let refs: Vec<&Curve> = others.iter().collect();
    let bad = curve(&[(10, 3.5), (20, 2.5)]);
    let good = curve(&[(10, 3.5), (20, 2.1)]);
    assert!(median_stop(&s, &bad, &refs, 10).is_none(), "within the grace period");
    let reason = median_stop(&s, &bad, &refs, 20).unwrap();
    assert!(reason.contains("2.2000") && reason.contains("step 20"), "{reason}");
    assert!(median_stop(&s, &good, &refs, 20).is_none());
    // Too few others have reached the step to judge.
    assert!(median_stop(&s, &bad, &refs[..2], 20).is_none());
    let short: Vec<Curve> = others.iter().map(|c| curve(&c.points[..1])).collect();
    let short: Vec<&Curve> = short.iter().collect();
    assert!(median_stop(&s, &bad, &short, 20).is_none());
}

#[test]
fn the_median_rule_is_off_for_grid_and_halving_unless_asked() {
    let s = spec("method = \"grid\"\n[train]\nmax_iters = 10\n[space]\nbatch_size = [4, 8]\n");
    assert!(!s.median.enabled);
    let s = spec(&format!("[train]\nmax_iters = 100\n[budget]\ntrials = 2\n{SPACE}"));
    assert!(s.median.enabled && s.median.grace_steps == 25);
}

#[test]
fn the_preset_sweep_plans_seventeen_trials_within_its_budget() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/sweep/shakespeare.toml");
    let s = SweepSpec::load(Some(std::path::Path::new(path)), &SweepFlags::default()).unwrap();
    assert_eq!((s.method, s.base.max_iters, s.base.lr_decay_iters), (Method::Halving, 2000, 2000));
    let h = s.halving.unwrap();
    assert_eq!((h.rungs.clone(), h.trials), (vec![222, 666, 2000], 17));
    assert_eq!(halving_cost(h.trials, &h.rungs, h.eta), 7_328);
}
