//! The search methods, as decisions over the trials' records: which trial runs next (and to how many
//! steps), which trials halving promotes (a whole rung at once, or ASHA's one at a time), when the median
//! rule stops a trial. Nothing here starts a
//! process or reads a clock, so every decision is a function of the journal — a resumed sweep decides as
//! the interrupted one would have.

use super::spec::{Halving, SweepSpec};
use super::state::{Curve, Journal, Status, TrialRecord};
use super::{Result, SweepError, space};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// How trials' settings are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Every combination of the listed values, in order.
    Grid,
    /// Seeded random samples of the spaces, with the median stopping rule.
    Random,
    /// Successive halving: many trials for a few steps, the best 1/eta continued, rung after rung
    /// (asynchronously by default: ASHA).
    Halving,
}

/// How halving promotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// ASHA (Li et al. 2018): whenever a worker is free, promote the best not-yet-promoted trial among the
    /// best 1/eta of a rung's results so far (the highest rung first), else start a new trial.
    Async,
    /// Synchronous successive halving: every trial of a rung finishes before the rung's best 1/eta go on.
    Sync,
}

impl Schedule {
    /// Sweeps saved before the schedule existed were synchronous: they resume as they started.
    pub fn of_older_sweeps() -> Schedule {
        Schedule::Sync
    }
}

/// What a sweep compares trials by: the best validation figure each reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Metric {
    ValLoss,
    ValAccuracy,
}

/// Whether lower or higher values are better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Minimize,
    Maximize,
}

impl Metric {
    pub fn direction(self) -> Direction {
        match self {
            Metric::ValLoss => Direction::Minimize,
            Metric::ValAccuracy => Direction::Maximize,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Metric::ValLoss => "val_loss",
            Metric::ValAccuracy => "val_accuracy",
        }
    }
}

impl Direction {
    /// Whether `a` is strictly better than `b`.
    pub fn better(self, a: f64, b: f64) -> bool {
        match self {
            Direction::Minimize => a < b,
            Direction::Maximize => a > b,
        }
    }

    /// Best first; NaN last.
    pub fn compare(self, a: f64, b: f64) -> std::cmp::Ordering {
        let key = |x: f64| {
            if x.is_nan() {
                f64::INFINITY
            } else if self == Direction::Minimize {
                x
            } else {
                -x
            }
        };
        key(a).total_cmp(&key(b))
    }
}

/// The rungs of successive halving: `max_steps`, `max_steps / eta`, `max_steps / eta²`, … while at least
/// `min_steps` (default: two rungs below the last), smallest first.
pub fn rungs(max_steps: u64, eta: u64, min_steps: u64) -> Vec<u64> {
    let mut out = vec![max_steps];
    let mut steps = max_steps;
    while eta >= 2 && steps / eta >= min_steps.max(1) && steps / eta < steps {
        steps /= eta;
        out.push(steps);
    }
    out.reverse();
    out
}

/// How many of `entered` trials at a rung go on to the next: the best `1/eta`, at least one.
pub fn survivors(entered: u64, eta: u64) -> u64 {
    (entered / eta.max(1)).max(1)
}

/// The training steps `n` trials cost under successive halving (a promoted trial continues from where it
/// stopped, so rung k costs `n_k · (r_k − r_{k−1})`).
pub fn halving_cost(n: u64, rungs: &[u64], eta: u64) -> u64 {
    let (mut cost, mut trials, mut previous) = (0u64, n, 0u64);
    for &rung in rungs {
        cost = cost.saturating_add(trials.saturating_mul(rung - previous));
        previous = rung;
        trials = survivors(trials, eta);
    }
    cost
}

/// Plans the rungs and, for the synchronous schedule, the number of trials from the budget.
pub fn plan_halving(spec: &SweepSpec, schedule: Schedule, eta: u64, min_steps: Option<u64>) -> Result<Halving> {
    let max = spec.base.max_iters;
    if eta < 2 {
        return Err(SweepError::Invalid {
            name: "[halving] eta".into(),
            reason: format!("must be at least 2 (keep the best 1/eta at each rung), got {eta}"),
        });
    }
    let min_steps = min_steps.unwrap_or_else(|| (max / eta.saturating_mul(eta)).max(1));
    if min_steps == 0 || min_steps > max {
        return Err(SweepError::Invalid {
            name: "[halving] min_steps".into(),
            reason: format!("must be between 1 and max_iters ({max}), got {min_steps}"),
        });
    }
    let rungs = rungs(max, eta, min_steps);
    if schedule == Schedule::Async {
        return plan_asha(spec, eta, min_steps, rungs);
    }
    let trials = match (spec.budget.trials, spec.budget.total_steps) {
        (Some(trials), None) => trials,
        (trials, Some(total)) => {
            // The most trials whose cost fits; the cost grows with n, so a doubling then bisection finds it.
            let fits = |n: u64| halving_cost(n, &rungs, eta) <= total;
            let (mut lo, mut hi) = (0u64, 1u64);
            while fits(hi) && hi < 1 << 20 {
                lo = hi;
                hi *= 2;
            }
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if fits(mid) { lo = mid } else { hi = mid }
            }
            let n = trials.map_or(lo, |t| t.min(lo));
            if n == 0 {
                return Err(SweepError::BudgetFitsNoTrial {
                    reason: format!(
                        "total_steps {total} is less than one trial's {} steps (rungs {rungs:?}: a trial that \
                         survives every rung trains to max_iters)",
                        halving_cost(1, &rungs, eta)
                    ),
                });
            }
            n
        }
        (None, None) => {
            return Err(SweepError::Invalid {
                name: "[budget]".into(),
                reason: "halving needs a budget of trials or total_steps".into(),
            });
        }
    };
    Ok(Halving { schedule, eta, min_steps, rungs, trials: Some(trials) })
}

/// ASHA starts trials as long as the budget allows. With `n = eta^(K−1)` results at the first of K rungs,
/// the best `⌊n/eta⌋` of each rung are promoted in the end whatever order the results come in, so one
/// trial reaches the last rung; a trials budget below `n`, or a step budget below what synchronous
/// halving spends on `n` trials, reaches it only if the results come in a lucky order, and is refused.
fn plan_asha(spec: &SweepSpec, eta: u64, min_steps: u64, rungs: Vec<u64>) -> Result<Halving> {
    let budget = &spec.budget;
    if budget.trials.is_none() && budget.total_steps.is_none() && budget.wall_seconds.is_none() {
        return Err(SweepError::Invalid {
            name: "[budget]".into(),
            reason: "halving needs a budget: trials, total_steps or wall_time".into(),
        });
    }
    let exponent = u32::try_from(rungs.len() - 1).unwrap_or(u32::MAX);
    let needed = eta.checked_pow(exponent).unwrap_or(u64::MAX);
    if let Some(trials) = budget.trials.filter(|&t| t < needed) {
        return Err(SweepError::BudgetFitsNoTrial {
            reason: format!(
                "trials = {trials}: asynchronous halving over rungs {rungs:?} with eta {eta} needs at least \
                 {needed} trials (eta^{exponent}) for one to reach the last rung"
            ),
        });
    }
    let cost = halving_cost(needed, &rungs, eta);
    if let Some(total) = budget.total_steps.filter(|&t| t < cost) {
        return Err(SweepError::BudgetFitsNoTrial {
            reason: format!(
                "total_steps {total} is less than the {cost} steps asynchronous halving over rungs {rungs:?} \
                 needs for one trial to reach the last rung ({needed} trials at the first rung, eta {eta})"
            ),
        });
    }
    Ok(Halving { schedule: Schedule::Async, eta, min_steps, rungs, trials: budget.trials })
}

/// Halving's plan in words, for the sweep's first line and its report.
pub fn describe_halving(halving: &Halving) -> String {
    let (eta, rungs) = (halving.eta, &halving.rungs);
    match (halving.schedule, halving.trials) {
        (Schedule::Sync, trials) => format!(
            "synchronous successive halving: {} trials, rungs at {rungs:?} steps, the best 1/{eta} of each promoted",
            trials.unwrap_or(0)
        ),
        (Schedule::Async, trials) => format!(
            "asynchronous successive halving (ASHA): {}, rungs at {rungs:?} steps, a trial promoted once among the \
             best 1/{eta} of its rung's results",
            trials.map_or("trials while the budget lasts".to_owned(), |t| format!("up to {t} trials"))
        ),
    }
}

/// Refuses a budget that no trial fits in.
pub fn check_budget(spec: &SweepSpec) -> Result<()> {
    let budget = &spec.budget;
    if budget.trials == Some(0) {
        return Err(SweepError::BudgetFitsNoTrial { reason: "trials = 0".into() });
    }
    let unbounded = budget.trials.is_none() && budget.total_steps.is_none() && budget.wall_seconds.is_none();
    if spec.method == Method::Random && unbounded {
        return Err(SweepError::Invalid {
            name: "[budget]".into(),
            reason: "random search needs a budget: trials, total_steps or wall_time".into(),
        });
    }
    if let (Some(total), Method::Grid | Method::Random) = (budget.total_steps, spec.method) {
        // The cheapest trial: the base's max_iters, or the smallest max_iters the space offers.
        let kind = space::Kind::Integer;
        let cheapest = spec
            .space
            .get("max_iters")
            .map(|s| s.extremes(kind).iter().filter_map(|v| v.as_integer()).min().unwrap_or(0).max(0) as u64)
            .unwrap_or(spec.base.max_iters);
        if total < cheapest {
            return Err(SweepError::BudgetFitsNoTrial {
                reason: format!("total_steps {total} is less than one trial's max_iters ({cheapest})"),
            });
        }
    }
    Ok(())
}

/// What the sweep should do next.
#[derive(Debug, Clone, PartialEq)]
pub enum NextJob {
    /// Run trial `id` to its `target_steps` (starting it, continuing it, or resuming it after a kill).
    Launch(usize),
    /// Wait for a running trial (a halving rung is complete only when all its trials are).
    Wait,
    /// Nothing is left to run: why.
    Done(String),
}

/// Decides the next job. `busy` are the trials running now; `may_start` is false once the wall time is up
/// (then nothing new starts, but decisions are still recorded).
pub fn next_job(spec: &SweepSpec, journal: &mut Journal, busy: &BTreeSet<usize>, may_start: bool) -> Result<NextJob> {
    if let Some(record) =
        journal.trials.iter().find(|t| matches!(t.status, Status::Pending | Status::Running) && !busy.contains(&t.id))
    {
        return Ok(if may_start { NextJob::Launch(record.id) } else { NextJob::Done("the wall time is up".into()) });
    }
    match spec.method {
        Method::Grid | Method::Random => next_new_trial(spec, journal, busy, may_start),
        Method::Halving => match spec.halving.as_ref().map(|h| h.schedule) {
            Some(Schedule::Async) => next_asha(spec, journal, busy, may_start),
            _ => next_rung(spec, journal, busy, may_start),
        },
    }
}

fn next_new_trial(spec: &SweepSpec, journal: &mut Journal, busy: &BTreeSet<usize>, may_start: bool) -> Result<NextJob> {
    let started = journal.trials.len() as u64;
    let limit = spec.budget.trials.or(spec.grid_points).unwrap_or(u64::MAX);
    let limit = spec.grid_points.map_or(limit, |points| limit.min(points));
    let wait_or = |why: &str| if busy.is_empty() { NextJob::Done(why.to_owned()) } else { NextJob::Wait };
    if started >= limit {
        return Ok(wait_or(&format!("all {limit} trials ran")));
    }
    if !may_start {
        return Ok(wait_or("the wall time is up"));
    }
    let kinds = space::setting_kinds();
    let settings = match spec.method {
        Method::Grid => {
            let points = space::grid(&spec.space, &kinds)?;
            points.into_iter().nth(started as usize).unwrap_or_default()
        }
        _ => space::sample_point(&spec.space, &kinds, spec.seed, started),
    };
    let target = spec.trial_config(&settings).map(|c| c.max_iters).unwrap_or(spec.base.max_iters);
    if let Some(total) = spec.budget.total_steps {
        // Steps spent or promised: a running trial may use all of its target.
        let committed: u64 =
            journal.trials.iter().map(|t| if t.status.is_active() { t.target_steps } else { t.steps }).sum();
        if committed.saturating_add(target) > total {
            return Ok(wait_or(&format!("the next trial's {target} steps would pass total_steps {total}")));
        }
    }
    let id = journal.trials.len();
    journal.trials.push(TrialRecord::new(id, settings, target));
    Ok(NextJob::Launch(id))
}

fn next_rung(spec: &SweepSpec, journal: &mut Journal, busy: &BTreeSet<usize>, may_start: bool) -> Result<NextJob> {
    let Some(halving) = &spec.halving else { return Ok(NextJob::Done("no halving plan".into())) };
    let kinds = space::setting_kinds();
    if journal.trials.is_empty() {
        if !may_start {
            return Ok(NextJob::Done("the wall time is up".into()));
        }
        for id in 0..halving.trials.unwrap_or(0) {
            let settings = space::sample_point(&spec.space, &kinds, spec.seed, id);
            journal.trials.push(TrialRecord::new(id as usize, settings, halving.rungs[0]));
        }
        return Ok(NextJob::Launch(0));
    }
    if !busy.is_empty() {
        return Ok(NextJob::Wait);
    }
    let Some(rung) = journal.trials.iter().filter(|t| t.status == Status::RungDone).map(|t| t.rung).min() else {
        return Ok(NextJob::Done("every rung is done".into()));
    };
    let Some(&next_steps) = halving.rungs.get(rung + 1) else {
        return Ok(NextJob::Done("every rung is done".into()));
    };
    let entered = journal.trials.iter().filter(|t| t.rung == rung).count() as u64;
    let keep = survivors(entered, halving.eta) as usize;
    let direction = spec.metric.direction();
    let mut ranked: Vec<&TrialRecord> =
        journal.trials.iter().filter(|t| t.rung == rung && t.status == Status::RungDone).collect();
    ranked.sort_by(|a, b| {
        direction.compare(a.best.unwrap_or(f64::NAN), b.best.unwrap_or(f64::NAN)).then(a.id.cmp(&b.id))
    });
    let promoted: Vec<usize> = ranked.iter().take(keep).map(|t| t.id).collect();
    let rung_steps = halving.rungs[rung];
    for trial in journal.trials.iter_mut().filter(|t| t.rung == rung && t.status == Status::RungDone) {
        if promoted.contains(&trial.id) {
            trial.status = Status::Pending;
            trial.rung = rung + 1;
            trial.target_steps = next_steps;
        } else {
            trial.status = Status::Pruned;
            trial.reason =
                format!("halving: not among the best {keep} of {entered} at rung {} ({rung_steps} steps)", rung + 1);
        }
    }
    match promoted.first() {
        Some(&id) if may_start => Ok(NextJob::Launch(id)),
        _ => Ok(NextJob::Done("the wall time is up".into())),
    }
}

/// ASHA's decision (Li et al. 2018, Algorithm 2): promote the best not-yet-promoted trial among a rung's
/// top `1/eta`, the highest rung first; otherwise start a new trial at the first rung. The next piece of
/// work must fit in the step budget, counting running trials at their targets; when it does not (or the
/// trials budget is spent) the sweep waits for its running trials, then ends.
fn next_asha(spec: &SweepSpec, journal: &mut Journal, busy: &BTreeSet<usize>, may_start: bool) -> Result<NextJob> {
    let Some(halving) = &spec.halving else { return Ok(NextJob::Done("no halving plan".into())) };
    let wait_or = |why: String| if busy.is_empty() { NextJob::Done(why) } else { NextJob::Wait };
    if !may_start {
        return Ok(wait_or("the wall time is up".into()));
    }
    let promotion = asha_promotion(&journal.trials, halving, spec.metric.direction());
    let (cost, piece) = match promotion {
        Some((id, rung)) => {
            let next = halving.rungs[rung + 1];
            (next.saturating_sub(journal.trials[id].steps), format!("promoting trial {id} to {next} steps"))
        }
        None => {
            let started = journal.trials.len() as u64;
            if halving.trials.is_some_and(|limit| started >= limit) {
                return Ok(finish_asha(journal, halving, busy, format!("all {started} trials started")));
            }
            (halving.rungs[0], format!("a new trial's {} steps", halving.rungs[0]))
        }
    };
    if let Some(total) = spec.budget.total_steps {
        let committed: u64 =
            journal.trials.iter().map(|t| if t.status.is_active() { t.target_steps } else { t.steps }).sum();
        if committed.saturating_add(cost) > total {
            let why = format!("{piece} would pass total_steps {total} ({committed} spent or running)");
            return Ok(finish_asha(journal, halving, busy, why));
        }
    }
    match promotion {
        Some((id, rung)) => {
            let trial = &mut journal.trials[id];
            trial.status = Status::Pending;
            trial.rung = rung + 1;
            trial.target_steps = halving.rungs[rung + 1];
            Ok(NextJob::Launch(id))
        }
        None => {
            let id = journal.trials.len();
            let settings = space::sample_point(&spec.space, &space::setting_kinds(), spec.seed, id as u64);
            journal.trials.push(TrialRecord::new(id, settings, halving.rungs[0]));
            Ok(NextJob::Launch(id))
        }
    }
}

/// ASHA's promotion: `(trial, rung)` for the best trial that completed `rung`, is not yet promoted and is
/// among the best `⌊n/eta⌋` of the `n` results `rung` has so far (promoted trials included, each by its
/// value at that rung), looking at the highest rung below the last first.
pub fn asha_promotion(trials: &[TrialRecord], halving: &Halving, direction: Direction) -> Option<(usize, usize)> {
    for rung in (0..halving.rungs.len().saturating_sub(1)).rev() {
        let mut results: Vec<(f64, &TrialRecord)> = trials
            .iter()
            .filter_map(|t| t.rung_results.get(rung).map(|value| (value.unwrap_or(f64::NAN), t)))
            .collect();
        results.sort_by(|a, b| direction.compare(a.0, b.0).then(a.1.id.cmp(&b.1.id)));
        let top = results.len() / halving.eta.max(1) as usize;
        let waiting = |t: &TrialRecord| t.rung == rung && t.status == Status::RungDone;
        if let Some((_, trial)) = results.iter().take(top).find(|(_, t)| waiting(t)) {
            return Some((trial.id, rung));
        }
    }
    None
}

/// The end of an ASHA sweep: with trials still running, wait (their results may allow a promotion);
/// otherwise the trials left at a rung stay there, marked pruned with why.
fn finish_asha(journal: &mut Journal, halving: &Halving, busy: &BTreeSet<usize>, why: String) -> NextJob {
    if !busy.is_empty() {
        return NextJob::Wait;
    }
    let results: Vec<usize> =
        (0..halving.rungs.len()).map(|k| journal.trials.iter().filter(|t| t.rung_results.len() > k).count()).collect();
    for trial in journal.trials.iter_mut().filter(|t| t.status == Status::RungDone) {
        let n = results.get(trial.rung).copied().unwrap_or(0);
        trial.status = Status::Pruned;
        trial.reason = format!(
            "asha: not promoted from rung {} ({} steps; of its {n} results the best {} go on) before the sweep \
             ended: {why}",
            trial.rung + 1,
            halving.rungs.get(trial.rung).copied().unwrap_or(0),
            n as u64 / halving.eta.max(1)
        );
    }
    NextJob::Done(why)
}

/// The median stopping rule: `Some(reason)` when the trial whose curve is `this` should stop at `step`.
pub fn median_stop(spec: &SweepSpec, this: &Curve, others: &[&Curve], step: u64) -> Option<String> {
    let rule = &spec.median;
    if !rule.enabled || step < rule.grace_steps.max(1) {
        return None;
    }
    let direction = spec.metric.direction();
    let mine = this.best_until(step, direction)?;
    let mut values: Vec<f64> = others
        .iter()
        .filter(|c| c.last_step().is_some_and(|last| last >= step))
        .filter_map(|c| c.best_until(step, direction))
        .collect();
    if values.len() < rule.min_trials {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    let median = if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 };
    direction.better(median, mine).then(|| {
        format!(
            "median rule at step {step}: best {} {mine:.4} is worse than the median {median:.4} of {n} other trials",
            spec.metric.name()
        )
    })
}

#[cfg(test)]
#[path = "method_tests.rs"]
mod tests;
