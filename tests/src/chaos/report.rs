//! The chaos suite's figures: per kind of fault and in all, faults injected,
//! jobs checked, items lost and duplicated, wrong counts, and the time from
//! each fault's end to recovery (p50, max); as a table and as a JSON record
//! naming the machine.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::{FaultRun, Kind, Plan};

/// The figures of a set of faults.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    pub kind: String,
    pub faults: usize,
    /// Faults after which the cluster was whole again within the limit.
    pub recovered: usize,
    pub recovery_p50_s: f64,
    pub recovery_max_s: f64,
    /// How long the faults lasted, at the median.
    pub lasted_p50_s: f64,
    pub jobs_checked: usize,
    /// Jobs with anything wrong (see `Verdict::problems`).
    pub bad_jobs: usize,
    pub items_lost: u64,
    pub items_duplicated: u64,
    pub wrong_values: u64,
    pub wrong_counts: u64,
    pub left_in_queue: u64,
}

impl Figures {
    /// Nothing lost, duplicated or miscounted, every job good and every
    /// fault recovered from.
    pub fn clean(&self) -> bool {
        self.bad_jobs == 0 && self.recovered == self.faults
    }
}

/// The nearest-rank percentile `p` (0 to 1) of `values`.
fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied().unwrap_or(0.0)
}

fn figures(kind: String, runs: &[&FaultRun]) -> Figures {
    let recoveries: Vec<f64> = runs.iter().filter_map(|r| r.recovery_s).collect();
    let lasted: Vec<f64> = runs.iter().map(|r| r.lasted_s).collect();
    let sum = |f: fn(&FaultRun) -> u64| runs.iter().map(|r| f(r)).sum();
    Figures {
        kind,
        faults: runs.len(),
        recovered: recoveries.len(),
        recovery_p50_s: percentile(&recoveries, 0.5),
        recovery_max_s: percentile(&recoveries, 1.0),
        lasted_p50_s: percentile(&lasted, 0.5),
        jobs_checked: runs.len(),
        bad_jobs: runs.iter().filter(|r| !r.verdict.good()).count(),
        items_lost: sum(|r| r.verdict.lost),
        items_duplicated: sum(|r| r.verdict.duplicated),
        wrong_values: sum(|r| r.verdict.wrong_values),
        wrong_counts: sum(|r| r.verdict.wrong_counts),
        left_in_queue: sum(|r| r.verdict.left_in_queue),
    }
}

/// Figures per kind (in [`Kind::all`]'s order, kinds struck only), then
/// the total.
pub fn summarize(runs: &[FaultRun]) -> (Vec<Figures>, Figures) {
    let mut by_kind: BTreeMap<usize, Vec<&FaultRun>> = BTreeMap::new();
    let order: Vec<String> = Kind::all().into_iter().map(Kind::name).collect();
    for run in runs {
        let at = order.iter().position(|k| *k == run.kind).unwrap_or(order.len());
        by_kind.entry(at).or_default().push(run);
    }
    let per_kind = by_kind.into_values().map(|runs| figures(runs[0].kind.clone(), &runs)).collect();
    (per_kind, figures("all".into(), &runs.iter().collect::<Vec<_>>()))
}

/// The figures as a Markdown table.
pub fn table(per_kind: &[Figures], total: &Figures) -> String {
    let mut out = String::from(
        "| fault | faults | recovered | recovery p50 | recovery max | lasted p50 | jobs | bad jobs | lost | duplicated | wrong counts | left in JetStream |\n\
         | --- | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: |\n",
    );
    for f in per_kind.iter().chain([total]) {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.2} s | {:.2} s | {:.1} s | {} | {} | {} | {} | {} | {} |",
            f.kind,
            f.faults,
            f.recovered,
            f.recovery_p50_s,
            f.recovery_max_s,
            f.lasted_p50_s,
            f.jobs_checked,
            f.bad_jobs,
            f.items_lost,
            f.items_duplicated,
            f.wrong_counts + f.wrong_values,
            f.left_in_queue
        );
    }
    out
}

/// The CPU this ran on: its model and the vector extensions it has.
pub fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_owned())
    };
    let flags = field("flags").unwrap_or_default();
    let vector: Vec<&str> =
        flags.split_whitespace().filter(|f| f.starts_with("avx") || f.starts_with("sse4") || *f == "fma").collect();
    serde_json::json!({
        "cpu": field("model name"),
        "cores": std::thread::available_parallelism().map(std::num::NonZero::get).unwrap_or(1),
        "vector_extensions": vector,
    })
}

/// The run as a JSON record.
pub fn record(plan: &Plan, runs: &[FaultRun], command: &str) -> serde_json::Value {
    let (per_kind, total) = summarize(runs);
    serde_json::json!({
        "command": command,
        "seed": plan.seed,
        "faults_planned": plan.faults,
        "outage_s": [plan.durations.outage.0, plan.durations.outage.1],
        "pause_s": [plan.durations.pause.0, plan.durations.pause.1],
        "job_s": plan.job_secs,
        "machine": machine(),
        "total": total,
        "per_kind": per_kind,
        "faults": runs,
    })
}
