//! Admission with virtual workers: two accounts and three priorities on one
//! queue. Quotas hold at every step, capacity is shared fairly within a
//! priority, a higher-priority job preempts lower ones, and the preempted
//! jobs resume and end with exact counts: no batch result written twice,
//! none lost.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use batchmill_accounts::Limits;
use batchmill_core::enqueue::EnqueueProgress;
use batchmill_core::queues::Queues;
use batchmill_core::{JobId, WorkerId};
use batchmill_proto::jobs::v1 as pb;
use batchmill_proto::scheduler::v1::{self as spb, session_response::Message as Out};
use batchmill_scheduler::{JobRecord, State};
use common::*;
use tokio::sync::mpsc::UnboundedReceiver;

/// A virtual worker: the job it was given, the batch in its hands, and the
/// preempted job it hands back once that batch is finished.
struct Virtual {
    id: WorkerId,
    rx: UnboundedReceiver<spb::SessionResponse>,
    job: Option<String>,
    in_hand: Option<(String, u64)>,
    handing_back: Option<String>,
}

impl Virtual {
    fn new(state: &mut State, id: &str) -> Virtual {
        Virtual { rx: join(state, id), id: WorkerId::new(id), job: None, in_hand: None, handing_back: None }
    }
}

/// The simulated cluster: each job's batches still queued (as JetStream
/// would hold them), and every result written.
#[derive(Default)]
struct World {
    batches: BTreeMap<String, u64>,
    next: BTreeMap<String, u64>,
    results: BTreeMap<(String, u64), u32>,
    /// Batches finished per account, in the order they finished.
    finished: Vec<String>,
}

impl World {
    fn take(&mut self, job: &str) -> Option<u64> {
        let next = self.next.entry(job.to_owned()).or_default();
        (*next < self.batches[job]).then(|| {
            *next += 1;
            *next - 1
        })
    }
}

async fn submit(
    state: &mut State,
    world: &mut World,
    id: &str,
    account: &str,
    priority: u32,
    workers: u32,
    batches: u64,
) {
    let record = JobRecord {
        queue: "q".into(),
        priority,
        demand: workers,
        quota: if account == "a" { 3 } else { 0 },
        item_count: Some(batches * 10),
        ..owned(id, workers, account, "k")
    };
    state.submit(record, Limits::default()).await.unwrap();
    world.batches.insert(id.into(), batches);
    let done = EnqueueProgress { next_seq: batches, next_item: batches * 10, done: true, ..Default::default() };
    state.enqueue_progress(id, done);
}

/// One step: each worker reads what it was told, finishes the batch in its
/// hands (a preempted worker finishes it too, then hands the job back, as
/// a real one does) or takes the next one; then the leader settles,
/// persists and runs a round of admission.
async fn step(state: &mut State, world: &mut World, workers: &mut [Virtual], accounts: &BTreeMap<String, String>) {
    for w in workers.iter_mut() {
        for message in drain(&mut w.rx) {
            match message {
                Out::Assign(a) => w.job = Some(a.job_id),
                Out::Revoke(r) if w.job.as_deref() == Some(r.job_id.as_str()) => {
                    w.job = None;
                    if r.reason == "preempted" {
                        w.handing_back = Some(r.job_id);
                    }
                }
                _ => {}
            }
        }
        if let Some((job, seq)) = w.in_hand.take() {
            *world.results.entry((job.clone(), seq)).or_default() += 1;
            world.finished.push(accounts[&job].clone());
            state.outcome(&w.id, spb::BatchOutcome { items: 10, ..outcome(&job, seq, spb::BatchStatus::Succeeded) });
        }
        if let Some(job) = w.handing_back.take() {
            state.handed_back(&w.id, &job);
        }
        if let Some(job) = w.job.clone()
            && let Some(seq) = world.take(&job)
        {
            w.in_hand = Some((job, seq));
        }
    }
    state.settle().await;
    state.flush().await;
    tokio::time::advance(Duration::from_millis(100)).await;
    state.tick().await;
    state.flush().await;
}

/// Capacity each account's admitted or running jobs hold.
fn holding(state: &State) -> BTreeMap<String, i32> {
    let (jobs, _) = state.list(&root(), None, 1000, None);
    let mut held = BTreeMap::new();
    for job in jobs {
        if matches!(job.state(), pb::JobState::Admitted | pb::JobState::Running) {
            *held.entry(job.account_id.clone()).or_default() += job.max_workers;
        }
    }
    held
}

#[tokio::test(start_paused = true)]
async fn two_accounts_three_priorities_quotas_fair_share_and_preemption_on_one_queue() {
    let fakes = fakes().await;
    let mut state = state_with_queues(&fakes, Queues::parse("q=4").unwrap());
    let mut workers: Vec<Virtual> = (0..6).map(|i| Virtual::new(&mut state, &format!("w{i}"))).collect();
    let (mut world, mut accounts) = (World::default(), BTreeMap::new());
    // Priority 0: each account has 6 jobs of 1 worker and 400 batches (more
    // than either runs in the first 1,000, so the share is the policy's); a's
    // quota is 3. Alone, a holds its quota and no more, though the queue has 4.
    for account in ["a", "b"] {
        for i in 0..6 {
            let id = format!("{account}0{i}");
            submit(&mut state, &mut world, &id, account, 0, 1, 400).await;
            accounts.insert(id, account.to_owned());
        }
        if account == "a" {
            for _ in 0..3 {
                step(&mut state, &mut world, &mut workers, &accounts).await;
            }
            assert_eq!(holding(&state), [("a".to_owned(), 3)].into(), "a is held to its quota");
            world.finished.clear();
        }
    }
    let quota_ok =
        |state: &State| holding(state).get("a").copied().unwrap_or(0) <= 3 && holding(state).values().sum::<i32>() <= 4;
    let mut steps = 0;
    while world.finished.len() < 1_000 {
        step(&mut state, &mut world, &mut workers, &accounts).await;
        assert!(quota_ok(&state), "step {steps}: {:?} over a's quota (3) or the queue (4)", holding(&state));
        steps += 1;
    }
    let a = world.finished[..1_000].iter().filter(|x| *x == "a").count() as f64;
    assert!((a / 1_000.0 - 0.5).abs() <= 0.1, "a ran {a} of the first 1,000 batches: not a fair share");

    // Priority 2 (b) needs the whole queue: it preempts the priority-0 jobs;
    // priority 1 (a) waits behind it.
    submit(&mut state, &mut world, "hi", "b", 2, 4, 40).await;
    submit(&mut state, &mut world, "mid", "a", 1, 1, 20).await;
    accounts.insert("hi".into(), "b".into());
    accounts.insert("mid".into(), "a".into());
    let preempted: Vec<String> = {
        let (jobs, _) = state.list(&root(), None, 1000, None);
        jobs.iter().filter(|j| j.state() == pb::JobState::Preempted).map(|j| j.job_id.clone()).collect()
    };
    assert!(!preempted.is_empty(), "nothing was preempted for the priority-2 job");
    assert!(preempted.iter().all(|id| id.contains('0')), "only priority-0 jobs give way: {preempted:?}");
    let mut order = Vec::new();
    for _ in 0..20_000 {
        step(&mut state, &mut world, &mut workers, &accounts).await;
        assert!(quota_ok(&state), "{:?}", holding(&state));
        let (jobs, _) = state.list(&root(), None, 1000, None);
        for job in &jobs {
            if job.state() == pb::JobState::Succeeded && !order.contains(&job.job_id) {
                order.push(job.job_id.clone());
            }
        }
        if jobs.iter().all(|j| j.state() == pb::JobState::Succeeded) {
            break;
        }
    }
    let hi = order.iter().position(|j| j == "hi").expect("hi succeeded");
    let mid = order.iter().position(|j| j == "mid").expect("mid succeeded");
    assert!(hi < mid, "the priority-2 job ends before the priority-1 one: {order:?}");

    // Every job succeeded with exact counts; every batch's result once.
    let (jobs, _) = state.list(&root(), None, 1000, None);
    assert_eq!(jobs.len(), 14);
    for job in jobs {
        assert_eq!(job.state(), pb::JobState::Succeeded, "{job:?}");
        let total = world.batches[&job.job_id] as i64;
        let b = job.batches.unwrap();
        assert_eq!((b.total, b.succeeded, b.failed), (total, total, 0), "{}", job.job_id);
        assert_eq!(job.items.unwrap().completed, total * 10, "{}", job.job_id);
        for seq in 0..total as u64 {
            assert_eq!(world.results.get(&(job.job_id.clone(), seq)), Some(&1), "{} batch {seq}", job.job_id);
        }
    }
    for id in &preempted {
        let job = state.get(&JobId::parse("job_id", id).unwrap()).unwrap();
        assert!(job.preemptions >= 1, "{job:?}");
    }
}

/// A preempted job waits PREEMPTED while a worker still finishes a batch it
/// held, however long that takes (within the limit), and for admission
/// again (PENDING) once every worker has handed it back or left.
#[tokio::test(start_paused = true)]
async fn a_preempted_job_waits_until_its_workers_hand_it_back() {
    let fakes = fakes().await;
    let mut state = state_with_queues(&fakes, Queues::parse("q=2").unwrap());
    let (mut w1, mut w2) = (Virtual::new(&mut state, "w1"), Virtual::new(&mut state, "w2"));
    let mut world = World::default();
    submit(&mut state, &mut world, "low", "a", 0, 2, 100).await;
    state.tick().await;
    state.flush().await;
    let low = job_id("low");
    let state_of = |state: &State| state.get(&low).unwrap().state();
    assert!(matches!(state_of(&state), pb::JobState::Admitted | pb::JobState::Running), "{:?}", state_of(&state));
    for w in [&mut w1, &mut w2] {
        assert!(drain(&mut w.rx).iter().any(|m| matches!(m, Out::Assign(a) if a.job_id == "low")), "{} assigned", w.id);
    }

    submit(&mut state, &mut world, "high", "b", 1, 2, 10).await;
    state.tick().await;
    state.flush().await;
    assert_eq!(state_of(&state), pb::JobState::Preempted);
    for w in [&mut w1, &mut w2] {
        let told = drain(&mut w.rx);
        assert!(
            told.iter().any(|m| matches!(m, Out::Revoke(r) if r.job_id == "low" && r.reason == "preempted")),
            "{told:?}"
        );
    }

    // w1 finishes its batch and hands the job back; w2 is still on a long
    // one, 10 s later (past any fixed grace): the job stays PREEMPTED.
    state.handed_back(&w1.id, "low");
    tokio::time::advance(Duration::from_secs(10)).await;
    state.tick().await;
    state.flush().await;
    assert_eq!(state_of(&state), pb::JobState::Preempted, "waits for w2");
    // A hand-back from a worker that never held it changes nothing.
    state.handed_back(&WorkerId::new("w9"), "low");
    state.tick().await;
    assert_eq!(state_of(&state), pb::JobState::Preempted);

    state.handed_back(&w2.id, "low");
    state.tick().await;
    state.flush().await;
    assert_eq!(state_of(&state), pb::JobState::Pending, "every worker handed it back");
    let handed: Vec<String> = fakes
        .events(&state, "low")
        .await
        .into_iter()
        .filter(|e| e.r#type == "worker_handed_back")
        .map(|e| e.worker_id)
        .collect();
    assert_eq!(handed, ["w1", "w2"]);
}

/// A worker that leaves while finishing a preempted job's batch hands it
/// back by leaving (its batch is delivered again).
#[tokio::test(start_paused = true)]
async fn a_worker_that_leaves_hands_a_preempted_job_back() {
    let fakes = fakes().await;
    let mut state = state_with_queues(&fakes, Queues::parse("q=1").unwrap());
    let w1 = Virtual::new(&mut state, "w1");
    let mut world = World::default();
    submit(&mut state, &mut world, "low", "a", 0, 1, 100).await;
    state.tick().await;
    submit(&mut state, &mut world, "high", "b", 1, 1, 10).await;
    state.tick().await;
    state.flush().await;
    let low = job_id("low");
    assert_eq!(state.get(&low).unwrap().state(), pb::JobState::Preempted);
    state.worker_gone(&w1.id, None);
    state.tick().await;
    state.flush().await;
    assert_eq!(state.get(&low).unwrap().state(), pb::JobState::Pending);
}
