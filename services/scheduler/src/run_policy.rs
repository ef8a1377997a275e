//! What a pipeline version says about running its jobs, besides its code
//! and config: the resources each worker needs, the queue its jobs are
//! admitted through, and the timeout and retries a job gets unless it
//! names its own. Checked at deploy, each mistake naming its field.
//!
//! Resources are written as Kubernetes writes them (`cpu: "500m"`,
//! `memory: "4Gi"`); a GPU type is `any` or a model such as `h100`.

use batchmill_core::FieldViolation;
use batchmill_core::backoff::Backoff;
use batchmill_proto::pipelines::v1 as pb;
use serde::{Deserialize, Serialize};

use batchmill_core::queues::DEFAULT_QUEUE;
/// Most GPUs one worker may ask for.
const MOST_GPUS: u32 = 16;

/// The resources each worker of a pipeline needs; empty fields ask for
/// nothing in particular.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cpu: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub memory: String,
    #[serde(default)]
    pub gpu_count: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gpu_type: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gpu_memory: String,
}

/// A pipeline version's run policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunPolicy {
    #[serde(default)]
    pub resources: Resources,
    /// The admission queue; empty in records from before queues (read as
    /// [`DEFAULT_QUEUE`]).
    #[serde(default)]
    pub queue: String,
    /// A job's timeout unless it names one.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// A batch's deliveries unless the job names them.
    #[serde(default)]
    pub max_deliveries: Option<u32>,
    /// The wait between a batch's deliveries; None for the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
}

impl RunPolicy {
    /// Checks a deploy request's run policy.
    pub fn from_request(request: &pb::DeployPipelineRequest) -> Result<RunPolicy, FieldViolation> {
        let resources = request.resources.as_ref().map(Resources::from_request).transpose()?.unwrap_or_default();
        let queue = if request.queue.is_empty() { DEFAULT_QUEUE.to_owned() } else { request.queue.clone() };
        batchmill_core::queues::check_name("queue", &queue)?;
        let timeout_ms = request.timeout.as_ref().map(batchmill_core::job::check_timeout).transpose()?;
        let max_deliveries = match &request.retry {
            None => None,
            Some(r) if r.max_deliveries == 0 => None,
            Some(r) if (1..=batchmill_core::job::MAX_RECEIVE_COUNT).contains(&r.max_deliveries) => {
                Some(r.max_deliveries as u32)
            }
            Some(r) => {
                return Err(FieldViolation::new(
                    "retry.max_deliveries",
                    format!(
                        "must be between 1 and {}, got {}",
                        batchmill_core::job::MAX_RECEIVE_COUNT,
                        r.max_deliveries
                    ),
                ));
            }
        };
        let backoff = match &request.retry {
            Some(r) if r.initial_backoff.is_some() || r.max_backoff.is_some() => {
                Some(Backoff::checked("retry", r.initial_backoff.as_ref(), r.max_backoff.as_ref())?)
            }
            _ => None,
        };
        Ok(RunPolicy { resources, queue, timeout_ms, max_deliveries, backoff })
    }

    /// The retry policy as the API shows it; None when it sets nothing.
    pub fn retry_proto(&self) -> Option<pb::RetryPolicy> {
        if self.max_deliveries.is_none() && self.backoff.is_none() {
            return None;
        }
        let (initial_backoff, max_backoff) = self.backoff.map(Backoff::to_proto).unzip();
        Some(pb::RetryPolicy {
            max_deliveries: self.max_deliveries.map_or(0, |n| n as i32),
            initial_backoff,
            max_backoff,
        })
    }

    /// The queue its jobs go through.
    pub fn queue(&self) -> &str {
        if self.queue.is_empty() { DEFAULT_QUEUE } else { &self.queue }
    }

    pub fn resources_proto(&self) -> pb::Resources {
        let r = &self.resources;
        pb::Resources {
            cpu: r.cpu.clone(),
            memory: r.memory.clone(),
            gpu_count: r.gpu_count,
            gpu_type: r.gpu_type.clone(),
            gpu_memory: r.gpu_memory.clone(),
        }
    }
}

impl Resources {
    fn from_request(r: &pb::Resources) -> Result<Resources, FieldViolation> {
        if !r.cpu.is_empty() && !is_cpu(&r.cpu) {
            return Err(FieldViolation::new(
                "resources.cpu",
                format!("{:?} is not a CPU quantity such as \"2\" or \"500m\"", r.cpu),
            ));
        }
        for (field, value) in [("resources.memory", &r.memory), ("resources.gpu_memory", &r.gpu_memory)] {
            if !value.is_empty() && !is_memory(value) {
                return Err(FieldViolation::new(
                    field,
                    format!("{value:?} is not a memory quantity such as \"4Gi\" or \"512Mi\""),
                ));
            }
        }
        if r.gpu_count > MOST_GPUS {
            return Err(FieldViolation::new(
                "resources.gpu_count",
                format!("must be at most {MOST_GPUS}, got {}", r.gpu_count),
            ));
        }
        let gpu_asked = !r.gpu_type.is_empty() || !r.gpu_memory.is_empty();
        if gpu_asked && r.gpu_count == 0 {
            return Err(FieldViolation::new(
                "resources.gpu_count",
                "must be at least 1 when a GPU type or memory is set",
            ));
        }
        if !r.gpu_type.is_empty() && !is_name(&r.gpu_type) {
            return Err(FieldViolation::new(
                "resources.gpu_type",
                format!("{:?} is not a GPU type such as \"any\" or \"h100\"", r.gpu_type),
            ));
        }
        Ok(Resources {
            cpu: r.cpu.clone(),
            memory: r.memory.clone(),
            gpu_count: r.gpu_count,
            gpu_type: if r.gpu_count > 0 && r.gpu_type.is_empty() { "any".into() } else { r.gpu_type.clone() },
            gpu_memory: r.gpu_memory.clone(),
        })
    }
}

/// Lower-case letters, digits and dashes, starting with a letter, at most 63.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// `2`, `0.5` or `500m`.
fn is_cpu(s: &str) -> bool {
    let number = s.strip_suffix('m').unwrap_or(s);
    !number.is_empty() && number.parse::<f64>().is_ok_and(|n| n > 0.0) && !(s.ends_with('m') && number.contains('.'))
}

/// A byte count with an optional suffix: `4Gi`, `512Mi`, `1G`, `1048576`.
fn is_memory(s: &str) -> bool {
    memory_bytes(s).is_some()
}

/// The bytes of a memory quantity (`4Gi`, `512Mi`, `1G`, `1048576`).
pub fn memory_bytes(s: &str) -> Option<u64> {
    const SUFFIXES: [(&str, u64); 10] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("Pi", 1 << 50),
        ("K", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000),
    ];
    let (number, scale) =
        SUFFIXES.iter().find_map(|(suffix, scale)| s.strip_suffix(suffix).map(|n| (n, *scale))).unwrap_or((s, 1));
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    number.parse::<u64>().ok().filter(|n| *n > 0).and_then(|n| n.checked_mul(scale))
}

impl Resources {
    /// Whether a worker with `gpus` GPUs named `gpu_name`, each of
    /// `gpu_memory` bytes, has what these resources ask: enough GPUs, of the
    /// type asked (`any`, or a word of the GPU's name such as `h100` in
    /// "NVIDIA H100 80GB HBM3"), with at least the memory asked.
    pub fn met_by(&self, gpus: u32, gpu_name: &str, gpu_memory: u64) -> bool {
        if self.gpu_count == 0 {
            return true;
        }
        let name = gpu_name.to_lowercase();
        let typed = self.gpu_type.is_empty()
            || self.gpu_type == "any"
            || name.split(|c: char| !c.is_ascii_alphanumeric()).any(|word| word == self.gpu_type);
        let memory = memory_bytes(&self.gpu_memory).is_none_or(|least| gpu_memory >= least);
        gpus >= self.gpu_count && typed && memory
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(resources: pb::Resources, queue: &str, retry: i32) -> pb::DeployPipelineRequest {
        pb::DeployPipelineRequest {
            resources: Some(resources),
            queue: queue.into(),
            retry: (retry != 0).then_some(pb::RetryPolicy { max_deliveries: retry, ..Default::default() }),
            timeout: Some(prost_types::Duration { seconds: 90, nanos: 0 }),
            ..Default::default()
        }
    }

    #[test]
    fn a_worker_meets_resources_by_count_type_and_memory() {
        let gib = 1u64 << 30;
        let h100 =
            Resources { gpu_count: 1, gpu_type: "h100".into(), gpu_memory: "40Gi".into(), ..Resources::default() };
        assert!(h100.met_by(1, "NVIDIA H100 80GB HBM3", 80 * gib));
        assert!(!h100.met_by(0, "", 0), "no GPU");
        assert!(!h100.met_by(1, "NVIDIA A100-SXM4-80GB", 80 * gib), "another type");
        assert!(!h100.met_by(1, "NVIDIA H100 PCIe", 24 * gib), "too little memory");
        let any = Resources { gpu_count: 2, gpu_type: "any".into(), ..Resources::default() };
        assert!(any.met_by(2, "NVIDIA H200", 141 * gib) && !any.met_by(1, "NVIDIA H200", 141 * gib));
        assert!(Resources::default().met_by(0, "", 0), "a CPU pipeline runs anywhere");
        assert_eq!(memory_bytes("512Mi"), Some(512 << 20));
        assert_eq!(memory_bytes("1G"), Some(1_000_000_000));
        assert_eq!(memory_bytes("x"), None);
    }

    #[test]
    fn a_run_policy_is_read_from_a_deploy() {
        let gpu = pb::Resources {
            cpu: "500m".into(),
            memory: "4Gi".into(),
            gpu_count: 1,
            gpu_memory: "40Gi".into(),
            ..Default::default()
        };
        let policy = RunPolicy::from_request(&request(gpu, "", 5)).expect("valid");
        assert_eq!(policy.queue(), "default");
        assert_eq!((policy.timeout_ms, policy.max_deliveries), (Some(90_000), Some(5)));
        assert_eq!(policy.resources.gpu_type, "any", "a GPU of any type unless one is named");
        assert_eq!(policy.retry_proto().map(|r| (r.max_deliveries, r.initial_backoff)), Some((5, None)));
        let none = RunPolicy::from_request(&pb::DeployPipelineRequest::default()).expect("valid");
        assert_eq!((none.queue(), none.timeout_ms, none.max_deliveries), ("default", None, None));
        assert_eq!(none.retry_proto(), None);
    }

    #[test]
    fn a_backoff_may_be_set_without_deliveries_and_shows_as_given() {
        let secs = |s| prost_types::Duration { seconds: s, nanos: 0 };
        let retry = pb::RetryPolicy { max_deliveries: 0, initial_backoff: Some(secs(2)), max_backoff: Some(secs(60)) };
        let request = pb::DeployPipelineRequest { retry: Some(retry), ..Default::default() };
        let policy = RunPolicy::from_request(&request).expect("valid");
        assert_eq!(policy.max_deliveries, None, "0 deliveries: the cluster's");
        assert_eq!(policy.backoff, Some(Backoff { initial_ms: 2_000, max_ms: 60_000 }));
        assert_eq!(policy.retry_proto(), Some(retry));
        let backwards =
            pb::RetryPolicy { max_backoff: Some(secs(1)), initial_backoff: Some(secs(5)), max_deliveries: 3 };
        let request = pb::DeployPipelineRequest { retry: Some(backwards), ..Default::default() };
        assert_eq!(RunPolicy::from_request(&request).map_err(|e| e.field), Err("retry.max_backoff".to_owned()));
    }

    #[test]
    fn mistakes_name_their_field() {
        let r = |f: fn(&mut pb::Resources)| {
            let mut resources = pb::Resources::default();
            f(&mut resources);
            resources
        };
        for (req, field) in [
            (request(r(|r| r.cpu = "two".into()), "", 0), "resources.cpu"),
            (request(r(|r| r.cpu = "1.5m".into()), "", 0), "resources.cpu"),
            (request(r(|r| r.memory = "4GB".into()), "", 0), "resources.memory"),
            (request(r(|r| r.gpu_count = 17), "", 0), "resources.gpu_count"),
            (request(r(|r| r.gpu_type = "h100".into()), "", 0), "resources.gpu_count"),
            (
                request(
                    r(|r| {
                        r.gpu_count = 1;
                        r.gpu_type = "H100!".into()
                    }),
                    "",
                    0,
                ),
                "resources.gpu_type",
            ),
            (
                request(
                    r(|r| {
                        r.gpu_count = 1;
                        r.gpu_memory = "lots".into()
                    }),
                    "",
                    0,
                ),
                "resources.gpu_memory",
            ),
            (request(pb::Resources::default(), "Batch Queue", 0), "queue"),
            (request(pb::Resources::default(), "", 101), "retry.max_deliveries"),
        ] {
            assert_eq!(RunPolicy::from_request(&req).map_err(|e| e.field), Err(field.to_owned()), "{req:?}");
        }
    }
}
