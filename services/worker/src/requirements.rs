//! A deployed pipeline's `requirements.txt`, installed as Cortex installed it
//! into the API's image: once per pipeline version, into a virtual
//! environment in the version's directory. The environment also sees the
//! worker's own packages (a `.pth` file names the worker interpreter's
//! site-packages), so a requirement the worker already has, such as boto3,
//! is satisfied without a download; pip installs only what is missing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

/// The longest a `pip install` may take.
const PIP_TIMEOUT: Duration = Duration::from_secs(600);

/// Marks an environment whose requirements are installed.
const INSTALLED: &str = ".batchmill_installed";

/// The interpreter for the pipeline in `dir`: `python` itself when there is
/// no `requirements.txt` (or it names nothing), else the environment's,
/// made and installed first if an earlier call has not. Relative paths in
/// `requirements.txt` (a wheel shipped with the pipeline) are relative to
/// `dir`. Callers serialise calls for the same `dir`.
pub async fn interpreter(python: &Path, dir: &Path) -> Result<PathBuf, String> {
    let requirements = dir.join("requirements.txt");
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
    run(python, &["-m", "venv", &venv.to_string_lossy()], dir, "creating the environment").await?;
    let worker_paths = run(
        python,
        &[
            "-c",
            "import site, sys; print('\\n'.join(p for p in site.getsitepackages() + [site.getusersitepackages()]))",
        ],
        dir,
        "reading the worker's site-packages",
    )
    .await?;
    let purelib = run(
        &venv_python,
        &["-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        dir,
        "reading the environment's site-packages",
    )
    .await?;
    let pth = Path::new(purelib.trim()).join("_batchmill_worker.pth");
    tokio::fs::write(&pth, worker_paths).await.map_err(|e| format!("{}: {e}", pth.display()))?;
    run(
        &venv_python,
        &["-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-q", "-r", "requirements.txt"],
        dir,
        "pip install -r requirements.txt",
    )
    .await?;
    tokio::fs::write(venv.join(INSTALLED), b"").await.map_err(|e| format!("{}: {e}", venv.display()))?;
    Ok(venv_python)
}

/// Runs `program args` in `dir`; its stdout, or an error naming `what` with
/// the end of its stderr.
async fn run(program: &Path, args: &[&str], dir: &Path, what: &str) -> Result<String, String> {
    let output = Command::new(program).args(args).current_dir(dir).kill_on_drop(true).output();
    let output = tokio::time::timeout(PIP_TIMEOUT, output)
        .await
        .map_err(|_| format!("requirements.txt: {what}: no result after {} s", PIP_TIMEOUT.as_secs()))?
        .map_err(|e| format!("requirements.txt: {what}: {}: {e}", program.display()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(12).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!("requirements.txt: {what} failed ({}):\n{}", output.status, tail.join("\n")));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(interpreter(&python(), dir.path()).await, Ok(python()), "no requirements.txt: the worker's own");
        std::fs::write(dir.path().join("requirements.txt"), "# nothing\n\n").expect("write");
        assert_eq!(interpreter(&python(), dir.path()).await, Ok(python()), "only comments: the worker's own");

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
        assert_eq!(interpreter(&python(), dir.path()).await, Ok(venv_python));
    }

    #[tokio::test]
    async fn a_failed_install_names_pip_and_the_requirement() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("requirements.txt"), "./no-such-file.whl\n").expect("write");
        let err = interpreter(&python(), dir.path()).await.expect_err("fails");
        assert!(err.contains("pip install -r requirements.txt failed") && err.contains("no-such-file"), "{err}");
        assert!(!dir.path().join(".venv").join(INSTALLED).exists());
    }
}
