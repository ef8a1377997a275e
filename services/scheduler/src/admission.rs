//! Admission: which waiting jobs get capacity in their queue, and which
//! running ones give theirs up. A pure plan over the jobs as they are; the
//! state carries it out (`jobs.rs`, `preempt.rs`).
//!
//! Per queue, in order:
//! - **Priority.** Waiting jobs of a higher priority go first.
//! - **Fair share.** Within one priority, the next job is the oldest of the
//!   account that holds the least of the queue now (max-min fairness on the
//!   queue's one resource, which is what dominant-resource fairness comes
//!   to with one resource). An account over its share gives way: when the
//!   queue is full, a waiting job preempts the newest job, of its own
//!   priority, of an account that would still hold more than its own after
//!   the move; so busy accounts converge to equal shares, and no pair of
//!   jobs swaps back and forth.
//! - **Quotas.** An account never holds more of a queue than its quota; a
//!   job that would go over waits, and does not hold up other accounts.
//! - **Capacity.** A job is admitted if what it holds fits. If it does not,
//!   the lowest-priority holders below its priority (newest first) are
//!   preempted, if that frees enough; otherwise the queue admits nothing
//!   more this round, so a large job is not starved by smaller ones.

use std::collections::{BTreeMap, BTreeSet};

use batchmill_core::JobId;
use batchmill_core::queues::Queues;

/// A job as admission sees it.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub id: JobId,
    pub account: String,
    pub queue: String,
    pub priority: u32,
    /// What it holds of its queue once admitted.
    pub demand: u32,
    /// Its account's quota on its queue (0: none).
    pub quota: u32,
    /// It holds capacity now (admitted, running, completing).
    pub holding: bool,
}

/// What to do this round.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Jobs to preempt, before admitting.
    pub preempt: Vec<JobId>,
    /// Jobs to admit, in order.
    pub admit: Vec<JobId>,
}

/// The plan for `jobs` (holders and waiters) in `queues`. Jobs of a queue
/// the cluster no longer has are admitted without limit.
pub(crate) fn plan(queues: &Queues, jobs: &[Candidate]) -> Plan {
    let mut plan = Plan::default();
    let names: BTreeSet<&str> = jobs.iter().map(|j| j.queue.as_str()).collect();
    for name in names {
        let capacity = queues.get(name).map_or(0, |q| q.capacity);
        let in_queue: Vec<&Candidate> = jobs.iter().filter(|j| j.queue == name).collect();
        plan_queue(capacity, &in_queue, &mut plan);
    }
    plan
}

fn plan_queue(capacity: u32, jobs: &[&Candidate], plan: &mut Plan) {
    let mut holders: Vec<&Candidate> = jobs.iter().copied().filter(|j| j.holding).collect();
    let mut used: u64 = holders.iter().map(|j| u64::from(j.demand)).sum();
    let mut held: BTreeMap<&str, u64> = BTreeMap::new();
    for j in &holders {
        *held.entry(j.account.as_str()).or_default() += u64::from(j.demand);
    }
    // Oldest first within an account (ids sort by creation).
    let mut waiting: Vec<&Candidate> = jobs.iter().copied().filter(|j| !j.holding).collect();
    waiting.sort_by(|a, b| a.id.cmp(&b.id));
    loop {
        let Some(top) = waiting.iter().map(|j| j.priority).max() else { return };
        // The account holding least, then its oldest job (ties: the older job).
        let Some(index) = waiting
            .iter()
            .enumerate()
            .filter(|(_, j)| j.priority == top)
            .min_by_key(|(_, j)| (held.get(j.account.as_str()).copied().unwrap_or(0), j.id.clone()))
            .map(|(i, _)| i)
        else {
            return;
        };
        let job = waiting.remove(index);
        let account_holds = held.get(job.account.as_str()).copied().unwrap_or(0);
        if job.quota > 0 && account_holds + u64::from(job.demand) > u64::from(job.quota) {
            continue; // over its account's quota: it waits
        }
        let fits = |used: u64| capacity == 0 || used + u64::from(job.demand) <= u64::from(capacity);
        if !fits(used) {
            let Some(chosen) = victims(job, &holders, &held, used, fits) else {
                return; // it cannot be admitted: nothing behind it is
            };
            for victim in chosen {
                used -= u64::from(victim.demand);
                if let Some(h) = held.get_mut(victim.account.as_str()) {
                    *h -= u64::from(victim.demand);
                }
                holders.retain(|h| h.id != victim.id);
                plan.preempt.push(victim.id.clone());
            }
        }
        used += u64::from(job.demand);
        *held.entry(job.account.as_str()).or_default() += u64::from(job.demand);
        holders.push(job);
        plan.admit.push(job.id.clone());
    }
}

/// The holders to preempt so that `job` fits, if any do: first those of a
/// lower priority (lowest first, newest first within it); then, for fair
/// share, those of its own priority in accounts that would still hold more
/// than its account after the move (the account holding most first, its
/// newest job first), so that shares converge and never swap back and forth.
fn victims<'a>(
    job: &Candidate,
    holders: &[&'a Candidate],
    held: &BTreeMap<&str, u64>,
    used: u64,
    fits: impl Fn(u64) -> bool,
) -> Option<Vec<&'a Candidate>> {
    let mut lower: Vec<&Candidate> = holders.iter().copied().filter(|h| h.priority < job.priority).collect();
    lower.sort_by(|a, b| a.priority.cmp(&b.priority).then(b.id.cmp(&a.id)));
    let (mut freed, mut chosen) = (0u64, Vec::new());
    for victim in lower {
        if fits(used - freed) {
            return Some(chosen);
        }
        freed += u64::from(victim.demand);
        chosen.push(victim);
    }
    let mut held = held.clone();
    for victim in &chosen {
        if let Some(h) = held.get_mut(victim.account.as_str()) {
            *h -= u64::from(victim.demand);
        }
    }
    let mine = held.get(job.account.as_str()).copied().unwrap_or(0) + u64::from(job.demand);
    while !fits(used - freed) {
        let over = holders
            .iter()
            .copied()
            .filter(|h| h.priority == job.priority && h.account != job.account && !chosen.iter().any(|c| c.id == h.id))
            .filter(|h| held.get(h.account.as_str()).copied().unwrap_or(0) > mine)
            .max_by(|a, b| {
                let (ha, hb) = (held.get(a.account.as_str()), held.get(b.account.as_str()));
                ha.cmp(&hb).then(a.id.cmp(&b.id))
            })?;
        if let Some(h) = held.get_mut(over.account.as_str()) {
            *h -= u64::from(over.demand);
        }
        freed += u64::from(over.demand);
        chosen.push(over);
    }
    Some(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, account: &str, priority: u32, demand: u32, holding: bool) -> Candidate {
        Candidate {
            id: JobId::parse("job_id", id).unwrap(),
            account: account.into(),
            queue: "q".into(),
            priority,
            demand,
            quota: 0,
            holding,
        }
    }

    fn ids(v: &[JobId]) -> Vec<&str> {
        v.iter().map(JobId::as_str).collect()
    }

    fn queues(capacity: u32) -> Queues {
        Queues::parse(&format!("q={capacity}")).unwrap()
    }

    #[test]
    fn admits_by_priority_then_the_account_holding_least() {
        let jobs = [
            job("a1", "a", 0, 1, true),
            job("a2", "a", 0, 1, false),
            job("a3", "a", 0, 1, false),
            job("b1", "b", 0, 1, false),
            job("c1", "c", 5, 1, false),
        ];
        let plan = plan(&queues(4), &jobs);
        assert_eq!(ids(&plan.admit), ["c1", "b1", "a2"], "priority first, then the account holding least");
        assert!(plan.preempt.is_empty());
    }

    #[test]
    fn quotas_hold_an_account_back_without_holding_others_up() {
        let mut a2 = job("a2", "a", 0, 1, false);
        a2.quota = 1;
        let mut a1 = job("a1", "a", 0, 1, true);
        a1.quota = 1;
        let plan = plan(&queues(0), &[a1, a2, job("b1", "b", 0, 3, false)]);
        assert_eq!(ids(&plan.admit), ["b1"]);
    }

    #[test]
    fn a_higher_priority_job_preempts_the_lowest_priority_newest_holders_it_needs() {
        let jobs = [
            job("l1", "a", 0, 1, true),
            job("l2", "a", 0, 1, true),
            job("m1", "b", 1, 1, true),
            job("h1", "b", 2, 2, false),
        ];
        let plan = plan(&queues(3), &jobs);
        assert_eq!(ids(&plan.preempt), ["l2", "l1"], "both of priority 0, newest first; not the priority-1 job");
        assert_eq!(ids(&plan.admit), ["h1"]);
    }

    #[test]
    fn nothing_is_preempted_for_a_job_that_still_would_not_fit_and_nothing_smaller_jumps_it() {
        let jobs = [
            job("l1", "a", 0, 1, true),
            job("m1", "b", 3, 2, true),
            job("h1", "b", 2, 3, false),
            job("s1", "a", 0, 1, false),
        ];
        let plan = plan(&queues(3), &jobs);
        assert_eq!(plan, Plan::default(), "preempting l1 would not make room for h1, and s1 waits behind it");
    }

    #[test]
    fn an_equal_priority_preempts_only_an_account_over_its_fair_share() {
        let plan1 = plan(&queues(1), &[job("a1", "a", 1, 1, true), job("b1", "b", 1, 1, false)]);
        assert_eq!(plan1, Plan::default(), "one each would be as unequal: nothing moves");
        let jobs = [
            job("a1", "a", 1, 1, true),
            job("a2", "a", 1, 1, true),
            job("a3", "a", 1, 1, true),
            job("b1", "b", 1, 1, true),
            job("b2", "b", 1, 1, false),
            job("b3", "b", 1, 1, false),
        ];
        let plan2 = plan(&queues(4), &jobs);
        assert_eq!((ids(&plan2.preempt), ids(&plan2.admit)), (vec!["a3"], vec!["b2"]), "to two each, and no further");
    }
}
