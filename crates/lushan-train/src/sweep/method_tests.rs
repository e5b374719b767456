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
const SYNC: &str = "[halving]\nschedule = \"sync\"\n";

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
    let s =
        spec(&format!("method = \"halving\"\n[train]\nmax_iters = 900\n[budget]\ntotal_steps = 2100\n{SPACE}{SYNC}"));
    let h = s.halving.unwrap();
    assert_eq!((h.schedule, h.rungs.clone(), h.trials), (Schedule::Sync, vec![100, 300, 900], Some(9)));
    assert!(halving_cost(9, &h.rungs, 3) <= 2100 && halving_cost(10, &h.rungs, 3) > 2100);
}

/// Ends trial `id`'s run at its target as the CLI records it, with `value` its best so far.
fn reach_target(spec: &SweepSpec, journal: &mut Journal, id: usize, value: f64) {
    let last = *spec.halving.as_ref().unwrap().rungs.last().unwrap();
    let t = &mut journal.trials[id];
    t.steps = t.target_steps;
    t.best = Some(t.best.map_or(value, |b| b.min(value)));
    t.status = if t.target_steps == last { Status::Finished } else { Status::RungDone };
    t.complete_rung();
}

/// Plays a halving sweep one trial at a time with made-up results: trial i's value is `value(i)` at
/// every rung. Also returns the order of the pieces run: (trial, its target steps).
fn play_in_order(spec: &SweepSpec, value: impl Fn(usize) -> f64) -> (Journal, Vec<(usize, u64)>) {
    let mut journal = Journal::default();
    let mut order = Vec::new();
    let busy = BTreeSet::new();
    for _ in 0..1000 {
        match next_job(spec, &mut journal, &busy, true).unwrap() {
            NextJob::Launch(id) => {
                order.push((id, journal.trials[id].target_steps));
                reach_target(spec, &mut journal, id, value(id));
            }
            NextJob::Wait => unreachable!("nothing is busy"),
            NextJob::Done(_) => return (journal, order),
        }
    }
    panic!("the sweep did not end");
}

fn play(spec: &SweepSpec, value: impl Fn(usize) -> f64) -> Journal {
    play_in_order(spec, value).0
}

#[test]
fn halving_promotes_the_best_third_at_each_rung() {
    let s = spec(&format!("method = \"halving\"\n[train]\nmax_iters = 900\n[budget]\ntrials = 9\n{SPACE}{SYNC}"));
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
         [halving]\nmin_steps = 30\nschedule = \"sync\"\n{SPACE}"
    ));
    let journal = play(&s, |id| [0.5, 0.9, 0.7][id]);
    assert_eq!(journal.trials[1].status, Status::Finished);
    assert_eq!(journal.trials[0].status, Status::Pruned);
}

#[test]
fn a_rung_waits_for_its_running_trials_and_an_interrupted_trial_runs_again() {
    let s = spec(&format!("method = \"halving\"\n[train]\nmax_iters = 900\n[budget]\ntrials = 3\n{SPACE}{SYNC}"));
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
fn the_preset_sweep_is_asha_over_two_rungs_within_its_budget() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/sweep/shakespeare.toml");
    let s = SweepSpec::load(Some(std::path::Path::new(path)), &SweepFlags::default()).unwrap();
    assert_eq!((s.method, s.base.max_iters, s.base.lr_decay_iters), (Method::Halving, 2000, 2000));
    let h = s.halving.clone().unwrap();
    assert_eq!((h.schedule, h.eta, h.rungs.clone(), h.trials), (Schedule::Async, 3, vec![666, 2000], None));
    // Played with made-up results (each trial a little better than the one before), it spends at most its
    // budget, and its first full-length trial ends after three first-rung results and one promotion.
    let (journal, order) = play_in_order(&s, |id| 2.0 - id as f64 / 100.0);
    let steps: u64 = journal.trials.iter().map(|t| t.steps).sum();
    assert!(steps <= 8000 && steps + 666 > 8000, "{steps}");
    assert_eq!(spent_until_first(&order, 2000), 3 * 666 + 1334);
}

/// The steps spent when the first piece that trains a trial to `target` ends.
fn spent_until_first(order: &[(usize, u64)], target: u64) -> u64 {
    let mut reached = std::collections::BTreeMap::new();
    let mut spent = 0;
    for &(id, to) in order {
        spent += to - reached.insert(id, to).unwrap_or(0);
        if to == target {
            return spent;
        }
    }
    panic!("no trial reached {target}");
}

fn asha(budget: &str) -> SweepSpec {
    spec(&format!("method = \"halving\"\n[train]\nmax_iters = 900\n[budget]\n{budget}\n{SPACE}"))
}

#[test]
fn asha_promotes_the_best_of_the_first_eta_results_as_soon_as_they_are_in() {
    let s = asha("trials = 30");
    assert_eq!(s.halving.as_ref().map(|h| (h.schedule, h.rungs.clone())), Some((Schedule::Async, vec![100, 300, 900])));
    let mut journal = Journal::default();
    let idle = BTreeSet::new();
    for (id, value) in [(0, 5.0), (1, 3.0)] {
        assert_eq!(next_job(&s, &mut journal, &idle, true).unwrap(), NextJob::Launch(id), "a new trial");
        reach_target(&s, &mut journal, id, value);
    }
    assert_eq!(next_job(&s, &mut journal, &idle, true).unwrap(), NextJob::Launch(2), "two results promote none");
    reach_target(&s, &mut journal, 2, 4.0);
    // Three results: the best of them, trial 1, goes on to 300 steps from where it stopped.
    assert_eq!(next_job(&s, &mut journal, &idle, true).unwrap(), NextJob::Launch(1));
    assert_eq!((journal.trials.len(), journal.trials[1].rung, journal.trials[1].target_steps), (3, 1, 300));
    assert_eq!(journal.trials[1].status, Status::Pending);
    reach_target(&s, &mut journal, 1, 2.5);
    // Rung 1 has one result (no top third yet) and the first rung's best, trial 1, went on already.
    assert_eq!(next_job(&s, &mut journal, &idle, true).unwrap(), NextJob::Launch(3));
    reach_target(&s, &mut journal, 3, 9.0);
    assert_eq!(next_job(&s, &mut journal, &idle, true).unwrap(), NextJob::Launch(4));
    // A fifth result better than all: the top one of five is now trial 4, and it goes on too — a second
    // promotion from five results, where synchronous halving would promote one.
    reach_target(&s, &mut journal, 4, 1.0);
    assert_eq!(next_job(&s, &mut journal, &idle, true).unwrap(), NextJob::Launch(4));
    assert_eq!(journal.trials[1].rung_results, vec![Some(3.0), Some(2.5)], "each rung's value is kept");
}

#[test]
fn asha_looks_at_the_highest_rung_first() {
    let s = asha("trials = 30");
    let h = s.halving.clone().unwrap();
    let record = |id: usize, rung: usize, results: &[f64], status: Status| {
        let mut t = TrialRecord::new(id, Default::default(), h.rungs[rung]);
        (t.rung, t.status, t.rung_results) = (rung, status, results.iter().map(|&v| Some(v)).collect());
        t
    };
    let mut trials: Vec<TrialRecord> = vec![
        record(0, 1, &[1.0, 0.5], Status::RungDone),
        record(1, 1, &[2.0, 0.9], Status::RungDone),
        record(2, 1, &[3.0, 0.7], Status::RungDone),
    ];
    trials.extend((3..12).map(|id| record(id, 0, &[id as f64], Status::RungDone)));
    assert_eq!(asha_promotion(&trials, &h, Direction::Minimize), Some((0, 1)));
    trials[0].rung = 2;
    trials[0].status = Status::Running;
    // Rung 1's top third (1 of 3) went on already; the first rung's top 4 of 12 are trials 0, 1, 2 (gone
    // on) and 3.
    assert_eq!(asha_promotion(&trials, &h, Direction::Minimize), Some((3, 0)));
    // On a metric to maximise, rung 1's top third is trial 1 (0.9), not promoted yet.
    assert_eq!(asha_promotion(&trials, &h, Direction::Maximize), Some((1, 1)));
}

#[test]
fn asha_never_promotes_a_trial_twice_and_reaches_the_last_rung() {
    let s = asha("trials = 27");
    // A fixed scramble of the values, so that results arrive in no particular order.
    let (journal, order) = play_in_order(&s, |id| ((id * 17) % 27) as f64);
    let mut pieces = order.clone();
    pieces.sort();
    pieces.dedup();
    assert_eq!(pieces.len(), order.len(), "a piece ran twice: {order:?}");
    assert_eq!(journal.trials.len(), 27);
    let finished: Vec<&TrialRecord> = journal.trials.iter().filter(|t| t.status == Status::Finished).collect();
    assert!(!finished.is_empty() && finished.iter().all(|t| t.steps == 900));
    for t in &journal.trials {
        assert_eq!(t.rung_results.len(), t.rung + 1, "{t:?}");
        assert!(matches!(t.status, Status::Finished | Status::Pruned), "{t:?}");
    }
    // The best third of the 27 first-rung results all went on (and a few more, promoted before better
    // results came in).
    let promoted = journal.trials.iter().filter(|t| t.rung >= 1).count();
    assert!((9..27).contains(&promoted), "{promoted}");
    let left = journal.trials.iter().find(|t| t.status == Status::Pruned).unwrap();
    assert!(left.reason.contains("asha: not promoted from rung") && left.reason.contains("all 27 trials"), "{left:?}");
}

#[test]
fn asha_stops_before_the_next_piece_passes_the_step_budget() {
    // 9 × 100 + 3 × 200 + 600 = 2100: the least a full-length trial needs.
    let s = asha("total_steps = 2300");
    let (journal, order) = play_in_order(&s, |id| id as f64);
    let steps: u64 = journal.trials.iter().map(|t| t.steps).sum();
    assert!(steps <= 2300, "{steps}");
    assert!(order.iter().any(|&(_, target)| target == 900), "{order:?}");
    // Running trials count at their targets; steps a stopped trial did not use go back to the budget.
    let s = asha("total_steps = 2100");
    let mut journal = Journal::default();
    let mut busy = BTreeSet::new();
    for id in 0..21 {
        assert_eq!(next_job(&s, &mut journal, &busy, true).unwrap(), NextJob::Launch(id));
        journal.trials[id].status = Status::Running;
        busy.insert(id);
    }
    assert_eq!(next_job(&s, &mut journal, &busy, true).unwrap(), NextJob::Wait);
    journal.trials[20].status = Status::Failed;
    journal.trials[20].steps = 0;
    busy.remove(&20);
    assert_eq!(next_job(&s, &mut journal, &busy, true).unwrap(), NextJob::Launch(21));
    // The wall time: nothing new starts, and the trials waiting at a rung are left for --resume.
    let mut journal = Journal::default();
    assert_eq!(next_job(&s, &mut journal, &BTreeSet::new(), true).unwrap(), NextJob::Launch(0));
    reach_target(&s, &mut journal, 0, 1.0);
    assert!(matches!(next_job(&s, &mut journal, &BTreeSet::new(), false).unwrap(), NextJob::Done(_)));
    assert_eq!(journal.trials[0].status, Status::RungDone);
}

#[test]
fn asha_refuses_a_budget_that_brings_no_trial_to_the_last_rung() {
    for (budget, needles) in [
        ("trials = 8", ["at least 9 trials", "[100, 300, 900]"]),
        ("total_steps = 2099", ["2100 steps", "[100, 300, 900]"]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sweep.toml");
        let text = format!("method = \"halving\"\n[train]\nmax_iters = 900\n[budget]\n{budget}\n{SPACE}");
        std::fs::write(&path, text).unwrap();
        let message = SweepSpec::load(Some(&path), &SweepFlags::default()).unwrap_err().to_string();
        for needle in needles.iter().chain(&["budget fits no trial"]) {
            assert!(message.contains(needle), "{budget}: {message} (expected {needle:?})");
        }
    }
}

#[test]
fn a_sweep_saved_before_the_schedule_existed_resumes_synchronously() {
    let saved = r#"{"eta":3,"min_steps":100,"rungs":[100,300,900],"trials":9}"#;
    let halving: Halving = serde_json::from_str(saved).unwrap();
    assert_eq!((halving.schedule, halving.trials), (Schedule::Sync, Some(9)));
}
