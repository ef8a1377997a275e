//! `batchmill events`: a job's event log, listed in pages or followed live.

use anyhow::Context;
use batchmill_proto::jobs::v1::{self as pb, job_service_client::JobServiceClient};
use clap::Args;

use crate::connect::Api;

#[derive(Debug, Args)]
pub struct EventsArgs {
    job_id: String,
    /// Keep printing new events until the job ends.
    #[arg(short, long)]
    follow: bool,
    /// Start after this event's cursor.
    #[arg(long, default_value = "")]
    after: String,
    /// Only these levels (info, warn, error, success, failed); repeatable.
    #[arg(long = "level")]
    levels: Vec<String>,
    /// Only these types (job_state, batch_failed, ...); repeatable.
    #[arg(long = "type")]
    types: Vec<String>,
    /// Only events about this input: a named input, or an item's index.
    #[arg(long, default_value = "")]
    input: String,
}

/// Prints the events `args` asks for, one a line.
pub async fn run(client: &mut JobServiceClient<Api>, args: EventsArgs) -> anyhow::Result<()> {
    let EventsArgs { job_id, follow, after, levels, types, input } = args;
    let levels = levels
        .iter()
        .map(|l| {
            let name = format!("EVENT_LEVEL_{}", l.to_uppercase());
            pb::EventLevel::from_str_name(&name)
                .map(|l| l as i32)
                .with_context(|| format!("--level {l:?}: not a level; use info, warn, error, success or failed"))
        })
        .collect::<anyhow::Result<Vec<i32>>>()?;
    if follow {
        let request = pb::WatchJobEventsRequest { job_id, cursor: after, levels, types, input };
        let mut stream = client.watch_job_events(request).await?.into_inner();
        while let Some(response) = stream.message().await? {
            print_event(&response.event.unwrap_or_default());
        }
        return Ok(());
    }
    let mut token = after;
    loop {
        let request = pb::ListJobEventsRequest {
            job_id: job_id.clone(),
            page_size: 1000,
            page_token: token,
            levels: levels.clone(),
            types: types.clone(),
            input: input.clone(),
        };
        let page = client.list_job_events(request).await?.into_inner();
        page.events.iter().for_each(print_event);
        if page.next_page_token.is_empty() {
            return Ok(());
        }
        token = page.next_page_token;
    }
}

/// One event a line: time, level, type, cursor, batch (or -), message.
fn print_event(event: &pb::JobEvent) {
    let time = event.time.map(|t| t.to_string()).unwrap_or_default();
    let level = event.level().as_str_name().trim_start_matches("EVENT_LEVEL_");
    let batch = if event.batch_id.is_empty() { "-" } else { event.batch_id.as_str() };
    println!("{time} {level} {} #{} {batch} {}", event.r#type, event.cursor, event.message);
}
