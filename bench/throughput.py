"""Driver of bench/throughput: runs batchmill, Ray Data and the I/O limit on
the same items, prints a table and writes a JSON record. Run through
bench/throughput, which brings the cluster up and sets the environment."""

import json
import os
import platform
import subprocess
import sys
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATE = os.environ["BATCHMILL_STATE_DIR"]
BATCHES = [1, 10, 100, 1000]
WORKERS = [2, 4]


def cluster_env():
    env = {}
    with open(os.path.join(STATE, "env")) as f:
        for line in f:
            if line.startswith("export "):
                key, _, value = line[len("export "):].strip().partition("=")
                env[key] = value.strip("'\"")
    return env


def cpu():
    model, flags = platform.processor(), []
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and not model.strip():
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
    vector = sorted(f for f in flags if f.startswith(("avx", "fma", "sse4")))
    return {"model": model, "cores": os.cpu_count(), "vector": vector}


def save_record(bench, fields):
    """Writes bench/records/<bench>-<time>.json: `fields` with the bench's
    name, the time, the CPU, the build and the commit; prints the CPU line
    and returns the record and its path."""
    record = {"bench": bench, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu": cpu(),
              "build": "release",
              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                       text=True).stdout.strip(),
              **fields}
    os.makedirs(os.path.join(REPO, "bench/records"), exist_ok=True)
    path = os.path.join(REPO, "bench/records", f"{bench}-{record['date'].replace(':', '')}.json")
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
    c = record["cpu"]
    print(f"CPU: {c['model']}, {c['cores']} cores, {' '.join(c['vector'])}")
    return record, path


def http(env, method, path, body=None):
    request = urllib.request.Request(
        env["BATCHMILL_GATEWAY_URL"] + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": "Bearer " + env["BATCHMILL_API_KEY"], "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def wait_done(env, job_id, poll=0.02):
    """The job once it has ended."""
    while True:
        state = http(env, "GET", "/v1/jobs/" + job_id)
        if state["state"] not in ("JOB_STATE_PENDING", "JOB_STATE_ADMITTED", "JOB_STATE_RUNNING",
                                  "JOB_STATE_COMPLETING"):
            return state
        time.sleep(poll)


def batchmill(env, items, batch, workers):
    body = {"pipeline": "echo", "workers": workers,
            "itemList": {"items": [{"n": i} for i in range(items)], "batchSize": batch}}
    started = time.monotonic()
    job = http(env, "POST", "/v1/jobs", body)
    state = wait_done(env, job["jobId"])
    seconds = time.monotonic() - started
    if state["state"] != "JOB_STATE_SUCCEEDED":
        raise SystemExit(f"job {job['jobId']} ended {state['state']}: {state}")
    done = int(state["items"]["completed"])
    if done != items:
        raise SystemExit(f"job {job['jobId']} completed {done} of {items} items")
    return seconds


def ray_data(env, items, batch, workers):
    import pyarrow.fs
    import ray
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    fs = pyarrow.fs.S3FileSystem(
        endpoint_override=env["AWS_ENDPOINT_URL"], access_key=env["AWS_ACCESS_KEY_ID"],
        secret_key=env["AWS_SECRET_ACCESS_KEY"], region=env.get("AWS_REGION", "us-east-1"),
        scheme="http")
    out = f"{env['BATCHMILL_BUCKET']}/bench-ray/{int(time.time() * 1000)}-{batch}-{workers}"
    started = time.monotonic()
    ds = ray.data.from_items([{"n": i} for i in range(items)])
    ds.map_batches(lambda b: b, batch_size=batch).write_json(out, filesystem=fs)
    seconds = time.monotonic() - started
    ray.shutdown()
    return seconds


def limit(env, items, batch, workers):
    run_env = dict(os.environ, **env)
    out = subprocess.run(
        [os.path.join(REPO, "target/release/batchmill-io-limit"), "--batches", str(items // batch),
         "--batch-size", str(batch), "--consumers", str(workers)],
        env=run_env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def option(name, default):
    """`--name=1,2` as a list of ints."""
    for a in sys.argv[1:]:
        if a.startswith(f"--{name}="):
            return [int(v) for v in a.split("=", 1)[1].split(",")]
    return default


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    with_ray = "--no-ray" not in sys.argv
    items = int(args[0]) if args else 200_000
    rows = []
    for workers in option("workers", WORKERS):
        subprocess.run([os.path.join(REPO, "deploy/local/up")], env=dict(os.environ, BATCHMILL_WORKERS=str(workers)),
                       check=True, stdout=subprocess.DEVNULL)
        env = cluster_env()
        # Warm the workers and the connections.
        batchmill(env, 1_000, 100, workers)
        for batch in option("batches", BATCHES):
            n = items // 10 if batch == 1 else items
            row = {"workers": workers, "batch_size": batch, "items": n}
            row["batchmill_s"] = batchmill(env, n, batch, workers)
            row["limit_s"] = limit(env, n, batch, workers)
            row["ray_s"] = ray_data(env, n, batch, workers) if with_ray else None
            for name in ("batchmill", "limit", "ray"):
                s = row[name + "_s"]
                row[name + "_items_per_s"] = None if s is None else n / s
            row["vs_ray"] = None if row["ray_s"] is None else row["ray_s"] / row["batchmill_s"]
            row["of_limit"] = row["limit_s"] / row["batchmill_s"]
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    record, path = save_record("throughput", {"rows": rows})
    fmt = lambda v: "-" if v is None else f"{v:,.0f}"
    ratio = lambda v: "-" if v is None else f"{v:.2f}×"
    print("| workers | batch | items | batchmill items/s | Ray Data items/s | limit items/s | vs Ray Data | of the limit |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['workers']} | {r['batch_size']} | {r['items']:,} | {fmt(r['batchmill_items_per_s'])} | "
              f"{fmt(r['ray_items_per_s'])} | {fmt(r['limit_items_per_s'])} | {ratio(r['vs_ray'])} | "
              f"{ratio(r['of_limit'])} |")
    print(f"record: {os.path.relpath(path, REPO)}")


if __name__ == "__main__":
    main()
