//! A deployed pipeline's environment, set up as Cortex set up an API's
//! replica, once per pipeline version on each worker:
//!
//! - `.env` (`VARIABLE=value` lines) is exported to the predictor and to
//!   `dependencies.sh`;
//! - `dependencies.sh` runs with bash first, in the version's directory;
//! - `requirements.txt` is installed with pip into a virtual environment in
//!   the version's directory. That environment also sees the worker's own
//!   packages (a `.pth` file names the worker interpreter's site-packages), so
//!   what the worker already has (boto3, requests, numpy, ...) is not
//!   downloaded again; pip installs only what is missing.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use batchmill_core::project::{DEPENDENCIES, DOTENV, DotEnvError, REQUIREMENTS, parse_dotenv};
use tokio::process::Command;

/// The longest `dependencies.sh` or a `pip install` may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(600);

/// Marks an environment whose requirements are installed.
const INSTALLED: &str = ".batchmill_installed";
/// Marks a version whose `dependencies.sh` has run.
const DEPENDENCIES_RAN: &str = ".batchmill_dependencies_ran";

/// Why a pipeline's environment could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{file}: {what}: no result after {} s", SETUP_TIMEOUT.as_secs())]
    Timeout { file: &'static str, what: String },
    #[error("{file}: {what}: {}: {source}", program.display())]
    Spawn { file: &'static str, what: String, program: PathBuf, source: std::io::Error },
    #[error("{file}: {what} failed ({status}):\n{stderr}")]
    Failed { file: &'static str, what: String, status: ExitStatus, stderr: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    DotEnv(#[from] DotEnvError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SetupError + '_ {
    move |source| SetupError::Io { path: path.to_path_buf(), source }
}

/// The variables of the pipeline's `.env`, if it has one.
pub async fn dotenv(dir: &Path) -> Result<Vec<(String, String)>, SetupError> {
    let path = dir.join(DOTENV);
    match tokio::fs::read_to_string(&path).await {
        Ok(text) => Ok(parse_dotenv(&text)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io(&path)(e)),
    }
}

/// Sets up the pipeline in `dir` (with `env` for its scripts) unless done
/// before, and returns the interpreter it runs on. Callers serialise calls
/// for the same `dir`.
pub async fn prepare(python: &Path, dir: &Path, env: &[(String, String)]) -> Result<PathBuf, SetupError> {
    dependencies(dir, env).await?;
    interpreter(python, dir).await
}

/// Runs the pipeline's `dependencies.sh` with bash, once.
async fn dependencies(dir: &Path, env: &[(String, String)]) -> Result<(), SetupError> {
    if !dir.join(DEPENDENCIES).exists() || dir.join(DEPENDENCIES_RAN).exists() {
        return Ok(());
    }
    let bash = Path::new("bash");
    run(bash, &[DEPENDENCIES], dir, env, (DEPENDENCIES, "bash dependencies.sh")).await?;
    let marker = dir.join(DEPENDENCIES_RAN);
    tokio::fs::write(&marker, b"").await.map_err(io(&marker))
}

/// The interpreter for the pipeline in `dir`: `python` itself when there is
/// no `requirements.txt` (or it names nothing), else the environment's,
/// made and installed first if an earlier call has not. Relative paths in
/// `requirements.txt` (a wheel shipped with the pipeline) are relative to
/// `dir`.
pub async fn interpreter(python: &Path, dir: &Path) -> Result<PathBuf, SetupError> {
    let requirements = dir.join(REQUIREMENTS);
    let text = match tokio::fs::read_to_string(&requirements).await {
        Ok(t) => t,
        Err(_) => return Ok(python.to_owned()),
    };
    if text.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
        return Ok(python.to_owned());
    }
    let venv = dir.join(".venv");
    let venv_python = venv.join("bin/python");
    if venv.join(INSTALLED).exists() {
        return Ok(venv_python);
    }
    let _ = tokio::fs::remove_dir_all(&venv).await;
    let file = REQUIREMENTS;
    run(python, &["-m", "venv", &venv.to_string_lossy()], dir, &[], (file, "creating the environment")).await?;
    let site = "import site, sys; print('\\n'.join(p for p in site.getsitepackages() + [site.getusersitepackages()]))";
    let worker_paths = run(python, &["-c", site], dir, &[], (file, "reading the worker's site-packages")).await?;
    let purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])";
    let purelib =
        run(&venv_python, &["-c", purelib], dir, &[], (file, "reading the environment's site-packages")).await?;
    let pth = Path::new(purelib.trim()).join("_batchmill_worker.pth");
    tokio::fs::write(&pth, worker_paths).await.map_err(io(&pth))?;
    let pip = ["-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-q", "-r", REQUIREMENTS];
    run(&venv_python, &pip, dir, &[], (file, "pip install -r requirements.txt")).await?;
    let marker = venv.join(INSTALLED);
    tokio::fs::write(&marker, b"").await.map_err(io(&marker))?;
    Ok(venv_python)
}

/// Runs `program args` in `dir` with `env` added; its stdout, or an error
/// naming `(file, what)` with the end of its stderr.
async fn run(
    program: &Path,
    args: &[&str],
    dir: &Path,
    env: &[(String, String)],
    (file, what): (&'static str, &str),
) -> Result<String, SetupError> {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(SETUP_TIMEOUT, output)
        .await
        .map_err(|_| SetupError::Timeout { file, what: what.to_owned() })?
        .map_err(|source| SetupError::Spawn { file, what: what.to_owned(), program: program.to_owned(), source })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(12).collect();
        let stderr = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
        return Err(SetupError::Failed { file, what: what.to_owned(), status: output.status, stderr });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dependencies_sh_runs_once_with_the_env_and_a_failure_names_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(DEPENDENCIES), "echo \"$GREETING\" >> ran.txt\n").expect("write");
        let env = [("GREETING".to_owned(), "hi from .env".to_owned())];
        prepare(&python(), dir.path(), &env).await.expect("prepared");
        prepare(&python(), dir.path(), &env).await.expect("prepared again");
        assert_eq!(std::fs::read_to_string(dir.path().join("ran.txt")).expect("ran"), "hi from .env\n", "once");

        let failing = tempfile::tempdir().expect("tempdir");
        std::fs::write(failing.path().join(DEPENDENCIES), "echo installing >&2\nexit 3\n").expect("write");
        let err = prepare(&python(), failing.path(), &[]).await.expect_err("fails").to_string();
        assert!(err.starts_with("dependencies.sh: bash dependencies.sh failed") && err.contains("installing"), "{err}");
    }

    fn python() -> PathBuf {
        std::env::var_os("BATCHMILL_PYTHON").map_or_else(|| PathBuf::from("python3"), PathBuf::from)
    }

    /// A wheel of one module, made with the standard library's zipfile.
    fn wheel(dir: &Path) -> String {
        let name = "bm_hello-0.1-py3-none-any.whl";
        let script = format!(
            r#"import zipfile
with zipfile.ZipFile({path:?}, "w") as z:
    z.writestr("bm_hello.py", "GREETING = 'hello from a shipped wheel'\n")
    z.writestr("bm_hello-0.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: bm-hello\nVersion: 0.1\n")
    z.writestr("bm_hello-0.1.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    z.writestr("bm_hello-0.1.dist-info/RECORD", "bm_hello.py,,\nbm_hello-0.1.dist-info/METADATA,,\nbm_hello-0.1.dist-info/WHEEL,,\nbm_hello-0.1.dist-info/RECORD,,\n")
"#,
            path = dir.join(name).to_string_lossy()
        );
        let ok = std::process::Command::new(python()).args(["-c", &script]).status().map(|s| s.success());
        assert!(matches!(ok, Ok(true)), "making the wheel");
        name.to_owned()
    }

    #[tokio::test]
    async fn requirements_are_installed_once_beside_the_workers_packages() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            interpreter(&python(), dir.path()).await.unwrap(),
            python(),
            "no requirements.txt: the worker's own"
        );
        std::fs::write(dir.path().join("requirements.txt"), "# nothing\n\n").expect("write");
        assert_eq!(interpreter(&python(), dir.path()).await.unwrap(), python(), "only comments: the worker's own");

        let wheel = wheel(dir.path());
        std::fs::write(dir.path().join("requirements.txt"), format!("# shipped with the pipeline\n./{wheel}\n"))
            .expect("write");
        let venv_python = interpreter(&python(), dir.path()).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(venv_python, dir.path().join(".venv/bin/python"));
        let worker_site = std::process::Command::new(python())
            .args(["-c", "import site; print(site.getsitepackages()[0])"])
            .output()
            .expect("python");
        let worker_site = String::from_utf8_lossy(&worker_site.stdout).trim().to_owned();
        let check = std::process::Command::new(&venv_python)
            .args(["-c", "import sys, bm_hello; print(bm_hello.GREETING); print(sys.path)"])
            .output()
            .expect("venv python");
        let out = String::from_utf8_lossy(&check.stdout);
        assert!(out.contains("hello from a shipped wheel"), "{out} {}", String::from_utf8_lossy(&check.stderr));
        assert!(out.contains(&worker_site), "the worker's packages are visible: {out}");
        // Installed once: the second call finds the marker.
        std::fs::remove_file(dir.path().join(&wheel)).expect("rm");
        assert_eq!(interpreter(&python(), dir.path()).await.unwrap(), venv_python);
    }

    #[tokio::test]
    async fn a_failed_install_names_pip_and_the_requirement() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("requirements.txt"), "./no-such-file.whl\n").expect("write");
        let err = interpreter(&python(), dir.path()).await.expect_err("fails").to_string();
        assert!(err.contains("pip install -r requirements.txt failed") && err.contains("no-such-file"), "{err}");
        assert!(!dir.path().join(".venv").join(INSTALLED).exists());
    }
}
