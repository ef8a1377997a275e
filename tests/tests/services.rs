//! Every service serves gRPC health checking and server reflection (so
//! `grpcurl list` works against it), and exits cleanly on SIGTERM.

use batchmill_tests::{Options, Sandbox, tool};

#[tokio::test]
async fn every_service_answers_grpcurl_and_stops_cleanly_on_sigterm() -> anyhow::Result<()> {
    let mut sandbox = Sandbox::start(Options { workers: 1, ..Options::default() }).await?;
    let grpcurl = tool("grpcurl")?;
    let expect: &[(&str, &[&str])] = &[
        ("gateway", &["batchmill.jobs.v1.JobService", "grpc.health.v1.Health"]),
        ("scheduler", &["batchmill.jobs.v1.JobService", "batchmill.scheduler.v1.WorkerService"]),
        ("enqueuer", &["batchmill.enqueuer.v1.EnqueuerService"]),
        ("lister", &["batchmill.lister.v1.ListerService"]),
        ("worker-0", &["grpc.health.v1.Health"]),
    ];
    for (name, services) in expect {
        let port = sandbox.grpc_ports.iter().find(|(n, _)| n == name).map(|(_, p)| *p).expect("port");
        let addr = format!("127.0.0.1:{port}");
        let tls = sandbox.grpcurl_tls(name);
        let out = std::process::Command::new(&grpcurl).args(&tls).args([&addr, "list"]).output()?;
        let listed = String::from_utf8(out.stdout)?;
        assert!(out.status.success(), "grpcurl list {name}: {}", String::from_utf8_lossy(&out.stderr));
        for service in *services {
            assert!(listed.lines().any(|l| l == *service), "{name} does not list {service}: {listed}");
        }
        let out =
            std::process::Command::new(&grpcurl).args(&tls).args([&addr, "grpc.health.v1.Health/Check"]).output()?;
        assert!(String::from_utf8(out.stdout)?.contains("SERVING"), "{name} is not SERVING");
    }
    // grpcurl can also describe and call the public API through reflection,
    // with an API key; without one the call is refused.
    let gateway = sandbox.gateway.clone();
    let tls = sandbox.grpcurl_tls("gateway");
    let authorization = format!("authorization: Bearer {}", sandbox.api_key);
    let out = std::process::Command::new(&grpcurl)
        .args(&tls)
        .args(["-H", &authorization, "-d", "{}", &gateway, "batchmill.jobs.v1.JobService/ListJobs"])
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = std::process::Command::new(&grpcurl)
        .args(&tls)
        .args(["-d", "{}", &gateway, "batchmill.jobs.v1.JobService/ListJobs"])
        .output()?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unauthenticated"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // batchmill's own processes exit 0 (etcd and nats-server are not ours to judge).
    for (name, clean) in sandbox.stop_all().await {
        if name == "etcd" || name == "nats" {
            continue;
        }
        assert!(clean, "{name} did not exit cleanly on SIGTERM:\n{}", sandbox.log_tail(&name));
    }
    Ok(())
}
