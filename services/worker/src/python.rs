//! A Cortex `PythonPredictor` driven in a Python subprocess.
//!
//! The worker writes `harness.py` next to the pipeline's files and starts
//! `python -u harness.py` there. Requests and replies are frames on the
//! child's stdin and stdout (a 4-byte big-endian length, then JSON); the
//! predictor's own output goes to stderr, and every stderr line becomes a log
//! line of the job, tagged with the batch running at the time. An exception
//! fails the batch it was raised in; a process that dies fails its batch and
//! is started again (and `__init__` run again) for the next one.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::predictor::{BatchInput, HookError, PredictError, Predictor};

/// Longest reply frame read from the predictor's process: a larger one is
/// refused (its process is stopped) rather than allocated.
pub const MAX_REPLY_BYTES: usize = 64 * 1024 * 1024;

/// Why the predictor's process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("starting {}: {source}", python.display())]
    Spawn { python: PathBuf, source: std::io::Error },
    #[error("the Python process has no pipes")]
    NoPipes,
    /// `__init__` (or loading the file) raised.
    #[error("loading the PythonPredictor failed: {traceback}")]
    Raised { traceback: String, out_of_memory: bool },
    /// The process stopped answering.
    #[error("{0}")]
    Exchange(ExchangeError),
    #[error("the Python predictor process exited during __init__ ({}): {cause}", how(status))]
    Exited { status: ExitStatus, cause: Box<StartError> },
}

impl StartError {
    /// Whether it ran out of memory: it raised MemoryError, or was killed by
    /// SIGKILL, which the worker never sends it first (the kernel's OOM
    /// killer does).
    pub fn out_of_memory(&self) -> bool {
        match self {
            StartError::Raised { out_of_memory, .. } => *out_of_memory,
            StartError::Exited { status, cause } => killed(*status) || cause.out_of_memory(),
            _ => false,
        }
    }
}

/// Why one exchange of frames failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("the Python predictor's pipes: {0}")]
    Io(#[from] std::io::Error),
    #[error("the Python predictor's reply is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the Python predictor's reply is {bytes} bytes, over the {MAX_REPLY_BYTES}-byte (64 MiB) limit")]
    TooLarge { bytes: usize },
}

/// Whether `status` is a kill by SIGKILL.
fn killed(status: ExitStatus) -> bool {
    status.signal() == Some(9)
}

/// How a process ended, saying what SIGKILL most likely means.
fn how(status: &ExitStatus) -> String {
    if killed(*status) {
        format!("{status}: killed, most likely for running out of memory")
    } else {
        status.to_string()
    }
}

/// The harness script, written beside each pipeline's files.
pub const HARNESS: &str = include_str!("harness.py");
/// Its file name.
pub const HARNESS_FILE: &str = ".batchmill_harness.py";

/// Receives the predictor's stderr lines: (batch id or "", line).
pub type LogSink = Arc<dyn Fn(&str, String) + Send + Sync>;

/// How to start the predictor.
pub struct Launch {
    pub python: PathBuf,
    /// The pipeline's files, with the harness among them.
    pub dir: PathBuf,
    /// The predictor file, relative to `dir`.
    pub path: String,
    /// Extra PYTHONPATH entries, relative to `dir` (`:`-separated).
    pub python_path: String,
    pub env: Vec<(String, String)>,
    pub config: Value,
    pub job_spec: Value,
    pub log: LogSink,
}

struct Process {
    child: Child,
    requests: ChildStdin,
    replies: BufReader<ChildStdout>,
    has_on_job_complete: bool,
    /// Replies read so far.
    answered: u64,
    /// The count in each end mark the stderr reader has passed (see
    /// harness.py's END_MARK).
    ends: mpsc::Receiver<u64>,
}

/// What harness.py writes to stderr after a call's output, before its reply.
const END_MARK: &str = "\u{1e}batchmill-end ";

/// How long a reply waits for its call's output to be read from stderr.
const END_PATIENCE: Duration = Duration::from_secs(2);

impl Process {
    /// Waits (a little) until the stderr reader has passed the end mark of
    /// reply `through`, or the end of the output of a process that exited.
    fn await_output(&self, through: u64) {
        let deadline = Instant::now() + END_PATIENCE;
        while let Ok(n) = self.ends.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            if n >= through {
                return;
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Why a call failed.
enum CallError {
    /// The predictor raised; the process lives on.
    Raised { traceback: String, out_of_memory: bool },
    /// The process is gone.
    Died(String),
    /// Its reply broke the protocol (too large); the process was stopped.
    Refused(String),
}

pub struct PythonPredictor {
    launch: Launch,
    process: Mutex<Option<Process>>,
    /// The batch running now, for tagging stderr lines.
    batch: Arc<Mutex<String>>,
}

impl PythonPredictor {
    /// Starts the process and runs the predictor's `__init__`; blocking.
    pub fn start(launch: Launch) -> Result<PythonPredictor, StartError> {
        let batch = Arc::new(Mutex::new(String::new()));
        let process = spawn(&launch, &batch)?;
        Ok(PythonPredictor { launch, process: Mutex::new(Some(process)), batch })
    }

    /// Sends `request` and waits for its reply, starting the process first
    /// if the last one died.
    fn call(&self, request: &Value, batch_id: &str) -> Result<Value, CallError> {
        let mut slot = self.process.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            (self.launch.log)(batch_id, "restarting the Python predictor process".to_owned());
            *slot = Some(spawn(&self.launch, &self.batch).map_err(|e| CallError::Died(e.to_string()))?);
        }
        let Some(process) = slot.as_mut() else {
            return Err(CallError::Died("the Python predictor process is not running".into()));
        };
        *self.batch.lock().unwrap_or_else(|e| e.into_inner()) = batch_id.to_owned();
        let result = match exchange(process, request) {
            Ok(reply) => answer(reply),
            Err(e @ ExchangeError::TooLarge { .. }) => {
                slot.take();
                Err(CallError::Refused(e.to_string()))
            }
            Err(io) => {
                // Dropping the process reaps it; the next call starts another.
                let mut process = slot.take();
                let status = process.as_mut().and_then(|p| p.child.wait().ok());
                // Its last words are still on their way: log them under this batch.
                if let Some(p) = &process {
                    p.await_output(u64::MAX);
                }
                let how = status.as_ref().map_or_else(|| io.to_string(), how);
                Err(CallError::Died(format!("the Python predictor process died ({how}); it will be restarted")))
            }
        };
        self.batch.lock().unwrap_or_else(|e| e.into_inner()).clear();
        result
    }
}

impl Predictor for PythonPredictor {
    fn predict(&self, batch: &BatchInput<'_>) -> Result<Vec<Value>, PredictError> {
        let request = json!({"op": "predict", "payload": batch.items, "batch_id": batch.batch_id});
        let reply = self.call(&request, batch.batch_id).map_err(|e| match e {
            CallError::Raised { traceback, .. } => {
                PredictError::Retryable(format!("predict raised: {}", tail(&traceback)))
            }
            CallError::Died(why) => PredictError::Retryable(why),
            CallError::Refused(why) => PredictError::Permanent(why),
        })?;
        let n = batch.items.len();
        let results = match reply.get("result").cloned().unwrap_or(Value::Null) {
            // Cortex predictors often write their own results and return None.
            Value::Null => vec![Value::Null; n],
            Value::Array(results) if results.len() == n => results,
            Value::Array(results) => {
                return Err(PredictError::Permanent(format!(
                    "predict returned a list of {} results for {n} items; return one per item, or None",
                    results.len()
                )));
            }
            other => {
                let kind = match other {
                    Value::Object(_) => "an object",
                    Value::String(_) => "a string",
                    _ => "a scalar",
                };
                return Err(PredictError::Permanent(format!(
                    "predict returned {kind}; return a list with one result per item, or None"
                )));
            }
        };
        Ok(results
            .into_iter()
            .zip(batch.items)
            .enumerate()
            .map(|(i, (result, item))| batchmill_core::named::result_line(batch.first_item + i as u64, item, result))
            .collect())
    }

    fn on_job_complete(&self, metrics: &Value) -> Result<bool, HookError> {
        let defined = {
            let slot = self.process.lock().unwrap_or_else(|e| e.into_inner());
            slot.as_ref().map(|p| p.has_on_job_complete)
        };
        if defined == Some(false) {
            return Ok(false);
        }
        match self.call(&json!({"op": "on_job_complete", "metrics": metrics}), "") {
            Ok(_) => Ok(true),
            Err(CallError::Raised { traceback, .. }) => Err(HookError::Raised(tail(&traceback))),
            Err(CallError::Died(why) | CallError::Refused(why)) => Err(HookError::Died(why)),
        }
    }
}

/// `python` if it runs Python 3.8 or later; otherwise None, and this
/// worker takes no Python pipelines (the reason is logged).
pub async fn check_interpreter(python: &std::path::Path) -> Option<PathBuf> {
    let probe = tokio::process::Command::new(python)
        .args(["-c", "import sys; sys.exit(0 if sys.version_info >= (3, 8) else 1)"])
        .output()
        .await;
    match probe {
        Ok(out) if out.status.success() => Some(python.to_path_buf()),
        Ok(out) => {
            tracing::warn!(python = %python.display(), status = %out.status, "no usable Python 3.8+; Python pipelines disabled");
            None
        }
        Err(e) => {
            tracing::warn!(python = %python.display(), error = %e, "no Python interpreter; Python pipelines disabled");
            None
        }
    }
}

/// Starts the harness and runs `__init__`.
fn spawn(launch: &Launch, batch: &Arc<Mutex<String>>) -> Result<Process, StartError> {
    let mut python_path = vec![launch.dir.to_string_lossy().into_owned()];
    python_path.extend(
        launch
            .python_path
            .split(':')
            .filter(|p| !p.is_empty())
            .map(|p| launch.dir.join(p).to_string_lossy().into_owned()),
    );
    if let Ok(existing) = std::env::var("PYTHONPATH") {
        python_path.push(existing);
    }
    let mut child = Command::new(&launch.python)
        .arg("-u")
        .arg(HARNESS_FILE)
        .current_dir(&launch.dir)
        .env("PYTHONPATH", python_path.join(":"))
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| StartError::Spawn { python: launch.python.clone(), source })?;
    let (Some(requests), Some(replies), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        let _ = child.kill();
        return Err(StartError::NoPipes);
    };
    let (log, batch) = (launch.log.clone(), batch.clone());
    let (ends_tx, ends) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(n) = line.strip_prefix(END_MARK) {
                let _ = ends_tx.send(n.parse().unwrap_or(0));
                continue;
            }
            let batch_id = batch.lock().unwrap_or_else(|e| e.into_inner()).clone();
            log(&batch_id, line);
        }
    });
    let mut process =
        Process { child, requests, replies: BufReader::new(replies), has_on_job_complete: false, answered: 0, ends };
    let init = json!({"op": "init", "path": launch.path, "config": launch.config, "job_spec": launch.job_spec});
    let initialized = match exchange(&mut process, &init) {
        Err(e) => Err(StartError::Exchange(e)),
        Ok(reply) => answer(reply).map_err(|e| match e {
            CallError::Raised { traceback, out_of_memory } => {
                StartError::Raised { traceback: tail(&traceback), out_of_memory }
            }
            CallError::Died(why) | CallError::Refused(why) => {
                StartError::Exchange(ExchangeError::Io(std::io::Error::other(why)))
            }
        }),
    };
    match initialized {
        Ok(reply) => {
            process.has_on_job_complete = reply.get("has_on_job_complete").and_then(Value::as_bool).unwrap_or(false);
            Ok(process)
        }
        Err(cause) => {
            // Give a dying process a moment to be reaped, to say how it ended.
            let status = process.child.try_wait().ok().flatten().or_else(|| {
                std::thread::sleep(Duration::from_millis(100));
                process.child.try_wait().ok().flatten()
            });
            Err(match status {
                Some(status) => StartError::Exited { status, cause: Box::new(cause) },
                None => cause,
            })
        }
    }
}

/// One request and its reply.
fn exchange(process: &mut Process, request: &Value) -> Result<Value, ExchangeError> {
    let body = serde_json::to_vec(request)?;
    let length = u32::try_from(body.len()).map_err(|_| std::io::Error::other("request over 4 GiB"))?;
    process.requests.write_all(&length.to_be_bytes())?;
    process.requests.write_all(&body)?;
    process.requests.flush()?;
    let reply = read_reply(&mut process.replies);
    // The call's output comes through another pipe: wait until it has all
    // been logged under this call's batch before the next call retags.
    process.answered += 1;
    process.await_output(process.answered);
    reply
}

/// One framed reply: a 4-byte big-endian length, at most
/// [`MAX_REPLY_BYTES`], then that many bytes of JSON. The body's memory
/// grows as it arrives, not as the length claims.
pub fn read_reply(replies: &mut impl Read) -> Result<Value, ExchangeError> {
    let mut header = [0u8; 4];
    replies.read_exact(&mut header)?;
    let bytes = u32::from_be_bytes(header) as usize;
    if bytes > MAX_REPLY_BYTES {
        return Err(ExchangeError::TooLarge { bytes });
    }
    let mut body = Vec::with_capacity(bytes.min(64 * 1024));
    let read = replies.take(bytes as u64).read_to_end(&mut body)?;
    if read < bytes {
        let message = format!("the reply ended after {read} of its {bytes} bytes");
        return Err(ExchangeError::Io(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, message)));
    }
    Ok(serde_json::from_slice(&body)?)
}

fn answer(reply: Value) -> Result<Value, CallError> {
    if reply.get("ok").and_then(Value::as_bool) == Some(true) {
        return Ok(reply);
    }
    let traceback = reply.get("error").and_then(Value::as_str).unwrap_or("unknown error").to_owned();
    let out_of_memory = reply.get("out_of_memory").and_then(Value::as_bool).unwrap_or(false);
    Err(CallError::Raised { traceback, out_of_memory })
}

/// The end of a traceback, where the error is: at most 4,000 bytes.
fn tail(traceback: &str) -> String {
    let t = traceback.trim_end();
    if t.len() <= 4000 {
        return t.to_owned();
    }
    let mut start = t.len() - 4000;
    while !t.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &t[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn python() -> Option<PathBuf> {
        let python = std::env::var_os("BATCHMILL_PYTHON").map_or_else(|| PathBuf::from("python3"), PathBuf::from);
        Command::new(&python).arg("-c").arg("pass").status().ok()?.success().then_some(python)
    }

    fn launch(dir: &std::path::Path, source: &str, lines: Arc<Mutex<Vec<(String, String)>>>) -> Launch {
        std::fs::write(dir.join(HARNESS_FILE), HARNESS).unwrap();
        std::fs::write(dir.join("predictor.py"), source).unwrap();
        Launch {
            python: python().expect("python3 (or BATCHMILL_PYTHON) must run for these tests"),
            dir: dir.to_path_buf(),
            path: "predictor.py".into(),
            python_path: String::new(),
            env: vec![("GREETING".into(), "hi".into())],
            config: json!({"factor": 3}),
            job_spec: json!({"job_id": "j1", "total_batch_count": 2}),
            log: Arc::new(move |batch: &str, line: String| lines.lock().unwrap().push((batch.to_owned(), line))),
        }
    }

    const PREDICTOR: &str = r#"
import os, sys
class PythonPredictor:
    def __init__(self, config, job_spec):
        self.factor = config["factor"]
        self.job_id = job_spec["job_id"]
        self.completed = None
    def predict(self, payload, batch_id):
        print(f"{os.environ['GREETING']} from {batch_id}")
        if payload == ["boom"]:
            raise ValueError("bad item")
        if payload == ["exit"]:
            os._exit(3)
        if payload == ["none"]:
            return None
        return [p * self.factor for p in payload]
    def on_job_complete(self, metrics):
        print(f"done {self.job_id} {metrics['succeeded']}")
"#;

    fn batch<'a>(id: &'a str, items: &'a [Value]) -> BatchInput<'a> {
        BatchInput { batch_id: id, seq: 0, first_item: 10, items }
    }

    #[test]
    fn runs_a_cortex_predictor_and_survives_its_crashes() {
        let dir = tempfile::tempdir().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let p = PythonPredictor::start(launch(dir.path(), PREDICTOR, lines.clone())).expect("start");
        let out = p.predict(&batch("j1-0", &[json!(1), json!(2)])).unwrap();
        assert_eq!(out, vec![json!({"index": 10, "result": 3}), json!({"index": 11, "result": 6})]);
        let none = p.predict(&batch("j1-1", &[json!("none")])).unwrap();
        assert_eq!(none, vec![json!({"index": 10, "result": null})]);
        match p.predict(&batch("j1-2", &[json!("boom")])) {
            Err(PredictError::Retryable(e)) => assert!(e.contains("ValueError: bad item"), "{e}"),
            other => panic!("expected a retryable error, got {other:?}"),
        }
        match p.predict(&batch("j1-3", &[json!("exit")])) {
            Err(PredictError::Retryable(e)) => assert!(e.contains("died") && e.contains('3'), "{e}"),
            other => panic!("expected a crash, got {other:?}"),
        }
        // A new process serves the next batch.
        assert_eq!(p.predict(&batch("j1-4", &[json!(5)])).unwrap(), vec![json!({"index": 10, "result": 15})]);
        assert_eq!(p.on_job_complete(&json!({"succeeded": 4})), Ok(true));
        drop(p);
        // The stderr reader hands lines over on its own thread: wait for the
        // hook's last one.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !lines.lock().unwrap().iter().any(|(_, l)| l == "done j1 4") && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let lines = lines.lock().unwrap();
        // Each batch's output is tagged with that batch, even when the next
        // batch starts before the stderr reader has caught up.
        let greetings: Vec<&(String, String)> = lines.iter().filter(|(_, l)| l.starts_with("hi from ")).collect();
        assert_eq!(greetings.len(), 5, "{lines:?}");
        assert!(greetings.iter().all(|(b, l)| l.strip_prefix("hi from ") == Some(b.as_str())), "{lines:?}");
        assert!(lines.iter().any(|(b, l)| b == "j1-4" && l.contains("restarting")), "{lines:?}");
        assert!(lines.iter().any(|(_, l)| l == "done j1 4"), "{lines:?}");
    }

    #[test]
    fn init_errors_and_bad_results_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let failing = "class PythonPredictor:\n    def __init__(self, config):\n        raise KeyError('dest_s3_dir')\n    def predict(self, payload):\n        pass\n";
        let err = PythonPredictor::start(launch(dir.path(), failing, lines.clone())).err().unwrap().to_string();
        assert!(err.contains("PythonPredictor failed") && err.contains("KeyError: 'dest_s3_dir'"), "{err}");
        let missing = "class Other:\n    pass\n";
        let err = PythonPredictor::start(launch(dir.path(), missing, lines.clone())).err().unwrap().to_string();
        assert!(err.contains("no class PythonPredictor"), "{err}");
        let wrong = "class PythonPredictor:\n    def __init__(self, config):\n        pass\n    def predict(self, payload):\n        return {'a': 1}\n";
        let p = PythonPredictor::start(launch(dir.path(), wrong, lines)).expect("start");
        match p.predict(&batch("j1-0", &[json!(1)])) {
            Err(PredictError::Permanent(e)) => assert!(e.contains("returned an object"), "{e}"),
            other => panic!("expected a permanent error, got {other:?}"),
        }
        assert_eq!(p.on_job_complete(&json!({})), Ok(false));
    }

    #[test]
    fn running_out_of_memory_is_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let raising = "class PythonPredictor:\n    def __init__(self, config):\n        raise MemoryError()\n    def predict(self, payload):\n        pass\n";
        let err = PythonPredictor::start(launch(dir.path(), raising, lines.clone())).err().unwrap();
        assert!(err.out_of_memory(), "MemoryError: {err}");
        let killed = "import os, signal\nclass PythonPredictor:\n    def __init__(self, config):\n        os.kill(os.getpid(), signal.SIGKILL)\n    def predict(self, payload):\n        pass\n";
        let err = PythonPredictor::start(launch(dir.path(), killed, lines.clone())).err().unwrap();
        assert!(err.out_of_memory() && err.to_string().contains("out of memory"), "SIGKILL: {err}");
        let failing = "class PythonPredictor:\n    def __init__(self, config):\n        raise KeyError('x')\n    def predict(self, payload):\n        pass\n";
        let err = PythonPredictor::start(launch(dir.path(), failing, lines)).err().unwrap();
        assert!(!err.out_of_memory(), "KeyError: {err}");
    }

    #[test]
    fn a_reply_over_the_limit_is_refused_and_the_process_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let huge = "class PythonPredictor:\n    def __init__(self, config):\n        pass\n    def predict(self, payload):\n        if payload == ['huge']:\n            return ['x' * (70 * 1024 * 1024)]\n        return payload\n";
        let p = PythonPredictor::start(launch(dir.path(), huge, lines)).expect("start");
        match p.predict(&batch("j1-0", &[json!("huge")])) {
            Err(PredictError::Permanent(e)) => assert!(e.contains("over the") && e.contains("64 MiB"), "{e}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        let ok = p.predict(&batch("j1-1", &[json!(1)])).unwrap();
        assert_eq!(ok, vec![json!({"index": 10, "result": 1})], "a new process serves the next batch");
    }

    #[test]
    fn a_reply_frame_is_read_whole_or_refused_by_what_is_wrong() {
        let frame = |claimed: u32, body: &[u8]| [&claimed.to_be_bytes()[..], body].concat();
        let good = frame(11, b"{\"ok\":true}");
        assert_eq!(read_reply(&mut &good[..]).expect("a reply"), serde_json::json!({"ok": true}));
        let short = frame(1_000_000, b"{}");
        let err = read_reply(&mut &short[..]).expect_err("truncated");
        assert!(err.to_string().contains("ended after 2 of its 1000000 bytes"), "{err}");
        let huge = frame(u32::MAX, b"");
        assert!(
            matches!(read_reply(&mut &huge[..]), Err(ExchangeError::TooLarge { bytes }) if bytes == u32::MAX as usize)
        );
        assert!(matches!(read_reply(&mut &frame(2, b"{x")[..]), Err(ExchangeError::Json(_))));
        assert!(matches!(read_reply(&mut &[0u8, 0][..]), Err(ExchangeError::Io(_))));
    }
}
