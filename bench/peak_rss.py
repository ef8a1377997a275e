"""Driver of bench/peak-rss: the peak resident memory (VmHWM) of every
process of the cluster during two whole jobs through echo over NDJSON objects
in S3: one of ITEMS lines (default 1,000,000) and one of LINES lines (default
10,000,000), so the second is ten times the first. (A million inline items is
over the 10 MiB request limit.) Each process's peak is reset
(/proc/<pid>/clear_refs) before each job and read once it has ended."""

import glob
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import throughput  # noqa: E402  (its cluster and HTTP helpers)

BATCH = 1000
WORKERS = 2


def processes():
    """Every process the cluster's pid files name, by name."""
    found = {}
    for path in sorted(glob.glob(os.path.join(throughput.STATE, "pids", "*.pid"))):
        name = os.path.basename(path)[:-len(".pid")]
        pid = open(path).read().split()[0]
        if os.path.exists(f"/proc/{pid}/status"):
            found[name] = pid
    return found


def reset_peaks(procs):
    for pid in procs.values():
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")


def peak_mb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def run(env, name, body, items):
    procs = processes()
    reset_peaks(procs)
    started = time.monotonic()
    job = throughput.http(env, "POST", "/v1/jobs", body)
    state = throughput.wait_done(env, job["jobId"], poll=0.5)
    seconds = time.monotonic() - started
    if state["state"] != "JOB_STATE_SUCCEEDED" or int(state["items"]["completed"]) != items:
        raise SystemExit(f"{name}: job {job['jobId']} ended {state['state']}: {state}")
    peaks = {p: round(peak_mb(pid), 1) for p, pid in procs.items()}
    row = {"job": name, "items": items, "batches": int(state["batches"]["total"]), "seconds": round(seconds, 1),
           "peak_rss_mb": peaks}
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def ndjson(env, lines):
    """s3://<bucket>/bench-peak-rss/lines-<N>.jsonl, written once."""
    import boto3
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=env.get("AWS_REGION"))
    bucket, key = env["BATCHMILL_BUCKET"], f"bench-peak-rss/lines-{lines}.jsonl"
    body = b"".join(b'{"id":%d}\n' % i for i in range(lines))
    try:
        size = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
    except s3.exceptions.ClientError:
        size = 0
    if size != len(body):
        print(f"writing {lines:,} lines ({len(body) / 1e6:.0f} MB) to s3://{bucket}/{key} ...", file=sys.stderr,
              flush=True)
        s3.upload_fileobj(__import__("io").BytesIO(body), bucket, key)
    return f"s3://{bucket}/{key}"


def main():
    args = [int(a) for a in sys.argv[1:] if not a.startswith("--")]
    items = args[0] if args else 1_000_000
    lines = args[1] if len(args) > 1 else 10_000_000
    env = throughput.cluster_env()
    rows = []
    for n in (items, lines):
        uri = ndjson(env, n)
        body = {"pipeline": "echo", "workers": WORKERS, "delimitedFiles": {"s3Paths": [uri], "batchSize": BATCH}}
        rows.append(run(env, f"{n:,}-line NDJSON", body, n))
    record, path = throughput.save_record("peak-rss", {"workers": WORKERS, "batch_size": BATCH, "rows": rows})
    names = list(rows[0]["peak_rss_mb"])
    print("| process | " + " | ".join(f"{r['job']} ({r['seconds']} s), MB" for r in rows) + " | ratio |")
    print("| --- |" + " --- |" * (len(rows) + 1))
    for n in names:
        a, b = rows[0]["peak_rss_mb"].get(n), rows[1]["peak_rss_mb"].get(n)
        print(f"| {n} | {a} | {b} | {b / a:.2f} |")
    print(f"record: {os.path.relpath(path, throughput.REPO)}")


if __name__ == "__main__":
    main()
