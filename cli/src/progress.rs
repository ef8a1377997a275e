//! A job followed to its end (`watch`, `submit --wait`): on a terminal, a
//! progress bar of items done, with the rate, the time left, and batches
//! done and failed; elsewhere (a pipe, a log), one line per change.

use std::io::IsTerminal;
use std::time::Duration;

use batchmill_proto::jobs::v1 as pb;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    last: String,
}

impl Progress {
    /// A bar on stderr if it is a terminal.
    pub fn new() -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} items, {per_sec}, ETA {eta}  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress { bar, last: String::new() }
    }

    /// Shows `job` as it is now.
    pub fn update(&mut self, job: &pb::Job) {
        let (b, i) = (job.batches.unwrap_or_default(), job.items.unwrap_or_default());
        let state = job.state().as_str_name().trim_start_matches("JOB_STATE_");
        let status = format!(
            "{state}: batches {}/{} done, {} failed; items {}/{}",
            b.succeeded + b.failed,
            b.total,
            b.failed,
            i.completed + i.failed,
            i.total
        );
        match &self.bar {
            Some(bar) => {
                bar.set_length(i.total.max(0) as u64);
                bar.set_position((i.completed + i.failed).max(0) as u64);
                bar.set_message(format!(
                    "{state}, batches {}/{} ({} failed)",
                    b.succeeded + b.failed,
                    b.total,
                    b.failed
                ));
            }
            None if status != self.last => eprintln!("  {status}"),
            None => {}
        }
        self.last = status;
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
