//! `GET /healthz` on the metrics listener follows the service's gRPC health
//! (its own test binary: the status it answers is the process's).

use batchmill_runtime::ServerBuilder;
use batchmill_runtime::args::ListenArgs;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

/// The status line and body of `GET path` on `addr`.
async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    let status = answer.lines().next().unwrap_or_default().to_owned();
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default().trim().to_owned();
    format!("{status} {body}")
}

async fn grpc_status(addr: std::net::SocketAddr) -> i32 {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("url").connect().await;
    let mut client = HealthClient::new(channel.expect("connect"));
    client.check(HealthCheckRequest { service: String::new() }).await.expect("check").into_inner().status
}

#[tokio::test]
async fn healthz_on_the_metrics_port_answers_as_grpc_health_does() {
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port");
    let args = ListenArgs { listen: "127.0.0.1:0".parse().expect("addr"), metrics_listen: Some(metrics) };
    let shutdown = CancellationToken::new();
    let listener = args.bind(&shutdown).await.expect("bind");
    let grpc = listener.local_addr().expect("addr");
    let builder = ServerBuilder::new().expect("builder").not_ready();
    let health = builder.health();
    let server = tokio::spawn(builder.serve(listener, shutdown.clone()));

    assert_eq!(get(metrics, "/healthz").await, "HTTP/1.1 503 Service Unavailable NOT_SERVING");
    assert_eq!(grpc_status(grpc).await, ServingStatus::NotServing as i32);
    health.set_serving(true).await;
    assert_eq!(get(metrics, "/healthz").await, "HTTP/1.1 200 OK SERVING");
    assert_eq!(grpc_status(grpc).await, ServingStatus::Serving as i32);
    health.set_serving(false).await;
    assert_eq!(get(metrics, "/healthz").await, "HTTP/1.1 503 Service Unavailable NOT_SERVING");
    assert!(get(metrics, "/metrics").await.starts_with("HTTP/1.1 200 OK"), "metrics still served");

    shutdown.cancel();
    server.await.expect("join").expect("served");
}
