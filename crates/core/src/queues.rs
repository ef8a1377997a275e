//! Admission queues: each has a capacity, counted in workers or in GPUs,
//! which the admitted jobs in it share. A cluster names its queues in
//! `BATCHMILL_QUEUES`, as `name=capacity[:unit]` separated by commas
//! (`default=8,gpu=4:gpus`); a capacity of 0 is unlimited. The queue
//! `default` always exists, unlimited unless named.

use std::collections::BTreeMap;

use crate::FieldViolation;

/// The queue of jobs and pipelines that name none.
pub const DEFAULT_QUEUE: &str = "default";

/// What a queue's capacity counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Unit {
    /// Workers: a job holds its `workers`.
    #[default]
    Workers,
    /// GPUs: a job holds its `workers` times its pipeline's GPUs per worker.
    Gpus,
}

/// One queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueSpec {
    /// Units its admitted jobs may hold at once; 0 for no limit.
    pub capacity: u32,
    pub unit: Unit,
}

/// The cluster's queues, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queues {
    queues: BTreeMap<String, QueueSpec>,
}

impl Default for Queues {
    fn default() -> Queues {
        Queues { queues: [(DEFAULT_QUEUE.to_owned(), QueueSpec::default())].into() }
    }
}

/// Checks a queue name: lowercase letters, digits and '-', 1 to 63.
pub fn check_name(field: &str, name: &str) -> Result<(), FieldViolation> {
    let ok = (1..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(FieldViolation::new(
            field,
            format!("{name:?} is not a queue name: lowercase letters, digits and '-', 1 to 63"),
        ))
    }
}

impl Queues {
    /// Parses `BATCHMILL_QUEUES`; an error names the entry that is wrong.
    pub fn parse(text: &str) -> Result<Queues, FieldViolation> {
        let mut queues = Queues::default();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let bad = |why: &str| FieldViolation::new("BATCHMILL_QUEUES", format!("{entry:?}: {why}"));
            let (name, rest) = entry.split_once('=').ok_or_else(|| bad("not name=capacity[:unit]"))?;
            check_name("BATCHMILL_QUEUES", name)?;
            let (capacity, unit) = match rest.split_once(':') {
                Some((c, "workers")) => (c, Unit::Workers),
                Some((c, "gpus")) => (c, Unit::Gpus),
                Some(_) => return Err(bad("the unit is workers or gpus")),
                None => (rest, Unit::Workers),
            };
            let capacity = capacity.parse().map_err(|_| bad("the capacity is a whole number (0: no limit)"))?;
            queues.queues.insert(name.to_owned(), QueueSpec { capacity, unit });
        }
        Ok(queues)
    }

    pub fn get(&self, name: &str) -> Option<QueueSpec> {
        self.queues.get(name).copied()
    }

    /// The queues' names, comma-separated, for errors.
    pub fn names(&self) -> String {
        self.queues.keys().cloned().collect::<Vec<_>>().join(", ")
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &QueueSpec)> {
        self.queues.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_queues_and_names_a_bad_entry() {
        let q = Queues::parse("gpu=4:gpus, batch=8").unwrap();
        assert_eq!(q.get("gpu"), Some(QueueSpec { capacity: 4, unit: Unit::Gpus }));
        assert_eq!(q.get("batch"), Some(QueueSpec { capacity: 8, unit: Unit::Workers }));
        assert_eq!(q.get(DEFAULT_QUEUE), Some(QueueSpec::default()), "default is always there, unlimited");
        assert_eq!(Queues::parse("default=2").unwrap().get(DEFAULT_QUEUE).unwrap().capacity, 2);
        for bad in ["gpu", "gpu=x", "gpu=2:tpus", "GPU=1"] {
            let err = Queues::parse(bad).unwrap_err();
            assert_eq!(err.field, "BATCHMILL_QUEUES", "{bad}");
        }
        assert_eq!(q.names(), "batch, default, gpu");
    }
}
