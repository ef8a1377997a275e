//! deploy/local as a user runs it: `up` on a fresh state dir, `source
//! <state>/env`, a REST submission with curl, the results in S3 via boto3,
//! the leading scheduler killed and the standby taking over, then `down`
//! leaves none of the processes it started.
// A test walks a whole scenario; the 80-line bar is the product's.
#![allow(clippy::too_many_lines)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A port base whose 25 ports are all free, from 20000 to 31999: below the
/// kernel's ephemeral range (32768 and up) and above the sandboxes' ports
/// (10000 to 19999).
fn free_base() -> u16 {
    let seed = std::process::id() as u16;
    (0..200u16)
        .map(|i| 20_000 + (seed.wrapping_add(i * 97) % 120) * 100)
        .find(|base| (0..25).all(|o| std::net::TcpListener::bind(("127.0.0.1", base + o)).is_ok()))
        .expect("a free port range")
}

fn sh(script: &str, state: &Path, base: u16) -> std::process::Output {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repo");
    Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(repo)
        .env("BATCHMILL_STATE_DIR", state)
        .env("BATCHMILL_PORT_BASE", base.to_string())
        .env("BATCHMILL_WORKERS", "1")
        .output()
        .expect("bash runs")
}

fn pids(state: &Path) -> Vec<u32> {
    std::fs::read_dir(state.join("pids"))
        .map(|dir| {
            dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                .filter_map(|text| text.split_whitespace().next()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn up_source_curl_down() {
    let state = tempfile::tempdir().expect("tempdir");
    let base = free_base();
    let up = sh("deploy/local/up && deploy/local/up", state.path(), base);
    let log = String::from_utf8_lossy(&up.stderr);
    assert!(up.status.success(), "up failed:\n{log}");
    assert!(log.contains("etcd already running"), "a second up starts nothing new:\n{log}");
    let started = pids(state.path());
    assert_eq!(started.len(), 10, "etcd, nats, s3, postgres, 4 services (2 schedulers), 1 worker: {started:?}");

    let job = sh(
        r#"set -e
        . "$BATCHMILL_STATE_DIR/env"
        psql "$BATCHMILL_POSTGRES_URL" -qtAc 'select 1' >/dev/null
        auth="Authorization: Bearer $BATCHMILL_API_KEY"
        id=$(curl -sS --fail-with-body -X POST "$BATCHMILL_GATEWAY_URL/v1/jobs" -H "$auth" \
          -d '{"pipeline":"echo","workers":1,"itemList":{"items":[1,2,3,4,5],"batchSize":2}}' \
          | python3 -c 'import json,sys; print(json.load(sys.stdin)["jobId"])')
        for _ in $(seq 1 300); do
          state=$(curl -sS -H "$auth" "$BATCHMILL_GATEWAY_URL/v1/jobs/$id" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')
          [ "$state" = JOB_STATE_SUCCEEDED ] && break
          sleep 0.1
        done
        echo "$state"
        python3 -c '
import boto3, json, sys
s3 = boto3.client("s3")
keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="batchmill", Prefix="results/'"$id"'/")["Contents"])
lines = [json.loads(l) for k in keys if k.endswith(".jsonl") for l in s3.get_object(Bucket="batchmill", Key=k)["Body"].read().splitlines()]
print(len(keys), sorted(l["result"] for l in lines))
'"#,
        state.path(),
        base,
    );
    let out = String::from_utf8_lossy(&job.stdout);
    assert!(job.status.success(), "job failed: {out}\n{}", String::from_utf8_lossy(&job.stderr));
    assert_eq!(out.trim(), "JOB_STATE_SUCCEEDED\n4 [1, 2, 3, 4, 5]", "3 batch objects and the manifest");

    // The leading scheduler killed, the standby leads within seconds: a job
    // runs; `up` then starts the dead one again, as the new standby.
    let failover = sh(
        r#"set -e
        . deploy/local/lib.sh
        . "$BATCHMILL_STATE_DIR/env"
        port=$(leader_port)
        name=scheduler; [ "$port" = "$SCHEDULER_PORT" ] || name=scheduler-2
        read -r pid _ <"$BATCHMILL_STATE_DIR/pids/$name.pid"
        kill -KILL "$pid"
        auth="Authorization: Bearer $BATCHMILL_API_KEY"
        for _ in $(seq 1 300); do
          id=$(curl -sS -X POST "$BATCHMILL_GATEWAY_URL/v1/jobs" -H "$auth"             -d '{"pipeline":"echo","workers":1,"itemList":{"items":[1,2,3],"batchSize":1}}'             | python3 -c 'import json,sys; print(json.load(sys.stdin).get("jobId", ""))')
          [ -n "$id" ] && break
          sleep 0.1
        done
        for _ in $(seq 1 300); do
          state=$(curl -sS -H "$auth" "$BATCHMILL_GATEWAY_URL/v1/jobs/$id" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("state", ""))')
          [ "$state" = JOB_STATE_SUCCEEDED ] && break
          sleep 0.1
        done
        new=$(leader_port)
        echo "$state $([ "$new" != "$port" ] && echo moved)"
        deploy/local/up >/dev/null 2>&1
        running "$name" && echo restarted"#,
        state.path(),
        base,
    );
    let out = String::from_utf8_lossy(&failover.stdout);
    assert!(
        failover.status.success(),
        "failover failed: {out}
{}",
        String::from_utf8_lossy(&failover.stderr)
    );
    assert_eq!(out.trim(), "JOB_STATE_SUCCEEDED moved\nrestarted", "the standby took over");
    let started = pids(state.path());
    assert_eq!(started.len(), 10, "the dead scheduler started again: {started:?}");

    // The README's SQL job over the database `up` made, from the env file.
    let sql = sh(
        r#"set -e
        . "$BATCHMILL_STATE_DIR/env"
        cd "$BATCHMILL_STATE_DIR"
        psql "$BATCHMILL_POSTGRES_URL" -qc "create table docs as select i as id, 'doc ' || i as body from generate_series(1, 12) i"
        python3 - >job.json <<'PY'
import json, os
print(json.dumps({"pipeline": "echo", "workers": 1, "sqlQuery": {
    "url": os.environ["BATCHMILL_POSTGRES_JDBC_URL"], "username": os.environ["BATCHMILL_POSTGRES_USER"],
    "password": os.environ["BATCHMILL_POSTGRES_PASSWORD"], "batchSize": 10,
    "query": 'SELECT body AS "input.txt" FROM docs ORDER BY id'}}))
PY
        id=$(curl -sS --fail-with-body -H "$BATCHMILL_AUTH" $BATCHMILL_GATEWAY_URL/v1/jobs -d @job.json \
          | python3 -c 'import json,sys; print(json.load(sys.stdin)["jobId"])')
        for _ in $(seq 1 300); do
          job=$(curl -sS -H "$BATCHMILL_AUTH" "$BATCHMILL_GATEWAY_URL/v1/jobs/$id")
          state=$(echo "$job" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')
          [ "$state" = JOB_STATE_SUCCEEDED ] && break
          sleep 0.1
        done
        echo "$job" | python3 -c 'import json,sys; j = json.load(sys.stdin); print(j["state"], j["items"]["completed"])'
        "#,
        state.path(),
        base,
    );
    let out = String::from_utf8_lossy(&sql.stdout);
    assert!(sql.status.success(), "SQL job failed: {out}\n{}", String::from_utf8_lossy(&sql.stderr));
    assert_eq!(out.trim(), "JOB_STATE_SUCCEEDED 12", "every row an item");

    let down = sh("deploy/local/down", state.path(), base);
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    std::thread::sleep(Duration::from_millis(200));
    let alive: Vec<u32> = started.into_iter().filter(|pid| Path::new(&format!("/proc/{pid}")).exists()).collect();
    assert!(alive.is_empty(), "still running after down: {alive:?}");
    assert!(pids(state.path()).is_empty(), "pid files left");
}

/// `up --mtls`: the gateway speaks only TLS and asks for client
/// certificates from the local CA, and the services speak mutual TLS to
/// each other; the env file points the CLI and curl at the CA and the
/// client certificate, and a client without one, or in the clear, is
/// refused.
#[test]
fn up_with_mutual_tls_then_the_cli_and_curl() {
    let state = tempfile::tempdir().expect("tempdir");
    let base = free_base();
    let up = sh("deploy/local/up --mtls", state.path(), base);
    assert!(up.status.success(), "up --mtls failed:\n{}", String::from_utf8_lossy(&up.stderr));
    let run = sh(
        r#"set -e
        . "$BATCHMILL_STATE_DIR/env"
        case $BATCHMILL_GATEWAY_URL in https://*) ;; *) echo "not https: $BATCHMILL_GATEWAY_URL"; exit 1 ;; esac
        case $BATCHMILL_ETCD_ENDPOINTS in https://*) ;; *) echo "etcd in the clear: $BATCHMILL_ETCD_ENDPOINTS"; exit 1 ;; esac
        etcdctl --endpoints "$BATCHMILL_ETCD_ENDPOINTS" --cacert "$BATCHMILL_ETCD_CA" --cert "$BATCHMILL_ETCD_CERT" \
          --key "$BATCHMILL_ETCD_KEY" endpoint health >/dev/null 2>&1 || echo "etcd refused the client certificate"
        if etcdctl --endpoints "$BATCHMILL_ETCD_ENDPOINTS" --cacert "$BATCHMILL_ETCD_CA" endpoint health >/dev/null 2>&1; then
          echo "etcd answered without a client certificate"
        fi
        batchmill submit --count 7 --batch-size 3 --wait -o json | python3 -c 'import json,sys; j = json.load(sys.stdin); print(j["state"], j["items"]["completed"])'
        curl -sS --fail-with-body --cacert "$BATCHMILL_CA_CERT" --cert "$BATCHMILL_CLIENT_CERT" --key "$BATCHMILL_CLIENT_KEY" \
          -H "$BATCHMILL_AUTH" "$BATCHMILL_GATEWAY_URL/v1/jobs?pageSize=1" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["jobs"]))'
        if curl -sS --cacert "$BATCHMILL_CA_CERT" -H "$BATCHMILL_AUTH" "$BATCHMILL_GATEWAY_URL/v1/jobs" >/dev/null 2>&1; then
          echo "answered without a client certificate"
        fi
        if curl -sS -H "$BATCHMILL_AUTH" "http://127.0.0.1:$((BATCHMILL_PORT_BASE + 10))/v1/jobs" >/dev/null 2>&1; then
          echo "answered in the clear"
        fi
        # The services speak mutual TLS to each other: the lister and the
        # leading scheduler answer no plaintext call.
        . deploy/local/lib.sh
        leader=$(leader_port)
        for port in $((BATCHMILL_PORT_BASE + 11)) "$leader"; do
          grpc_healthy "$port" || echo "port $port is not healthy over mutual TLS"
          if "$TOOLS/venv/bin/grpcurl" -plaintext -max-time 2 "127.0.0.1:$port" grpc.health.v1.Health/Check >/dev/null 2>&1; then
            echo "port $port answered in the clear"
          fi
        done"#,
        state.path(),
        base,
    );
    let out = String::from_utf8_lossy(&run.stdout);
    let down = sh("deploy/local/down", state.path(), base);
    assert!(run.status.success(), "{out}\n{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(out.trim(), "JOB_STATE_SUCCEEDED 7\n1");
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
}
