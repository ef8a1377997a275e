//! Following a sandbox's jobs as a user would: polling `GetJob` until a
//! state (through outages, too), paging batch records, what workers hold,
//! submitting over REST, and reading the result objects.

use std::time::Duration;

use anyhow::{Context, bail};
use batchmill_blob::ObjectStore;
use batchmill_proto::jobs::v1 as pb;

use crate::{Sandbox, is_terminal};

impl Sandbox {
    /// Polls `GetJob` until `done(job)` holds, or fails after `timeout`
    /// saying it waited for `what`.
    pub async fn wait_job(
        &self,
        job_id: &str,
        timeout: Duration,
        what: &str,
        done: impl Fn(&pb::Job) -> bool,
    ) -> anyhow::Result<pb::Job> {
        let mut client = self.jobs().await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let request = pb::GetJobRequest { job_id: job_id.into() };
            let job = client.get_job(request).await?.into_inner().job.context("no job")?;
            if done(&job) {
                return Ok(job);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("job {job_id}: no {what} after {timeout:?}: {job:?}{}", self.job_logs_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every batch record of a job, as ListBatches pages them: (seq,
    /// deliveries), in seq order.
    pub async fn batch_attempts(&self, job_id: &str) -> anyhow::Result<Vec<(i64, i64)>> {
        let mut out: Vec<_> = self.batch_records(job_id, 1000).await?.iter().map(|b| (b.seq, b.attempts)).collect();
        out.sort();
        Ok(out)
    }

    /// Every batch record of a job in the order ListBatches gives them,
    /// `page_size` per page.
    pub async fn batch_records(&self, job_id: &str, page_size: i32) -> anyhow::Result<Vec<pb::BatchRecord>> {
        let mut client = self.jobs().await?;
        let (mut out, mut token) = (Vec::new(), String::new());
        loop {
            let request = pb::ListBatchesRequest { job_id: job_id.into(), page_size, page_token: token };
            let page = client.list_batches(request).await?.into_inner();
            anyhow::ensure!(page.batches.len() <= page_size as usize, "a page of {} records", page.batches.len());
            out.extend(page.batches);
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        Ok(out)
    }

    /// Polls `GetJob` until the job is terminal, through outages: an answer
    /// that the cluster is unavailable (no leader, etcd down) is waited out.
    pub async fn wait_terminal_through(&self, job_id: &str, timeout: Duration) -> anyhow::Result<pb::Job> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = String::new();
        loop {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "job {job_id}: no terminal state after {timeout:?}; last answer: {last}{}",
                self.job_logs_tail()
            );
            let answer = match self.jobs().await {
                Ok(mut client) => client.get_job(pb::GetJobRequest { job_id: job_id.into() }).await,
                Err(e) => Err(tonic::Status::unavailable(e.to_string())),
            };
            match answer {
                Ok(r) => {
                    let job = r.into_inner().job.context("no job")?;
                    if is_terminal(job.state()) {
                        return Ok(job);
                    }
                    last = format!("{job:?}");
                }
                Err(status) if status.code() == tonic::Code::Unavailable => last = format!("{status:?}"),
                Err(status) => anyhow::bail!("job {job_id}: {status:?}"),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until the job is terminal.
    pub async fn wait_terminal(&self, job_id: &str, timeout: Duration) -> anyhow::Result<pb::Job> {
        self.wait_job(job_id, timeout, "terminal state", |job| is_terminal(job.state())).await
    }

    /// Waits until at least `batches` batches of the job succeeded, to catch
    /// a job in flight.
    pub async fn wait_succeeded(&self, job_id: &str, batches: i64, timeout: Duration) -> anyhow::Result<pb::Job> {
        let what = format!("{batches} succeeded batches");
        self.wait_job(job_id, timeout, &what, |job| job.batches.as_ref().is_some_and(|b| b.succeeded >= batches)).await
    }

    /// Waits until workers hold `held` batches of the job unsettled.
    pub async fn wait_held(&self, job_id: &str, held: u64, timeout: Duration) -> anyhow::Result<()> {
        let nats = async_nats::jetstream::new(batchmill_queue::client(&self.nats_url).await?);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let stream = nats.get_stream("BATCHMILL_BATCHES").await?;
            let now_held = match stream
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&format!("job-{job_id}"))
                .await
            {
                Ok(mut consumer) => consumer.info().await?.num_ack_pending as u64,
                Err(_) => 0,
            };
            if now_held == held {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("job {job_id}: workers hold {now_held} batches, not {held}, after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Submits `body` as `POST /v1/jobs` through the gateway's REST and
    /// waits for the job to end.
    pub async fn submit_rest(&self, body: serde_json::Value, timeout: Duration) -> anyhow::Result<pb::Job> {
        let id = self.post_job(body).await?;
        self.wait_terminal(&id, timeout).await
    }

    /// Submits a job through REST and returns its id at once.
    pub async fn post_job(&self, body: serde_json::Value) -> anyhow::Result<String> {
        let response = self.http().post(format!("{}/v1/jobs", self.rest_url())).json(&body).send().await?;
        anyhow::ensure!(response.status() == 200, "{}", response.text().await?);
        let job: serde_json::Value = response.json().await?;
        Ok(job["jobId"].as_str().unwrap_or_default().to_owned())
    }

    /// Result objects of a job: (key, body), sorted by key.
    pub async fn results(&self, job: &pb::Job) -> anyhow::Result<Vec<(String, String)>> {
        let output = batchmill_core::S3Uri::parse(&job.output_uri).map_err(anyhow::Error::msg)?.join(&job.job_id);
        let mut out = Vec::new();
        for key in self.blob.list(&output.bucket, &format!("{}/", output.key)).await? {
            let body = self.blob.get(&output.bucket, &key).await?;
            out.push((key, String::from_utf8(body.to_vec())?));
        }
        out.sort();
        Ok(out)
    }
}
