//! The gateway over TLS (`BATCHMILL_TLS_CERT`/`_KEY`, certificates from
//! `deploy/local/make-certs`): gRPC, REST and the CLI work over it, a
//! plaintext client is refused, a rotated certificate is served to new
//! connections within seconds while open ones go on, and with
//! `BATCHMILL_TLS_CLIENT_CA` a client without a certificate is refused.

use std::time::Duration;

use batchmill_proto::jobs::v1 as pb;
use batchmill_tests::{GatewayTls, Options, Sandbox, assert_echo_results, binary, echo_job};
use serde_json::{Value, json};

/// The certificate the gateway presents to a new connection, as DER.
async fn served_certificate(sandbox: &Sandbox) -> anyhow::Result<Vec<u8>> {
    let certs = sandbox.certs.as_ref().expect("a TLS sandbox");
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(certs.rustls(certs.mutual)?));
    let tcp = tokio::net::TcpStream::connect(&sandbox.gateway).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
    let tls = connector.connect(name, tcp).await?;
    let chain = tls.get_ref().1.peer_certificates().unwrap_or_default();
    Ok(chain.first().map(|c| c.to_vec()).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_rest_and_the_cli_work_over_tls_and_a_rotated_certificate_is_served() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(Options { workers: 1, tls: GatewayTls::Server, ..Options::default() }).await?;
    let certs = sandbox.certs.clone().expect("certificates");
    // gRPC over TLS: a job runs to its end.
    let items: Vec<Value> = (0..20).map(|i| json!({"i": i})).collect();
    let mut jobs = sandbox.jobs().await?;
    let job = jobs.submit_job(echo_job(&items, 5, 1, json!({}))).await?.into_inner().job.expect("job");
    let done = sandbox.wait_terminal(&job.job_id, Duration::from_secs(60)).await?;
    assert_eq!(done.state(), pb::JobState::Succeeded);
    assert_echo_results(&sandbox, &done, &items, 5, &[]).await?;
    // REST over TLS.
    let listed = sandbox.http().get(format!("{}/v1/jobs", sandbox.rest_url())).send().await?;
    assert_eq!(listed.status(), 200);
    // A plaintext client gets no answer.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{}", sandbox.gateway))?;
    let refused = match plain.connect().await {
        Ok(channel) => pb::job_service_client::JobServiceClient::new(channel)
            .list_jobs(pb::ListJobsRequest::default())
            .await
            .map(|_| ()),
        Err(e) => Err(tonic::Status::unavailable(e.to_string())),
    };
    assert!(refused.is_err(), "a plaintext call answered");

    // The CLI: trusting the CA it works; trusting only the system's roots it
    // is refused, saying why.
    let cli = |extra: &[&str]| -> anyhow::Result<std::process::Output> {
        let mut args = vec!["--addr", &sandbox.gateway, "--api-key", &sandbox.api_key];
        args.extend_from_slice(extra);
        args.extend(["get", &job.job_id]);
        Ok(std::process::Command::new(binary("batchmill")?)
            .env("BATCHMILL_CONFIG", "/nonexistent")
            .args(args)
            .output()?)
    };
    let ca = certs.path("ca.pem").to_string_lossy().into_owned();
    let out = cli(&["--ca-cert", &ca])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("JOB_STATE_SUCCEEDED"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["--tls"])?;
    assert!(!out.status.success(), "the CLI trusted a certificate no system root signed");
    let out = cli(&[])?;
    assert!(!out.status.success(), "the CLI spoke in the clear to a TLS gateway");

    // Rotation: new connections get the new certificate; the open channel goes on.
    let before = served_certificate(&sandbox).await?;
    certs.issue("gateway")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while served_certificate(&sandbox).await? == before {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the gateway still serves the old certificate after 15 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    jobs.get_job(pb::GetJobRequest { job_id: job.job_id.clone() }).await?;
    sandbox.jobs().await?.get_job(pb::GetJobRequest { job_id: job.job_id.clone() }).await?;
    assert!(sandbox.log("gateway").contains("TLS certificate reloaded"));
    sandbox.check_all_alive()
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_client_ca_a_client_without_a_certificate_is_refused() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(Options { workers: 1, tls: GatewayTls::Mutual, ..Options::default() }).await?;
    let certs = sandbox.certs.clone().expect("certificates");
    // With the client certificate (the sandbox's own clients present it).
    sandbox.jobs().await?.list_jobs(pb::ListJobsRequest::default()).await?;
    assert_eq!(sandbox.http().get(format!("{}/v1/jobs", sandbox.rest_url())).send().await?.status(), 200);
    // Without: no call gets through.
    let bare = tonic::transport::Endpoint::from_shared(sandbox.rest_url())?.tls_config(certs.tonic(false)?)?;
    let answer = match bare.connect().await {
        Ok(channel) => pb::job_service_client::JobServiceClient::new(channel)
            .list_jobs(pb::ListJobsRequest::default())
            .await
            .map(|_| ()),
        Err(e) => Err(tonic::Status::unavailable(e.to_string())),
    };
    assert!(answer.is_err(), "a client without a certificate was answered");
    let client = reqwest::Client::builder().use_preconfigured_tls(certs.rustls(false)?).build()?;
    assert!(client.get(format!("{}/v1/jobs", sandbox.rest_url())).send().await.is_err());
    sandbox.check_all_alive()
}

/// With TLS everywhere, the services speak mutual TLS to each other and to
/// etcd and NATS (NATS with a user and password too): a job runs through
/// every hop (gateway to scheduler, scheduler to enqueuer and lister,
/// workers to scheduler, everyone to etcd and NATS), and no service, nor
/// etcd or NATS, answers a client in the clear or one without a
/// certificate from the CA.
#[tokio::test(flavor = "multi_thread")]
async fn with_tls_everywhere_services_etcd_and_nats_speak_mutual_tls() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(Options { workers: 2, tls: GatewayTls::Everywhere, ..Options::default() }).await?;
    let certs = sandbox.certs.clone().expect("certificates");
    let items: Vec<Value> = (0..40).map(|i| json!({"i": i})).collect();
    let mut jobs = sandbox.jobs().await?;
    let job = jobs.submit_job(echo_job(&items, 4, 2, json!({}))).await?.into_inner().job.expect("job");
    let done = sandbox.wait_terminal(&job.job_id, Duration::from_secs(60)).await?;
    assert_eq!(done.state(), pb::JobState::Succeeded, "{done:?}");
    assert_echo_results(&sandbox, &done, &items, 4, &[]).await?;
    for (name, port) in sandbox.grpc_ports.iter().filter(|(n, _)| n != "gateway") {
        assert!(!batchmill_tests::serving(*port).await, "{name} answered in the clear");
        assert!(
            !batchmill_tests::serving_over(*port, Some(certs.tonic(false)?)).await,
            "{name} answered a client without a certificate"
        );
    }
    let (leader, port) = sandbox.grpc_ports.iter().find(|(n, _)| n == "scheduler").expect("scheduler");
    assert!(
        batchmill_tests::serving_over(*port, Some(certs.tonic(true)?)).await,
        "{leader} refused a client certificate from the CA"
    );
    // etcd and NATS take only TLS (and NATS a user); the password is in no
    // file the cluster wrote.
    assert!(sandbox.etcd_url.starts_with("https://"), "{}", sandbox.etcd_url);
    let plain_etcd = reqwest::get(format!("{}/health", sandbox.etcd_url.replace("https://", "http://"))).await;
    assert!(plain_etcd.map_or(true, |r| !r.status().is_success()), "etcd answered in the clear");
    assert!(async_nats::connect(&sandbox.nats_url).await.is_err(), "NATS took a client without TLS or a user");
    let found = sandbox.files_holding(&[certs.nats_password.as_str()])?;
    assert!(found.is_empty(), "the NATS password in: {found:?}");
    sandbox.check_all_alive()
}

/// A service's gRPC server over mutual TLS with `certs`' service certificate
/// (for localhost, 127.0.0.1 and ::1), callers' certificates from their CA
/// required; its port, and what stops it.
async fn mutual_tls_server(
    certs: &batchmill_tests::Certs,
) -> anyhow::Result<(u16, tokio_util::sync::CancellationToken)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let files = batchmill_runtime::tls::TlsFiles {
        cert: certs.path("service.pem"),
        key: certs.path("service.key"),
        client_ca: Some(certs.path("ca.pem")),
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let incoming = batchmill_runtime::tls::incoming(listener, files, stop.clone())?;
    let routes = batchmill_runtime::ServerBuilder::new()?.into_routes().await;
    let server = tonic::transport::Server::builder().add_routes(routes);
    tokio::spawn(server.serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned()));
    Ok((port, stop))
}

/// The health of the server on `port`, over `channel`.
async fn health(channel: tonic::transport::Channel) -> anyhow::Result<i32> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let answer = HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await?;
    Ok(answer.into_inner().status)
}

const SERVING: i32 = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;

/// How a service dials the others with `certs`' service certificate,
/// checking `server_name` if given.
fn dialing(certs: &batchmill_tests::Certs, server_name: Option<&str>) -> batchmill_runtime::args::TlsArgs {
    batchmill_runtime::args::TlsArgs {
        tls_cert: Some(certs.path("service.pem")),
        tls_key: Some(certs.path("service.key")),
        tls_client_ca: None,
        tls_ca: Some(certs.path("ca.pem")),
        tls_server_name: server_name.map(str::to_owned),
    }
}

/// A service dials another over mutual TLS and checks the certificate it
/// is shown for `--tls-server-name` when given (the name the Kubernetes
/// manifests give, since the scheduler leader is dialed at its pod's IP),
/// or for the host it dialed.
#[tokio::test]
async fn a_service_checks_its_peers_certificate_for_the_server_name_it_is_given() -> anyhow::Result<()> {
    use batchmill_runtime::dial::{DialTls, channel_with};
    batchmill_tests::install_provider();
    let dir = tempfile::tempdir()?;
    let certs = batchmill_tests::Certs::make(dir.path(), GatewayTls::Everywhere)?;
    let (port, stop) = mutual_tls_server(&certs).await?;
    let url = format!("https://127.0.0.1:{port}");
    let check = |server_name: Option<&str>| {
        let files = dialing(&certs, server_name).client_files().expect("a CA, so TLS");
        let url = url.clone();
        async move { health(channel_with(&url, Some(&DialTls::start(files)?))?).await }
    };
    assert_eq!(check(None).await?, SERVING, "the certificate names 127.0.0.1, the host dialed");
    assert_eq!(check(Some("localhost")).await?, SERVING, "and localhost, the name given");
    let refused = check(Some("batchmill-services")).await;
    let error = format!("{:?}", refused.expect_err("a name the certificate lacks"));
    assert!(error.contains("NotValidForName") || error.contains("not valid for name"), "{error}");
    stop.cancel();
    Ok(())
}

/// A service's client certificate, renewed on disk, is presented from the
/// next connection on, by the channel it already had: no restart.
#[tokio::test]
async fn a_renewed_client_certificate_is_presented_without_a_restart() -> anyhow::Result<()> {
    use batchmill_runtime::dial::{DialTls, channel_with};
    batchmill_tests::install_provider();
    let (ours, theirs) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let certs = batchmill_tests::Certs::make(ours.path(), GatewayTls::Everywhere)?;
    // A certificate from another CA, which the server does not trust.
    let stranger = batchmill_tests::Certs::make(theirs.path(), GatewayTls::Everywhere)?;
    let (port, stop) = mutual_tls_server(&certs).await?;
    let client = tempfile::tempdir()?;
    let (cert, key) = (client.path().join("client.pem"), client.path().join("client.key"));
    std::fs::copy(stranger.path("service.pem"), &cert)?;
    std::fs::copy(stranger.path("service.key"), &key)?;
    let paths =
        batchmill_core::client_tls::ClientTls { ca: certs.path("ca.pem"), identity: Some((cert.clone(), key.clone())) };
    let files = batchmill_runtime::dial::ClientFiles { paths, server_name: None };
    let channel = channel_with(&format!("https://127.0.0.1:{port}"), Some(&DialTls::start(files)?))?;
    assert!(health(channel.clone()).await.is_err(), "a certificate from another CA is refused");
    // Renewed, as cert-manager would: key first, then the certificate.
    std::fs::copy(certs.path("service.key"), &key)?;
    std::fs::copy(certs.path("service.pem"), &cert)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match health(channel.clone()).await {
            Ok(status) => {
                assert_eq!(status, SERVING);
                break;
            }
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => anyhow::bail!("the renewed certificate was not presented within 20 s: {e:?}"),
        }
    }
    stop.cancel();
    Ok(())
}
