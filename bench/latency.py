"""Driver of bench/latency: SubmitJob's latency over many submissions, and the
time from SubmitJob to the job's first result object in S3 with warm workers,
on a running bench cluster (see bench/latency)."""

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import throughput  # noqa: E402  (its cluster and HTTP helpers)


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def summary(values):
    return {"p50": statistics.median(values), "p99": percentile(values, 99), "max": max(values)}


def job(n):
    return {"pipeline": "echo", "workers": 1, "itemList": {"items": [{"n": i} for i in range(n)], "batchSize": 1}}


def wait_done(env, job_id):
    return throughput.wait_done(env, job_id, poll=0.05)["state"]


def main():
    args = [int(a) for a in sys.argv[1:] if not a.startswith("--")]
    submissions = args[0] if args else 1000
    firsts = args[1] if len(args) > 1 else 20
    env = throughput.cluster_env()
    import boto3
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=env.get("AWS_REGION"))
    bucket = env["BATCHMILL_BUCKET"]
    # Warm the workers and the connections.
    wait_done(env, throughput.http(env, "POST", "/v1/jobs", job(10))["jobId"])

    submit_ms, ids = [], []
    for _ in range(submissions):
        started = time.monotonic()
        ids.append(throughput.http(env, "POST", "/v1/jobs", job(1))["jobId"])
        submit_ms.append((time.monotonic() - started) * 1000)
    for job_id in ids:
        state = wait_done(env, job_id)
        if state != "JOB_STATE_SUCCEEDED":
            raise SystemExit(f"job {job_id} ended {state}")

    # The same on a quiet cluster: each job ends before the next is submitted.
    idle_ms = []
    for _ in range(max(1, submissions // 10)):
        started = time.monotonic()
        job_id = throughput.http(env, "POST", "/v1/jobs", job(1))["jobId"]
        idle_ms.append((time.monotonic() - started) * 1000)
        wait_done(env, job_id)

    first_ms = []
    for _ in range(firsts):
        started = time.monotonic()
        job_id = throughput.http(env, "POST", "/v1/jobs", job(1))["jobId"]
        while not any(o["Key"].endswith(".jsonl")
                      for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"results/{job_id}/").get("Contents", [])):
            time.sleep(0.002)
        first_ms.append((time.monotonic() - started) * 1000)
        wait_done(env, job_id)

    record, path = throughput.save_record("latency", {
        "submissions": submissions,
        "submit_ms": summary(submit_ms),
        "idle_submissions": len(idle_ms),
        "idle_submit_ms": summary(idle_ms),
        "first_result_runs": firsts,
        "first_result_ms": summary(first_ms),
    })
    print("| measure | runs | p50 ms | p99 ms | max ms |")
    print("| --- | --- | --- | --- | --- |")
    for name, key, runs in (("SubmitJob (REST, 1 item), while the earlier jobs run", "submit_ms", submissions),
                            ("SubmitJob (REST, 1 item), each job ended before the next", "idle_submit_ms",
                             len(idle_ms)),
                            ("SubmitJob to the first result object", "first_result_ms", firsts)):
        r = record[key]
        print(f"| {name} | {runs} | {r['p50']:.1f} | {r['p99']:.1f} | {r['max']:.1f} |")
    print(f"record: {os.path.relpath(path, throughput.REPO)}")


if __name__ == "__main__":
    main()
