"""Driver of bench/embed/run on the CPU: batchmill's `embed` against
sentence-transformers on two corpora (short sentences; passages of 40 to 256
tokens), as a library and as a whole job on the bench cluster, with every
result checked. Prints a table and writes a JSON record.

Each round runs the library and sentence-transformers one after the other
(one pass each over the corpus, after a warm-up), so that both see the same
machine; the best round of each counts. The job runs on the bench cluster
(bench/lib.sh, 1 worker, whose encoder uses every core) over the corpus as
NDJSON lines in S3, in batches of BATCH; its first run loads the model
(cold), the best of the later ones is the warm figure.

    python compare.py <bench binary> <model dir> <st python> [--rounds=R] [--job-runs=J] [--no-job]
"""

import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import throughput  # noqa: E402  (record, cluster and HTTP helpers)

BATCH = 256
CORPORA = {"short": ["10000"], "long": ["1000", "--long"]}


def option(name, default):
    for arg in sys.argv[1:]:
        if arg.startswith(f"--{name}="):
            return int(arg.split("=", 1)[1])
    return default


def corpus(name):
    path = os.path.join(throughput.STATE, f"embed-{name}.txt")
    os.makedirs(throughput.STATE, exist_ok=True)
    with open(path, "w") as f:
        subprocess.run([sys.executable, os.path.join(HERE, "corpus.py"), *CORPORA[name]], stdout=f, check=True)
    return path


def run_json(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def library(bench, model, path, batch=None):
    cmd = [bench, "bench", "--device", "cpu", "--model", model, "--corpus", path, "--runs", "1"]
    if batch:
        cmd += ["--batch", str(batch)]
    return run_json(cmd)


def st(python, model, path):
    return run_json([python, os.path.join(HERE, "st_bench.py"), model, path, "cpu", "fp32", "32", "1"])


def job(env, s3, key, texts, runs):
    """Seconds of each run of an `embed` job over `texts` (SubmitJob to
    SUCCEEDED), each run's results checked: every id once, 384 numbers."""
    bucket = env["BATCHMILL_BUCKET"]
    body = "".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(texts))
    s3.put_object(Bucket=bucket, Key=key, Body=body.encode())
    times = []
    for _ in range(runs):
        spec = {"pipeline": "embed", "workers": 1,
                "delimitedFiles": {"s3Paths": [f"s3://{bucket}/{key}"], "batchSize": BATCH}}
        started = time.monotonic()
        submitted = throughput.http(env, "POST", "/v1/jobs", spec)
        state = throughput.wait_done(env, submitted["jobId"], poll=0.05)
        seconds = time.monotonic() - started
        if state["state"] != "JOB_STATE_SUCCEEDED":
            raise SystemExit(f"job {submitted['jobId']} ended {state['state']}: {state}")
        out_bucket, prefix = state["outputUri"][len("s3://"):].split("/", 1)
        prefix = f"{prefix.rstrip('/')}/{submitted['jobId']}/"
        seen = set()
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=out_bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                if not obj["Key"].endswith(".jsonl"):
                    continue
                for line in s3.get_object(Bucket=out_bucket, Key=obj["Key"])["Body"].read().decode().splitlines():
                    result = json.loads(line)
                    if len(result["embedding"]) != 384 or result["id"] in seen:
                        raise SystemExit(f"job {submitted['jobId']}: bad or repeated result {result['id']}")
                    seen.add(result["id"])
        if len(seen) != len(texts):
            raise SystemExit(f"job {submitted['jobId']}: {len(seen)} results for {len(texts)} texts")
        times.append(seconds)
    return times


def main():
    bench, model, st_python = sys.argv[1], sys.argv[2], sys.argv[3]
    rounds, job_runs, with_job = option("rounds", 3), option("job-runs", 3), "--no-job" not in sys.argv
    env = s3 = None
    if with_job:
        import boto3
        env = throughput.cluster_env()
        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                          region_name=env.get("AWS_REGION", "us-east-1"))
    results = {}
    for name in CORPORA:
        path = corpus(name)
        texts = open(path, encoding="utf-8").read().splitlines()
        ours, theirs = [], []
        for r in range(rounds):
            ours.append(library(bench, model, path))
            theirs.append(st(st_python, model, path))
            print(f"{name} round {r + 1}: batchmill {ours[-1]['sentences_per_s']:.1f}, "
                  f"sentence-transformers {theirs[-1]['sentences_per_s']:.1f} texts/s", flush=True)
        best_ours = max(ours, key=lambda x: x["sentences_per_s"])
        best_theirs = max(theirs, key=lambda x: x["sentences_per_s"])
        entry = {"texts": len(texts), "tokens": best_ours["tokens"], "st_tokens": best_theirs["tokens"],
                 "library": best_ours, "sentence_transformers": best_theirs,
                 "library_rounds": [x["sentences_per_s"] for x in ours],
                 "st_rounds": [x["sentences_per_s"] for x in theirs],
                 "library_vs_st": best_ours["sentences_per_s"] / best_theirs["sentences_per_s"]}
        if with_job:
            entry["library_batch"] = library(bench, model, path, BATCH)
            times = job(env, s3, f"bench/embed/{name}.jsonl", texts, job_runs)
            warm = min(times[1:]) if len(times) > 1 else times[0]
            entry["job_seconds"] = times
            entry["job_warm"] = len(texts) / warm
            entry["job_vs_st"] = entry["job_warm"] / best_theirs["sentences_per_s"]
            entry["job_vs_library"] = entry["job_warm"] / best_ours["sentences_per_s"]
            print(f"{name} job: runs {', '.join(f'{t:.1f}' for t in times)} s; warm {entry['job_warm']:.1f} texts/s",
                  flush=True)
        results[name] = entry
    record, path = throughput.save_record("embed", {"model": os.path.basename(model.rstrip("/")),
                                                    "job_batch": BATCH, "rounds": rounds, "corpora": results})
    st_version = next(iter(results.values()))["sentence_transformers"]["versions"]
    print(f"device: {next(iter(results.values()))['library']['device']}; {st_version}")
    print(f"{'corpus':<7} {'texts':>6} {'tokens':>8} {'batchmill':>10} {'ST':>8} {'lib/ST':>7} "
          f"{'job':>8} {'job/ST':>7} {'job/lib':>8}")
    for name, e in results.items():
        job_cols = (f"{e['job_warm']:>8.1f} {e['job_vs_st']:>6.2f}x {e['job_vs_library']:>7.2f}x"
                    if "job_warm" in e else f"{'-':>8} {'-':>7} {'-':>8}")
        print(f"{name:<7} {e['texts']:>6} {e['tokens']:>8} {e['library']['sentences_per_s']:>10.1f} "
              f"{e['sentence_transformers']['sentences_per_s']:>8.1f} {e['library_vs_st']:>6.2f}x {job_cols}")
    print(f"record: {os.path.relpath(path, throughput.REPO)}")


if __name__ == "__main__":
    main()
