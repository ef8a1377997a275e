"""Driver of bench/failover: kills the leading scheduler mid-job, K times,
and times from each kill to the first batch the new leader confirms (its
succeeded count rising past what it loaded). Each kill hits a fresh job of
echo batches that keep two workers busy; every job is checked to end
SUCCEEDED with every batch and item counted once.

    python failover.py K
"""

import os
import signal
import subprocess
import sys
import time
import urllib.error

import throughput  # record, cluster and HTTP helpers

ITEMS, BATCH, DELAY_MS = 400, 2, 20


def leader(env):
    """The name of the scheduler that leads, by which one is SERVING."""
    script = '. deploy/local/lib.sh; port=$(leader_port); [ "$port" = "$SCHEDULER_PORT" ] && echo scheduler || echo scheduler-2'
    out = subprocess.run(["bash", "-c", script], cwd=throughput.REPO, capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def succeeded(env, job_id):
    """The job's succeeded batch count, or None while no scheduler answers."""
    try:
        return int(throughput.http(env, "GET", f"/v1/jobs/{job_id}")["batches"].get("succeeded", 0))
    except (urllib.error.URLError, OSError, ValueError, KeyError):
        return None


def one_kill(env):
    items = list(range(ITEMS))
    job = throughput.http(env, "POST", "/v1/jobs", {
        "pipeline": "echo", "workers": 2, "config": {"delay_ms": DELAY_MS},
        "itemList": {"items": items, "batchSize": BATCH}})
    job_id = job["jobId"]
    while (succeeded(env, job_id) or 0) < 10:
        time.sleep(0.02)
    name = None
    while name is None:
        name = leader(env)
    pid = int(open(os.path.join(throughput.STATE, "pids", f"{name}.pid")).read().split()[0])
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    loaded = None
    while loaded is None:
        loaded = succeeded(env, job_id)
        time.sleep(0.01)
    answered = time.monotonic() - killed
    while True:
        now = succeeded(env, job_id)
        if now is not None and now > loaded:
            break
        time.sleep(0.01)
    confirmed = time.monotonic() - killed
    done = throughput.wait_done(env, job_id)
    batches, counted = done["batches"], done["items"]
    exact = (done["state"] == "JOB_STATE_SUCCEEDED" and int(batches["succeeded"]) == ITEMS // BATCH
             and int(batches.get("failed", 0)) == 0 and int(counted["completed"]) == ITEMS)
    subprocess.run(["deploy/local/up"], cwd=throughput.REPO, check=True, capture_output=True)
    return {"job_id": job_id, "killed": name, "answered_s": answered, "confirmed_s": confirmed, "exact": exact,
            "state": done["state"]}


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main():
    kills = int(sys.argv[1])
    env = throughput.cluster_env()
    runs = []
    for k in range(kills):
        run = one_kill(env)
        runs.append(run)
        print(f"kill {k + 1}: {run['killed']}; new leader answers after {run['answered_s']:.2f} s, "
              f"confirms a batch after {run['confirmed_s']:.2f} s; job {run['state']}"
              f"{'' if run['exact'] else ' WITH WRONG COUNTS'}", flush=True)
    confirmed = [r["confirmed_s"] for r in runs]
    summary = {"kills": kills, "p50_s": percentile(confirmed, 50), "p99_s": percentile(confirmed, 99),
               "max_s": max(confirmed), "jobs_exact": sum(r["exact"] for r in runs),
               "lease_ttl_s": int(os.environ.get("BATCHMILL_LEADER_TTL_SECS", "3"))}
    record, path = throughput.save_record("failover", {"summary": summary, "runs": runs,
                                                       "job": {"items": ITEMS, "batch": BATCH, "delay_ms": DELAY_MS}})
    print(f"leader killed {kills} times: first batch confirmed by the new leader after "
          f"p50 {summary['p50_s']:.2f} s, p99 {summary['p99_s']:.2f} s, max {summary['max_s']:.2f} s; "
          f"{summary['jobs_exact']}/{kills} jobs SUCCEEDED with exact counts")
    print(f"record: {os.path.relpath(path, throughput.REPO)}")
    if summary["jobs_exact"] != kills:
        sys.exit(1)


if __name__ == "__main__":
    main()
