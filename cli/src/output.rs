//! How results print (`--output`): proto3 JSON (the default, as the REST API
//! writes it), YAML, or a table for jobs, job lists and batches (other
//! results print as YAML in table mode).

use anyhow::Context;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Json,
    Yaml,
    Table,
}

static CHOSEN: std::sync::OnceLock<Output> = std::sync::OnceLock::new();

/// The process's `--output`, set once at start.
pub fn set(output: Output) {
    let _ = CHOSEN.set(output);
}

pub fn get() -> Output {
    CHOSEN.get().copied().unwrap_or(Output::Json)
}

/// `message` (the proto message `name`) as proto3 JSON.
pub fn to_value<M: Message>(message: &M, name: &str) -> anyhow::Result<Value> {
    let pool = DescriptorPool::decode(batchmill_proto::FILE_DESCRIPTOR_SET)?;
    let desc = pool.get_message_by_name(name).with_context(|| format!("no message {name}"))?;
    let dynamic = DynamicMessage::decode(desc, message.encode_to_vec().as_slice())?;
    let mut out = serde_json::Serializer::new(Vec::new());
    dynamic.serialize_with_options(&mut out, &SerializeOptions::new().skip_default_fields(false))?;
    Ok(serde_json::from_slice(&out.into_inner())?)
}

/// `message` written as `output` asks.
pub fn render<M: Message>(message: &M, name: &str, output: Output) -> anyhow::Result<String> {
    let value = to_value(message, name)?;
    Ok(match output {
        Output::Json => serde_json::to_string_pretty(&value)?,
        Output::Yaml => serde_yaml::to_string(&value)?.trim_end().to_owned(),
        Output::Table => match name.rsplit('.').next().unwrap_or(name) {
            "Job" => table(&JOB_COLUMNS, std::slice::from_ref(&value)),
            "ListJobsResponse" => with_next(table(&JOB_COLUMNS, list(&value, "jobs")), &value),
            "ListBatchesResponse" => with_next(table(&BATCH_COLUMNS, list(&value, "batches")), &value),
            _ => serde_yaml::to_string(&value)?.trim_end().to_owned(),
        },
    })
}

fn list<'a>(value: &'a Value, field: &str) -> &'a [Value] {
    value[field].as_array().map_or(&[], Vec::as_slice)
}

fn with_next(mut table: String, value: &Value) -> String {
    if let Some(token) = value["nextPageToken"].as_str().filter(|t| !t.is_empty()) {
        table.push_str(&format!("\n(more: --page-token {token})"));
    }
    table
}

/// A column: its heading and how a row's cell is read.
type Column = (&'static str, fn(&Value) -> String);

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

const JOB_COLUMNS: [Column; 7] = [
    ("JOB ID", |j| text(&j["jobId"])),
    ("PIPELINE", |j| text(&j["pipeline"])),
    ("STATE", |j| text(&j["state"]).trim_start_matches("JOB_STATE_").to_owned()),
    ("BATCHES", |j| format!("{}/{}", text(&j["batches"]["succeeded"]), text(&j["batches"]["total"]))),
    ("ITEMS", |j| format!("{}/{}", text(&j["items"]["completed"]), text(&j["items"]["total"]))),
    ("FAILED", |j| text(&j["batches"]["failed"])),
    ("CREATED", |j| text(&j["createTime"])),
];

const BATCH_COLUMNS: [Column; 7] = [
    ("BATCH ID", |b| text(&b["batchId"])),
    ("STATE", |b| text(&b["state"]).trim_start_matches("BATCH_STATE_").to_owned()),
    ("ITEMS", |b| text(&b["items"])),
    ("ATTEMPTS", |b| text(&b["attempts"])),
    ("WORKER", |b| text(&b["workerId"])),
    ("DURATION", |b| text(&b["duration"])),
    ("ERROR", |b| text(&b["lastError"]).lines().next().unwrap_or_default().to_owned()),
];

/// Rows under headings, each column as wide as its widest cell.
fn table(columns: &[Column], rows: &[Value]) -> String {
    let cells: Vec<Vec<String>> = rows.iter().map(|r| columns.iter().map(|(_, cell)| cell(r)).collect()).collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (head, _))| cells.iter().map(|row| row[i].chars().count()).fold(head.len(), usize::max))
        .collect();
    let line = |row: Vec<String>| {
        let padded: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut out = vec![line(columns.iter().map(|(head, _)| (*head).to_owned()).collect())];
    out.extend(cells.into_iter().map(line));
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use batchmill_proto::jobs::v1 as pb;

    use super::*;

    fn job() -> pb::Job {
        pb::Job {
            job_id: "j-1".into(),
            pipeline: "echo".into(),
            state: pb::JobState::Running as i32,
            batches: Some(pb::BatchCounts { total: 10, succeeded: 4, failed: 1, ..Default::default() }),
            items: Some(pb::ItemCounts { total: 100, completed: 40, ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn a_job_prints_as_json_yaml_or_a_table() {
        let json: Value =
            serde_json::from_str(&render(&job(), "batchmill.jobs.v1.Job", Output::Json).unwrap()).unwrap();
        assert_eq!((json["jobId"].as_str(), json["batches"]["total"].as_str()), (Some("j-1"), Some("10")));
        let yaml: Value =
            serde_yaml::from_str(&render(&job(), "batchmill.jobs.v1.Job", Output::Yaml).unwrap()).unwrap();
        assert_eq!(yaml, json);
        let table = render(&job(), "batchmill.jobs.v1.Job", Output::Table).unwrap();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("JOB ID  PIPELINE  STATE    BATCHES  ITEMS   FAILED  CREATED"), "{table}");
        assert!(lines[1].starts_with("j-1     echo      RUNNING  4/10     40/100  1"), "{table}");
    }

    #[test]
    fn a_list_says_where_the_next_page_starts() {
        let page = pb::ListJobsResponse { jobs: vec![job(), job()], next_page_token: "t2".into() };
        let table = render(&page, "batchmill.jobs.v1.ListJobsResponse", Output::Table).unwrap();
        assert_eq!(table.lines().count(), 4, "{table}");
        assert!(table.ends_with("(more: --page-token t2)"), "{table}");
    }
}
