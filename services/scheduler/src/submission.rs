//! Accepting a submission, off the actor: the pipeline and config are
//! checked, inline items are staged in S3 as NDJSON, an S3 source is probed
//! through the lister (so a bad selection is refused now, naming its field,
//! not failed later), and only then is the job recorded. Dry runs check the
//! same way and list what a job would read.

use batchmill_core::access::Secrets;
use batchmill_core::fence::Fence;
use batchmill_core::sealed::{SealError, Sealed};
use batchmill_core::time::now_ms;
use batchmill_core::{Caller, FieldViolation, JobId, JobSpec, RemoteError, S3Selection, S3Uri, SourceSpec};
use batchmill_proto::jobs::v1 as pb;
use bytes::Bytes;

use crate::SchedulerError;
use crate::actor::Scheduler;
use crate::record::{Input, JobRecord};

/// Most matched files a dry run lists by name; it counts them all.
pub const DRY_RUN_MAX_FILES: usize = 100_000;

impl Scheduler {
    /// Accepts a job for `caller`: stages its inline items in S3, then
    /// records it, within its account's limits.
    pub async fn submit(&self, mut spec: JobSpec, caller: &Caller) -> Result<pb::Job, SchedulerError> {
        let deployed = self.pipelines.resolve(&spec.pipeline)?;
        spec.config = self.pipelines.config_for(&spec.pipeline, deployed.as_ref(), &spec.config)?;
        if let Some(deployed) = &deployed {
            // The version's timeout and retries, unless the job names its own.
            spec.timeout_ms = spec.timeout_ms.or(deployed.run.timeout_ms);
            spec.max_receive_count = spec.max_receive_count.or(deployed.run.max_deliveries);
        }
        fenced(&self.settings.fence, &spec, &caller.account)?;
        spec.source = self.own_files(spec.source, &caller.account).await?;
        let account = self.accounts.limits_of(&caller.account).await.map_err(SchedulerError::Account)?;
        let admission = self.admission(&spec, deployed.as_ref(), &account.limits, caller)?;
        let create_ms = now_ms();
        let job_id = JobId::generate(create_ms);
        self.output_writable(spec.output_uri.as_ref(), job_id.as_str()).await?;
        let secrets = Secrets { s3: spec.s3_access.clone(), sql_password: spec.sql_password.clone() };
        let input_access = if secrets.is_empty() { None } else { Some(self.seal(&secrets)?) };
        let (mut input_bytes, mut input_names) = (0, Vec::new());
        let (input, item_count) = match spec.source {
            SourceSpec::Items(items) => {
                if let Some(uri) =
                    items.iter().find_map(|i| batchmill_core::named::objects_of(i).first().map(|(_, u)| u.to_string()))
                {
                    // The first object, read with the job's credentials: wrong
                    // credentials or a missing object are refused now.
                    let selection = S3Selection::parse("s3_credentials", &[uri], &[], &[])?;
                    self.checked(Input::FilePaths(selection), "s3_credentials", &secrets).await?;
                }
                input_names = items
                    .iter()
                    .map_while(|item| batchmill_core::named::name_of(item).map(str::to_owned))
                    .take(crate::record::INPUT_NAMES)
                    .collect();
                self.within_item_limit(items.len() as u64, "item_list.items")?;
                let lines: Vec<String> = items.iter().map(ToString::to_string).collect();
                let (input, bytes) = self.stage(&job_id, &lines).await?;
                input_bytes = bytes;
                (input, Some(items.len() as u64))
            }
            // Counted as the lister goes.
            SourceSpec::FilePaths(selection) => {
                (self.checked(Input::FilePaths(selection), "file_path_lister", &secrets).await?, None)
            }
            SourceSpec::DelimitedFiles(selection) => {
                (self.checked(Input::DelimitedFiles(selection), "delimited_files", &secrets).await?, None)
            }
            SourceSpec::Folders(folders) => {
                (self.checked(Input::Folders { folders }, "s3_folders", &secrets).await?, None)
            }
            SourceSpec::Sql(sql) => (self.checked(Input::Sql(sql), "sql_query", &secrets).await?, None),
            // Resolved above by `own_files`.
            SourceSpec::Files(_) => return Err(FieldViolation::new("files", "could not be resolved").into()),
        };
        let record = JobRecord {
            max_receive_count: spec.max_receive_count.unwrap_or(self.settings.policy.max_deliver),
            timeout_ms: spec.timeout_ms,
            max_workers: spec.max_workers,
            batch_size: spec.batch_size,
            config: spec.config,
            output_uri: spec.output_uri.unwrap_or_else(|| self.settings.default_output.clone()).to_string(),
            item_count,
            deployed,
            trace: batchmill_runtime::trace::current(),
            owner: caller.owner(),
            input_bytes,
            input_names,
            input_access,
            quota: account.limits.queue_quotas.get(&admission.queue).copied().unwrap_or(0),
            queue: admission.queue,
            priority: spec.priority,
            demand: admission.demand,
            bisect: spec.bisect,
            ..JobRecord::pending(job_id, spec.pipeline, input, create_ms)
        };
        tracing::info!(
            job_id = %record.job_id,
            account = %caller.account,
            key_id = %caller.key_id,
            trace_id = %batchmill_runtime::trace::trace_id(),
            "job submitted"
        );
        self.record(record, account.limits).await
    }

    /// The queue a submission is admitted through and what it holds of the
    /// queue's capacity; its priority checked against its account's ceiling
    /// (a cluster admin's is not bounded).
    fn admission(
        &self,
        spec: &JobSpec,
        deployed: Option<&crate::pipelines::Deployed>,
        limits: &batchmill_accounts::Limits,
        caller: &Caller,
    ) -> Result<Admission, SchedulerError> {
        let queue = spec
            .queue
            .clone()
            .or_else(|| deployed.map(|d| d.run.queue.clone()).filter(|q| !q.is_empty()))
            .unwrap_or_else(|| batchmill_core::queues::DEFAULT_QUEUE.to_owned());
        let Some(spec_of_queue) = self.settings.queues.get(&queue) else {
            let message = format!("no queue {queue:?}; this cluster has: {}", self.settings.queues.names());
            return Err(batchmill_core::FieldViolation::new("queue", message).into());
        };
        if spec.priority > limits.max_priority && caller.role != batchmill_core::Role::ClusterAdmin {
            let message = format!("must be at most {}, its account's max_priority", limits.max_priority);
            return Err(batchmill_core::FieldViolation::new("priority", message).into());
        }
        let gpus = deployed.map_or(0, |d| d.run.resources.gpu_count).max(1);
        Ok(Admission { demand: demand(spec_of_queue.unit, spec.max_workers, gpus), queue })
    }

    /// A source of files by id as the lines of those files of `account`
    /// (any other source as it is); an id that is not the account's file is
    /// a 400 naming it.
    async fn own_files(&self, source: SourceSpec, account: &str) -> Result<SourceSpec, SchedulerError> {
        let SourceSpec::Files(ids) = source else { return Ok(source) };
        let mut s3_paths = Vec::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            let field = format!("files.file_ids[{i}]");
            let record = self
                .kv
                .get(&batchmill_core::files::file_key(account, id))
                .await
                .map_err(SchedulerError::Files)?
                .and_then(|bytes| batchmill_core::files::FileRecord::decode(&bytes).ok())
                .ok_or_else(|| FieldViolation::new(&field, format!("no file {id} in this account")))?;
            s3_paths.push(S3Uri::parse(&record.uri).map_err(|e| FieldViolation::new(&field, e.to_string()))?);
        }
        Ok(SourceSpec::DelimitedFiles(S3Selection { s3_paths, includes: Vec::new(), excludes: Vec::new() }))
    }

    /// Stages a job's items (JSON text, one per line) as NDJSON in S3;
    /// returns the job's input and its size in bytes.
    async fn stage(&self, job_id: &JobId, lines: &[String]) -> Result<(Input, u64), SchedulerError> {
        let uri = self.settings.staging.join(job_id.as_str()).join("items.ndjson");
        let mut body = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
        for line in lines {
            body.extend_from_slice(line.as_bytes());
            body.push(b'\n');
        }
        let bytes = body.len() as u64;
        self.store
            .put(&uri.bucket, &uri.key, Bytes::from(body), "application/x-ndjson")
            .await
            .map_err(SchedulerError::Staging)?;
        Ok((Input::Ndjson { uris: vec![uri.to_string()] }, bytes))
    }

    /// Makes a child job over the items of the parent's batches that failed
    /// for good, with the parent's pipeline version, config, output, owner
    /// and policies (`batch_size` and `workers` when not 0), and links the
    /// two. The child counts against the parent's account's limits.
    pub async fn retry_failed_items(
        &self,
        parent: JobId,
        batch_size: u32,
        workers: u32,
    ) -> Result<pb::Job, SchedulerError> {
        let (record, items) = self.failed_items(parent.clone()).await?;
        let account = self.accounts.limits_of(&record.owner.account).await.map_err(SchedulerError::Account)?;
        let create_ms = now_ms();
        let job_id = JobId::generate(create_ms);
        let (input, input_bytes) = self.stage(&job_id, &items).await?;
        let input_names: Vec<String> = items
            .iter()
            .filter_map(|item| serde_json::from_str::<serde_json::Value>(item).ok())
            .map_while(|item| batchmill_core::named::name_of(&item).map(str::to_owned))
            .take(crate::record::INPUT_NAMES)
            .collect();
        let child = JobRecord {
            max_workers: if workers == 0 { record.max_workers } else { workers },
            batch_size: if batch_size == 0 { record.batch_size } else { batch_size },
            config: record.config.clone(),
            output_uri: record.output_uri.clone(),
            item_count: Some(items.len() as u64),
            trace: batchmill_runtime::trace::current(),
            max_receive_count: record.max_receive_count,
            timeout_ms: record.timeout_ms,
            deployed: record.deployed.clone(),
            owner: record.owner.clone(),
            input_bytes,
            input_names,
            input_access: record.input_access.clone(),
            parent: Some(parent.clone()),
            quota: account.limits.queue_quotas.get(&record.queue).copied().unwrap_or(0),
            queue: record.queue.clone(),
            priority: record.priority,
            demand: if workers == 0 { record.demand } else { record.demand / record.max_workers.max(1) * workers },
            bisect: record.bisect,
            ..JobRecord::pending(job_id, record.pipeline.clone(), input, create_ms)
        };
        let child_id = child.job_id.clone();
        let job = self.record(child, account.limits).await?;
        tracing::info!(job_id = %child_id, parent = %parent, items = items.len(), "failed items retried as a child job");
        self.adopt(parent, child_id);
        Ok(job)
    }

    /// Checks a submission as [`Scheduler::submit`] would, without creating
    /// a job, and says what it would read: the matched files (as Cortex
    /// prints them) and the item and batch counts where they are known.
    pub async fn dry_run(&self, spec: JobSpec, caller: &Caller) -> Result<pb::DryRunJobResponse, SchedulerError> {
        let deployed = self.pipelines.resolve(&spec.pipeline)?;
        self.pipelines.config_for(&spec.pipeline, deployed.as_ref(), &spec.config)?;
        fenced(&self.settings.fence, &spec, &caller.account)?;
        let mut spec = spec;
        spec.source = self.own_files(spec.source, &caller.account).await?;
        // The queue and priority, as SubmitJob would check them.
        let account = self.accounts.limits_of(&caller.account).await.map_err(SchedulerError::Account)?;
        self.admission(&spec, deployed.as_ref(), &account.limits, caller)?;
        self.output_writable(spec.output_uri.as_ref(), &format!("dry-run-{}", now_ms())).await?;
        let batches = |items: u64| items.div_ceil(u64::from(spec.batch_size)) as i64;
        let secrets = Secrets { s3: spec.s3_access.clone(), sql_password: spec.sql_password.clone() };
        let (selection, field, lines) = match spec.source {
            SourceSpec::Sql(sql) => {
                // The query runs (through a cursor, its first rows only):
                // a bad URL, credentials or query is refused now.
                self.checked(Input::Sql(sql), "sql_query", &secrets).await?;
                let message = "validations passed".into();
                return Ok(pb::DryRunJobResponse {
                    message,
                    files: vec![],
                    file_count: 0,
                    item_count: -1,
                    batch_count: -1,
                });
            }
            SourceSpec::Items(items) => {
                self.within_item_limit(items.len() as u64, "item_list.items")?;
                return Ok(pb::DryRunJobResponse {
                    message: "validations passed".into(),
                    files: vec![],
                    file_count: 0,
                    item_count: items.len() as i64,
                    batch_count: batches(items.len() as u64),
                });
            }
            SourceSpec::FilePaths(selection) => (selection, "file_path_lister", false),
            SourceSpec::DelimitedFiles(selection) => (selection, "delimited_files", true),
            SourceSpec::Files(_) => return Err(FieldViolation::new("files", "could not be resolved").into()),
            SourceSpec::Folders(folders) => {
                let source = Input::Folders { folders }.to_source(&secrets);
                let (files, count) =
                    self.probe.list_files(source, DRY_RUN_MAX_FILES).await.map_err(|e| bad_source(e, "s3_folders"))?;
                self.within_item_limit(count, "s3_folders")?;
                let batch_count = batches(count);
                let mut message: String = files.iter().map(|f| format!("{f}\n")).collect();
                message.push_str("validations passed");
                return Ok(pb::DryRunJobResponse {
                    message,
                    files,
                    file_count: count as i64,
                    item_count: count as i64,
                    batch_count,
                });
            }
        };
        let source = Input::FilePaths(selection).to_source(&secrets);
        let (files, count) =
            self.probe.list_files(source, DRY_RUN_MAX_FILES).await.map_err(|e| bad_source(e, field))?;
        let mut message = String::with_capacity(files.iter().map(|f| f.len() + 1).sum::<usize>() + 64);
        for file in &files {
            message.push_str(file);
            message.push('\n');
        }
        if count > files.len() as u64 {
            message.push_str(&format!("... and {} more\n", count - files.len() as u64));
        }
        message.push_str("validations passed");
        if !lines {
            self.within_item_limit(count, field)?;
        }
        let (item_count, batch_count) = if lines { (-1, -1) } else { (count as i64, batches(count)) };
        Ok(pb::DryRunJobResponse { message, files, file_count: count as i64, item_count, batch_count })
    }

    /// Refuses a job of `count` items, over the most one job may have,
    /// naming `field` (its source) and the limit.
    fn within_item_limit(&self, count: u64, field: &str) -> Result<(), SchedulerError> {
        let limit = self.settings.max_job_items;
        if limit > 0 && count > limit {
            let message = format!(
                "{count} items, over the {limit} one job may have (the scheduler's BATCHMILL_MAX_JOB_ITEMS); \
                 split the input into several jobs"
            );
            return Err(FieldViolation::new(field, message).into());
        }
        Ok(())
    }

    /// Whether results can be written where the job names (the cluster's
    /// results location when it names none), by a probe write named `tag`.
    async fn output_writable(&self, output: Option<&S3Uri>, tag: &str) -> Result<(), SchedulerError> {
        let output = output.unwrap_or(&self.settings.default_output);
        self.writable.check(self.store.as_ref(), output, tag, "output_uri").await
    }

    /// An S3 input the lister can list: no match, an unknown bucket or
    /// refused credentials are errors now, naming `field`, not a job that
    /// fails later.
    async fn checked(&self, input: Input, field: &str, secrets: &Secrets) -> Result<Input, SchedulerError> {
        match self.probe.probe(input.to_source(secrets)).await {
            Ok(()) => Ok(input),
            Err(e) => Err(bad_source(e, field)),
        }
    }
}

impl Scheduler {
    /// The job's own secrets, sealed for its record.
    fn seal(&self, secrets: &Secrets) -> Result<Sealed, SchedulerError> {
        let key = self.settings.secret_key.as_ref().ok_or(SchedulerError::Seal(SealError::NoKey))?;
        let plain = serde_json::to_vec(secrets).map_err(|_| SchedulerError::Seal(SealError::Unopenable))?;
        key.seal(&plain).map_err(SchedulerError::Seal)
    }
}

/// Refuses a results location inside the cluster's staging or pipelines
/// places, and, for a job that brings no S3 credentials (so reads with the
/// cluster's), a source that reaches into any of the cluster's own places
/// but `account`'s uploads.
fn fenced(fence: &Fence, spec: &JobSpec, account: &str) -> Result<(), FieldViolation> {
    if let Some(output) = &spec.output_uri {
        fence.check_output("output_uri", output)?;
    }
    if spec.s3_access.is_some() {
        return Ok(());
    }
    match &spec.source {
        SourceSpec::FilePaths(selection) => {
            selection.s3_paths.iter().try_for_each(|p| fence.check_read("file_path_lister.s3_paths", p, account))
        }
        SourceSpec::DelimitedFiles(selection) => {
            selection.s3_paths.iter().try_for_each(|p| fence.check_read("delimited_files.s3_paths", p, account))
        }
        SourceSpec::Folders(folders) => {
            folders.iter().try_for_each(|f| fence.check_read("s3_folders.folders.s3_path", &f.s3_path, account))
        }
        SourceSpec::Items(items) => {
            items.iter().flat_map(batchmill_core::named::objects_of).try_for_each(|(_, uri)| {
                let field = "named_inputs.inputs.objects";
                let uri = S3Uri::parse(uri).map_err(|e| FieldViolation::new(field, e.to_string()))?;
                fence.check_read(field, &uri, account)
            })
        }
        // Resolved to the account's own files after this check.
        SourceSpec::Sql(_) | SourceSpec::Files(_) => Ok(()),
    }
}

/// The lister's refusal of a source given in request field `field`: the
/// caller's mistake names the field; anything else is the cluster's trouble.
fn bad_source(error: RemoteError, field: &str) -> SchedulerError {
    if error.code.is_caller_error() {
        SchedulerError::BadSource { field: field.to_owned(), message: error.message }
    } else {
        SchedulerError::Probe(error)
    }
}

/// Where a submission is admitted, and what it holds there.
struct Admission {
    queue: String,
    demand: u32,
}

/// What a job of `workers` workers, each with `gpus` GPUs, holds of a
/// queue whose capacity counts `unit`.
fn demand(unit: batchmill_core::queues::Unit, workers: u32, gpus: u32) -> u32 {
    match unit {
        batchmill_core::queues::Unit::Workers => workers,
        batchmill_core::queues::Unit::Gpus => workers.saturating_mul(gpus),
    }
}
