//! A short seeded sample of the chaos suite (see `batchmill_tests::chaos`):
//! every kind of fault once, outages of 5 to 8 s. Every job must end
//! SUCCEEDED with every item once, counts exact and nothing left in
//! JetStream, and the cluster must be whole again after every fault.
//! `BATCHMILL_CHAOS_SEED` picks another seed; `bench/chaos` makes long runs.

use batchmill_tests::chaos::{self, Durations, Kind, Plan, report};

#[tokio::test]
async fn every_kind_of_fault_once_hurts_no_job() -> anyhow::Result<()> {
    let seed = std::env::var("BATCHMILL_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20_261_203);
    let plan = Plan {
        faults: Kind::all().len(),
        seed,
        durations: Durations { outage: (5, 8), pause: (2, 5) },
        job_secs: 8,
        only: vec![],
    };
    println!("chaos seed {seed} (BATCHMILL_CHAOS_SEED={seed} reruns this sample)");
    let mut sandbox = chaos::sandbox().await?;
    let runs =
        chaos::run(&mut sandbox, &plan, |run| println!("{}: {} -> {:?}", run.kind, run.detail, run.recovery_s)).await?;
    let (per_kind, total) = report::summarize(&runs);
    println!("{}", report::table(&per_kind, &total));
    let hurt: Vec<_> = runs.iter().filter(|r| !r.verdict.good() || r.recovery_s.is_none()).collect();
    assert!(hurt.is_empty(), "seed {seed}: faults that hurt: {hurt:#?}");
    assert_eq!(total.faults, Kind::all().len(), "every kind struck once");
    assert_eq!((total.items_lost, total.items_duplicated, total.wrong_counts, total.left_in_queue), (0, 0, 0, 0));
    Ok(())
}
