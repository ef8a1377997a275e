"""Driver of bench/control-plane: what one batch of the echo workload costs
the servers, counted by the servers themselves: etcd writes (raft proposals
committed, and puts and deletes, from etcd's /metrics), NATS messages (in and
out, and JetStream API calls, from nats-server's /varz and /jsz) and S3
requests by kind (from the S3 server's /metrics). Each job's counts are net of
the cluster's idle traffic (leases, heartbeats), measured just before it for
as long as the job took."""

import json
import os
import re
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import throughput  # noqa: E402  (its cluster and HTTP helpers)

BATCHES = [1, 10, 100, 1000]


def get(url):
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read().decode()


def prometheus(text, name):
    """The sum of every series of counter `name`."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})?\s+(\S+)$", line)
        if m:
            total += float(m.group(2))
    return total


def counters(env):
    etcd = get(env["BATCHMILL_ETCD_METRICS_URL"])
    varz = json.loads(get(env["BATCHMILL_NATS_MONITOR_URL"] + "/varz"))
    jsz = json.loads(get(env["BATCHMILL_NATS_MONITOR_URL"] + "/jsz"))
    s3 = get(env["BATCHMILL_S3_METRICS_URL"])
    counts = {
        "etcd_proposals": prometheus(etcd, "etcd_server_proposals_committed_total"),
        "etcd_puts": prometheus(etcd, "etcd_mvcc_put_total"),
        "etcd_deletes": prometheus(etcd, "etcd_mvcc_delete_total"),
        "nats_msgs_in": varz["in_msgs"],
        "nats_msgs_out": varz["out_msgs"],
        "jetstream_api_calls": jsz.get("api", {}).get("total", 0),
    }
    for line in s3.splitlines():
        m = re.match(r'^batchmill_s3_requests_total\{kind="(\w+)"\}\s+(\S+)$', line)
        if m:
            counts["s3_" + m.group(1)] = float(m.group(2))
    return counts


def delta(after, before):
    return {k: after[k] - before.get(k, 0) for k in after}


def run(env, items, batch, workers):
    """The job's counts, net of idle traffic over as long as it ran."""
    body = {"pipeline": "echo", "workers": workers,
            "itemList": {"items": [{"n": i} for i in range(items)], "batchSize": batch}}
    before = counters(env)
    started = time.monotonic()
    job = throughput.http(env, "POST", "/v1/jobs", body)
    state = throughput.wait_done(env, job["jobId"])
    seconds = time.monotonic() - started
    if state["state"] != "JOB_STATE_SUCCEEDED" or int(state["items"]["completed"]) != items:
        raise SystemExit(f"job {job['jobId']} ended {state['state']}: {state}")
    time.sleep(1)  # the manifest and the last checkpoints
    job_counts = delta(counters(env), before)
    idle_before = counters(env)
    time.sleep(seconds + 1)
    idle = delta(counters(env), idle_before)
    net = {k: max(0.0, v - idle[k]) for k, v in job_counts.items()}
    batches = int(state["batches"]["total"])
    return {"batch_size": batch, "items": items, "batches": batches, "seconds": seconds, "raw": job_counts,
            "idle": idle, "per_batch": {k: v / batches for k, v in net.items()}}


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    items = int(args[0]) if args else 100_000
    workers = 2
    env = throughput.cluster_env()
    throughput.wait_done(env, throughput.http(env, "POST", "/v1/jobs", {
        "pipeline": "echo", "workers": workers, "itemList": {"items": list(range(1000)), "batchSize": 100}})["jobId"])
    rows = []
    for batch in throughput.option("batches", BATCHES):
        n = items // 10 if batch == 1 else items
        rows.append(run(env, n, batch, workers))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    record, path = throughput.save_record("control-plane", {"workers": workers, "rows": rows})
    columns = ["etcd_proposals", "etcd_puts", "nats_msgs_in", "nats_msgs_out", "jetstream_api_calls", "s3_put",
               "s3_get", "s3_list"]
    print("| batch | batches | " + " | ".join(columns) + " |")
    print("| --- | --- |" + " --- |" * len(columns))
    for row in rows:
        cells = [f"{row['per_batch'].get(c, 0):.3f}" for c in columns]
        print(f"| {row['batch_size']} | {row['batches']} | " + " | ".join(cells) + " |")
    print("(per batch, net of idle traffic)")
    print(f"record: {os.path.relpath(path, throughput.REPO)}")


if __name__ == "__main__":
    main()
