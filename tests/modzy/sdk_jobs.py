"""Modzy's Python SDK (modzy-sdk 0.11.6, unchanged) against batchmill's
Modzy routes, as a Modzy user's code calls them. Run by tests/tests/modzy.rs
with BATCHMILL_MODZY_URL (<gateway>/api), BATCHMILL_API_KEY (an account's
member key), BATCHMILL_OTHER_KEY (another account's) and
BATCHMILL_SLOW_MODEL (a deployed pipeline whose batches take seconds).
Prints one line per check; exits non-zero on the first that fails."""

import io
import os
import sys
import tempfile

from modzy import ApiClient
from modzy.error import BadRequestError, NotFoundError, RequestEntityTooLargeError

URL = os.environ["BATCHMILL_MODZY_URL"]
client = ApiClient(base_url=URL, api_key=os.environ["BATCHMILL_API_KEY"])
other = ApiClient(base_url=URL, api_key=os.environ["BATCHMILL_OTHER_KEY"])
SLOW = os.environ["BATCHMILL_SLOW_MODEL"]
# The tenant's own S3 keys, and a bucket with tenant/docs/{a,b}.txt and
# tenant/docs/sub/c.bin in it.
S3_KEY, S3_SECRET = os.environ["BATCHMILL_TENANT_S3"].split(":")
BUCKET = os.environ["BATCHMILL_BUCKET"]
# A PostgreSQL with table docs (id, body): 30 rows, body 'doc <id>'.
PG_URL, PG_USER, PG_PASSWORD = os.environ["BATCHMILL_PG"].split(" ")


def check(what, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + what + (f": {detail}" if detail and not ok else ""), flush=True)
    if not ok:
        sys.exit(1)


def refused(what, call, error, text):
    """`call` fails with `error`, whose message says `text`."""
    try:
        call()
        check(what, False, "accepted")
    except error as e:
        check(f"{what} is refused: {text}", text in str(e), str(e))


def wait(job):
    job = client.jobs.block_until_complete(job, timeout=120, poll_interval=0.3)
    result = client.results.block_until_complete(job, timeout=120, poll_interval=0.3)
    return job, result


# Models: pipelines and their versions.
echo = client.models.get("echo")
check("models.get", echo.modelId == "echo" and echo.latest_version == "1", echo)
check("models.get_versions", [v.version for v in client.models.get_versions("echo")] == ["1"])
check("models.get_version", client.models.get_version("echo", "1").version == "1")
check("models.get_all lists echo and embed", {"echo", "embed"} <= {m.modelId for m in client.models.get_all()})

# Text: each source is an input item, its results keyed by its name.
sources = {f"item-{i}": {"input.txt": f"text {i}"} for i in range(25)}
job = client.jobs.submit_text("echo", "1", sources)
check("submit_text answers SUBMITTED or later", job.status in ("SUBMITTED", "IN_PROGRESS", "COMPLETED"), job)
job, result = wait(job)
check("text job COMPLETED", job.status == "COMPLETED", job)
check("text job counts", (job.total, job.completed, job.failed, job.pending) == (25, 25, 0, 0), job)
check("text job fields", job.submitted_by and job.account_identifier and job.model.identifier == "echo"
      and job.model.version == "1" and job.input_byte_amount > 0 and job.elapsed_time >= 0
      and job.queue_time >= 0 and job.created_at and job.updated_at and job.submitted_at, job)
check("text job inputs", job.job_inputs.identifier[:3] == ["item-0", "item-1", "item-10"]
      or sorted(job.job_inputs.identifier) == sorted(sources), job.job_inputs)
check("results finished", result.finished and result.total == 25 and result.completed == 25 and result.failed == 0)
for name, inputs in sources.items():
    out = result.get_source_outputs(name)["results.json"]
    check(f"result of {name}", out == {"name": name, "inputs": inputs}, out)

# Embedded: base64 data URIs; UTF-8 data reaches the model as its text.
job = client.jobs.submit_embedded("echo", "1", {"a": {"input.txt": b"bytes here"}, "b": {"blob": bytes([0, 255, 7])}})
job, result = wait(job)
check("embedded job COMPLETED", job.status == "COMPLETED" and job.completed == 2, job)
check("embedded text", result.get_source_outputs("a")["results.json"]["inputs"]["input.txt"] == "bytes here")
check("embedded binary", result.get_source_outputs("b")["results.json"]["inputs"]["blob"]
      == "data:application/octet-stream;base64,AP8H")

# The embed model: one vector per input item, keyed by its name.
job = client.jobs.submit_text("embed", "1", {"s1": {"input.txt": "A cat sits on the mat."}, "s2": {"input.txt": "Stocks fell."}})
job, result = wait(job)
vector = result.get_source_outputs("s1")["results.json"]["embedding"]
check("embed results", job.status == "COMPLETED" and len(vector) == 384, job)

# Cancel a job that is still running.
job = client.jobs.submit_text(SLOW, "1", {f"slow-{i}": {"input.txt": str(i)} for i in range(40)})
cancelled = client.jobs.cancel(job)
check("cancel answers CANCELED", cancelled.status == "CANCELED", cancelled)
check("a cancelled job stays CANCELED", client.jobs.get(job).status == "CANCELED")
result = client.results.get(job)
check("a cancelled job's results are finished", result.finished)

# History: filters and paging.
history = client.jobs.get_history(status="terminated", model="echo", per_page=1, page=1)
check("history page 1 of echo", len(history) == 1 and history[0].model.identifier == "echo", history)
second = client.jobs.get_history(status="terminated", model="echo", per_page=1, page=2)
check("history page 2 differs", len(second) == 1 and second[0].job_identifier != history[0].job_identifier)
everything = client.jobs.get_history(per_page=100)
check("history lists every job", len(everything) == 4, [j.job_identifier for j in everything])
check("history newest first", everything[0].job_identifier == job.job_identifier)
check("history pending", client.jobs.get_history(status="pending") == [])
check("history by model", [j.model.identifier for j in client.jobs.get_history(model=SLOW)] == [SLOW])
check("history by start date", client.jobs.get_history(start_date="2999-01-01T00:00:00.000") == [])

# Bad input is a 400 naming the field.
for what, call, field in [
    ("unknown model", lambda: client.jobs.submit_text("no-such-model", "1", {"a": {"input.txt": "x"}}), "model.identifier"),
    ("unknown version", lambda: client.jobs.submit_text("echo", "7", {"a": {"input.txt": "x"}}), "model.version"),
    ("malformed data URI", lambda: client.http.post("/jobs", {"model": {"identifier": "echo", "version": "1"},
        "input": {"type": "embedded", "sources": {"a": {"input.txt": "data:text/plain;base64,@@"}}}}), "input.sources.a.input.txt"),
]:
    try:
        call()
        check(what, False, "accepted")
    except BadRequestError as e:
        check(f"{what} names {field}", field in str(e), str(e))

# Another account sees none of it; a wrong key is refused.
try:
    other.jobs.get(job)
    check("another account's job", False, "visible")
except NotFoundError:
    check("another account gets 404 for the job", True)
try:
    other.results.get(job)
    check("another account's results", False, "visible")
except NotFoundError:
    check("another account gets 404 for the results", True)
check("another account's history is its own", other.jobs.get_history() == [])
try:
    ApiClient(base_url=URL, api_key="not-a-key")
    check("a wrong key", False, "accepted")
except ValueError as e:
    # The SDK checks its key when it starts (GET /models) and refuses it so.
    check("a wrong key is refused when the client starts", "api_key should be a valid key" in str(e), str(e))
try:
    client.http.session.get(URL + "/jobs/history", headers={"Authorization": "ApiKey not-a-key"}).raise_for_status()
    check("a wrong key", False, "accepted")
except Exception as e:  # noqa: BLE001 - requests' HTTPError
    check("a wrong key gets 401", "401" in str(e), str(e))
# aws-s3: each input is an object, read with the job's own credentials.
docs = {"doc-a": {"input.txt": {"bucket": BUCKET, "key": "/tenant/docs/a.txt"}},
        "doc-c": {"input.txt": {"bucket": BUCKET, "key": "tenant/docs/sub/c.bin"}}}
job = client.jobs.submit_aws_s3("echo", "1", docs, S3_KEY, S3_SECRET, "us-east-1")
job, result = wait(job)
check("aws-s3 job COMPLETED", job.status == "COMPLETED" and job.completed == 2, job)
check("aws-s3 text object", result.get_source_outputs("doc-a")["results.json"]["inputs"]["input.txt"] == "alpha")
check("aws-s3 binary object", result.get_source_outputs("doc-c")["results.json"]["inputs"]["input.txt"]
      == "data:application/octet-stream;base64,AAEC/w==")

# aws-s3-folder (not in this SDK version; its HTTP client sends it as Modzy's API takes it).
folder = client.http.post("/jobs", {"model": {"identifier": "echo", "version": "1"}, "input": {
    "type": "aws-s3-folder", "accessKeyID": S3_KEY, "secretAccessKey": S3_SECRET, "region": "us-east-1",
    "sources": {"docs": {"input.txt": {"bucket": BUCKET, "path": "tenant/docs/"}}}}})
job, result = wait(folder["jobIdentifier"])
check("aws-s3-folder job COMPLETED", job.status == "COMPLETED" and job.total == 3 and job.completed == 3, job)
names = sorted(result.results.keys())
check("aws-s3-folder names each object", names == ["docs/a.txt", "docs/b.txt", "docs/sub/c.bin"], names)
check("aws-s3-folder reads each object", result.get_source_outputs("docs/b.txt")["results.json"]["inputs"]["input.txt"] == "beta")
check("the job never shows its credentials", S3_SECRET not in str(client.jobs.get(job)) and S3_SECRET not in str(result))

# Wrong credentials are refused at submission, naming the field.
try:
    client.jobs.submit_aws_s3("echo", "1", docs, S3_KEY, "not-the-secret", "us-east-1")
    check("wrong S3 credentials", False, "accepted")
except BadRequestError as e:
    check("wrong S3 credentials name s3_credentials", "s3_credentials" in str(e), str(e))
try:
    client.http.post("/jobs", {"model": {"identifier": "echo", "version": "1"}, "input": {
        "type": "aws-s3-folder", "accessKeyID": S3_KEY, "secretAccessKey": "not-the-secret", "region": "us-east-1",
        "sources": {"docs": {"input.txt": {"bucket": BUCKET, "path": "tenant/docs/"}}}}})
    check("wrong S3 credentials for a folder", False, "accepted")
except BadRequestError as e:
    check("wrong S3 credentials for a folder name s3_folders", "s3_folders" in str(e), str(e))
# jdbc: each row of the query is one input, its columns the model's inputs.
job = client.jobs.submit_jdbc("echo", "1", PG_URL, PG_USER, PG_PASSWORD, "org.postgresql.Driver",
                              'SELECT body AS "input.txt", id FROM docs ORDER BY id')
job, result = wait(job)
check("jdbc job COMPLETED", job.status == "COMPLETED" and (job.total, job.completed, job.failed) == (30, 30, 0), job)
check("jdbc rows by name", result.get_source_outputs("0")["results.json"]["inputs"] == {"input.txt": "doc 1", "id": 1}
      and result.get_source_outputs("29")["results.json"]["inputs"]["input.txt"] == "doc 30")
check("the database password is never shown", PG_PASSWORD not in str(client.jobs.get(job)) and PG_PASSWORD not in str(result))
for what, args, field in [
    ("a JDBC URL that is not jdbc:postgresql://", ("jdbc:mysql://127.0.0.1/x", PG_USER, PG_PASSWORD, 'SELECT 1'), "input.url"),
    ("a wrong database password", (PG_URL, PG_USER, "not-the-password", 'SELECT 1'), "sql_query"),
    ("a query over no such table", (PG_URL, PG_USER, PG_PASSWORD, 'SELECT * FROM no_such_table'), "42P01"),
]:
    try:
        client.jobs.submit_jdbc("echo", "1", args[0], args[1], args[2], "org.postgresql.Driver", args[3])
        check(what, False, "accepted")
    except BadRequestError as e:
        check(f"{what} is a 400 naming {field}", field in str(e), str(e))
# A query that fails past its first rows: the job ends, with the database's error.
job = client.jobs.submit_jdbc("echo", "1", PG_URL, PG_USER, PG_PASSWORD, "org.postgresql.Driver",
                              'SELECT 1 / (n - 2000) AS "input.txt" FROM generate_series(1, 3000) AS n')
job = client.jobs.block_until_complete(job, timeout=120, poll_interval=0.3)
check("a query failing mid-way ends the job with the database's error",
      job.status == "COMPLETED" and "22012" in job.message and "division by zero" in job.message, job)

# Files: submit_file opens a job, appends each input in chunks (1M, as
# GET /jobs/features says), then closes it; each input is read back whole.
check("features", client.jobs.get_features()["input_chunk_maximum_size"] == "1M")
big = "".join(f"line {i:07d} of a file sent in chunks\n" for i in range(70_000))  # about 2.8 MB: 3 chunks
with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
    f.write(big)
job = client.jobs.submit_file("echo", "1", {
    "big": {"input.txt": f.name},
    "small": {"input.txt": io.BytesIO(b"a file-like object"), "blob": bytes([0, 1, 2, 255])},
})
job, result = wait(job)
os.unlink(f.name)
check("file job COMPLETED", job.status == "COMPLETED" and (job.total, job.completed) == (2, 2), job)
check("a file in 3 chunks is read whole", result.get_source_outputs("big")["results.json"]["inputs"]["input.txt"] == big)
small = result.get_source_outputs("small")["results.json"]["inputs"]
check("file-like and bytes inputs", small == {"input.txt": "a file-like object",
                                              "blob": "data:application/octet-stream;base64,AAEC/w=="}, small)
# The open job underneath, as Modzy's API shows it.
opened = client.http.post("/jobs", {"model": {"identifier": "echo", "version": "1"}, "explain": False})
upload = opened["jobIdentifier"]
check("an opened job is OPEN", opened["status"] == "OPEN" and client.jobs.get(upload).status == "OPEN", opened)
refused("another account's open job", lambda: other.jobs.get(upload), NotFoundError, "not found")
refused("closing a job with no inputs", lambda: client.http.post(f"/jobs/{upload}/close"), BadRequestError, "no inputs")
refused("a chunk over the limit", lambda: client.http.post(f"/jobs/{upload}/a/input.txt", None,
        {"input": b"x" * (1024 * 1024 + 1)}), RequestEntityTooLargeError, "input_chunk_maximum_size")
check("cancelling an open job", client.jobs.cancel(upload).status == "CANCELED")
refused("appending to a cancelled job", lambda: client.http.post(f"/jobs/{upload}/a/input.txt", None, {"input": b"late"}),
        BadRequestError, "closed")
refused("opening a job of an unknown version",
        lambda: client.http.post("/jobs", {"model": {"identifier": "echo", "version": "9"}}), BadRequestError, "model.version")
print("all checks passed")
