//! The web console in a real browser: headless Chromium (Debian's), driven
//! by Selenium (PyPI) through tests/console/console_test.py: submit a job
//! from the form and watch it reach SUCCEEDED live, open a result, cancel a
//! running job, and see that a key of another account sees none of the
//! first account's jobs.

use batchmill_tests::{Options, Sandbox, assert_script_passed, member_key, tool};

#[tokio::test(flavor = "multi_thread")]
async fn the_console_submits_follows_cancels_and_keeps_accounts_apart() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(Options { workers: 2, ..Options::default() }).await?;
    let other = member_key(&sandbox, "globex").await?;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("console/console_test.py");
    let mut command = tokio::process::Command::new(tool("python3")?);
    command
        .arg(&script)
        .env("BATCHMILL_CONSOLE_URL", sandbox.rest_url())
        .env("BATCHMILL_API_KEY", &sandbox.api_key)
        .env("BATCHMILL_OTHER_KEY", &other)
        .envs(sandbox.client_env()?);
    let out = command.output().await?;
    assert_script_passed(&sandbox, "the browser test", &out);
    Ok(())
}
