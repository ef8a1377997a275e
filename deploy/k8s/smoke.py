"""The invariants every rendered overlay must keep (run by deploy/k8s/check
on `kubectl kustomize` output, one file per overlay):

- every container has CPU and memory requests and a memory limit, three
  probes (startup, readiness, liveness), no privilege escalation, a read-only
  root and no capabilities; every pod runs as non-root;
- the scheduler's readiness does not wait for leadership (its gRPC health is
  SERVING only while it leads, and a standby that is never ready would hold
  every rollout), and a worker's liveness does not depend on the scheduler
  (its gRPC health follows its session with the scheduler);
- images: only batchmill and batchmill-worker-cuda, all of one tag, never
  `latest`;
- the GPU overlays' workers request and limit nvidia.com/gpu, run the CUDA
  image, tolerate the GPU taint and select GPU nodes; no other overlay asks
  for a GPU;
- where KEDA scales the workers, it targets the worker Deployment (which then
  sets no replicas of its own) on the metric the scheduler exports
  (services/scheduler/src/metrics.rs);
- the dev overlays have their S3-compatible store and points the config at it;
- the TLS overlay: every service mounts the cluster's certificate, is dialed
  over https (the scheduler advertising an https address), requires client
  certificates (but the gateway, which users reach), and is probed on its
  metrics port only, since a kubelet probe speaks neither gRPC over TLS nor
  mutual TLS.

    python smoke.py <rendered dir>     (files named <overlay>.yaml)
"""

import os
import re
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEDULER_METRICS = os.path.join(HERE, "..", "..", "services", "scheduler", "src", "metrics.rs")
IMAGES = {"batchmill", "batchmill-worker-cuda"}


def workloads(docs):
    for doc in docs:
        if doc and doc.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield doc


def containers(pod):
    return [("init", c) for c in pod.get("initContainers", [])] + [("main", c) for c in pod.get("containers", [])]


def check(overlay, docs):
    errors = []
    fail = errors.append
    tags = set()
    by_name = {d["metadata"]["name"]: d for d in workloads(docs)}
    config = next((d for d in docs if d and d.get("kind") == "ConfigMap"), {})
    for name, workload in by_name.items():
        pod = workload["spec"]["template"]["spec"]
        if not pod.get("securityContext", {}).get("runAsNonRoot"):
            fail(f"{name}: the pod may run as root")
        for kind, c in containers(pod):
            where = f"{name}/{c['name']}"
            res = c.get("resources", {})
            for key in ("cpu", "memory"):
                if key not in res.get("requests", {}):
                    fail(f"{where}: no {key} request")
            if "memory" not in res.get("limits", {}):
                fail(f"{where}: no memory limit")
            sec = c.get("securityContext", {})
            if sec.get("allowPrivilegeEscalation") is not False:
                fail(f"{where}: privilege escalation not turned off")
            if sec.get("readOnlyRootFilesystem") is not True:
                fail(f"{where}: writable root filesystem")
            if sec.get("capabilities", {}).get("drop") != ["ALL"]:
                fail(f"{where}: capabilities not all dropped")
            if kind == "main":
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    if probe not in c:
                        fail(f"{where}: no {probe}")
            image = c.get("image", "")
            repo, _, tag = image.rpartition(":")
            if not repo or repo not in IMAGES:
                fail(f"{where}: image {image!r} is not one of {sorted(IMAGES)} with a tag")
            elif tag == "latest":
                fail(f"{where}: image {image!r} is tagged latest")
            tags.add(tag)
            gpus = [res.get(k, {}).get("nvidia.com/gpu") for k in ("requests", "limits")]
            wants_gpu = overlay.endswith("gpu") and name == "batchmill-worker"
            if wants_gpu and not all(gpus):
                fail(f"{where}: no nvidia.com/gpu request and limit")
            if not wants_gpu and any(gpus):
                fail(f"{where}: asks for a GPU in the {overlay} overlay")
            if wants_gpu and repo != "batchmill-worker-cuda":
                fail(f"{where}: a GPU worker runs {image!r}, not the CUDA image")
        if overlay.endswith("gpu") and name == "batchmill-worker":
            if not any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", [])):
                fail(f"{name}: does not tolerate the nvidia.com/gpu taint")
            if not pod.get("nodeSelector"):
                fail(f"{name}: no nodeSelector for GPU nodes")
    # Metrics on their own port, the one the pods are scraped on and the
    # config tells the services to serve.
    metrics_port = config.get("data", {}).get("BATCHMILL_METRICS_LISTEN", ":").rsplit(":", 1)[1]
    for name, workload in by_name.items():
        if name == "batchmill-s3":
            continue
        template = workload["spec"]["template"]
        ports = {p.get("name"): p["containerPort"] for p in template["spec"]["containers"][0].get("ports", [])}
        annotated = template["metadata"].get("annotations", {}).get("prometheus.io/port")
        if str(ports.get("metrics")) != metrics_port or annotated != metrics_port:
            fail(f"{name}: metrics port {ports.get('metrics')}, scraped on {annotated}, config says {metrics_port!r}")
    if len(tags) > 1:
        fail(f"images of several tags: {sorted(tags)}")

    for name, probe_kind in (("batchmill-scheduler", "readinessProbe"), ("batchmill-worker", "livenessProbe")):
        workload = by_name.get(name)
        if workload is None:
            fail(f"no {name}")
            continue
        probe = workload["spec"]["template"]["spec"]["containers"][0].get(probe_kind, {})
        if "grpc" in probe:
            fail(f"{name}: its {probe_kind} is gRPC health, which follows the scheduler's leadership")

    scaled = [d for d in docs if d and d.get("kind") == "ScaledObject"]
    metric = re.search(r'"pending_batches"', open(SCHEDULER_METRICS, encoding="utf-8").read())
    if overlay in ("cpu", "gpu") and not scaled:
        fail("no KEDA ScaledObject for the workers")
    for so in scaled:
        if so["spec"]["scaleTargetRef"]["name"] != "batchmill-worker":
            fail(f"ScaledObject {so['metadata']['name']} scales {so['spec']['scaleTargetRef']['name']}")
        queries = [t["metadata"].get("query", "") for t in so["spec"]["triggers"]]
        if not metric or not any("batchmill_pending_batches" in q for q in queries):
            fail(f"ScaledObject {so['metadata']['name']}: no query on batchmill_pending_batches ({queries})")
        if "replicas" in by_name["batchmill-worker"]["spec"]:
            fail("batchmill-worker sets replicas while KEDA scales it")

    if overlay == "tls":
        errors.extend(check_tls(by_name, config))

    if overlay.startswith("dev"):
        if "batchmill-s3" not in by_name:
            fail("the dev overlay has no S3 store")
        if "batchmill-s3" not in config.get("data", {}).get("AWS_ENDPOINT_URL", ""):
            fail("the dev config does not point at its S3 store")
    return errors


def check_tls(by_name, config):
    errors = []
    data = config.get("data", {})
    for key in ("BATCHMILL_TLS_CERT", "BATCHMILL_TLS_KEY", "BATCHMILL_TLS_CA", "BATCHMILL_TLS_SERVER_NAME"):
        if key not in data:
            errors.append(f"config: no {key}")
    for key in ("BATCHMILL_LISTER_URL", "BATCHMILL_ENQUEUER_URL"):
        if not data.get(key, "").startswith("https://"):
            errors.append(f"config: {key} is {data.get(key)!r}, not https")
    for name, workload in by_name.items():
        pod = workload["spec"]["template"]["spec"]
        c = pod["containers"][0]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        mounted = [
            m
            for m in c.get("volumeMounts", [])
            if volumes.get(m["name"], {}).get("secret", {}).get("secretName") == "batchmill-tls"
        ]
        if not mounted:
            errors.append(f"{name}: does not mount the batchmill-tls certificate")
        elif not data.get("BATCHMILL_TLS_CERT", "").startswith(mounted[0]["mountPath"] + "/"):
            errors.append(f"{name}: the certificate is mounted at {mounted[0]['mountPath']}, not where the config says")
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        mutual = "BATCHMILL_TLS_CLIENT_CA" in env
        if mutual == (name == "batchmill-gateway"):
            errors.append(f"{name}: client certificates {'required' if mutual else 'not required'}")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            port = c.get(probe, {}).get("httpGet", {}).get("port")
            if port != "metrics":
                errors.append(f"{name}: {probe} is not an HTTP probe of the metrics port ({c.get(probe)})")
    scheduler = by_name.get("batchmill-scheduler", {}).get("spec", {}).get("template", {}).get("spec", {})
    advertised = {e["name"]: e.get("value", "") for e in scheduler.get("containers", [{}])[0].get("env", [])}
    if not advertised.get("BATCHMILL_ADVERTISE_URL", "").startswith("https://"):
        errors.append(f"batchmill-scheduler advertises {advertised.get('BATCHMILL_ADVERTISE_URL')!r}, not https")
    return errors


def main():
    rendered = sys.argv[1]
    failed = False
    for file in sorted(os.listdir(rendered)):
        overlay = file.removesuffix(".yaml")
        with open(os.path.join(rendered, file), encoding="utf-8") as f:
            docs = list(yaml.safe_load_all(f))
        errors = check(overlay, docs)
        for e in errors:
            print(f"{overlay}: {e}")
        failed |= bool(errors)
    if failed:
        sys.exit(1)
    print(f"k8s invariants hold: {', '.join(sorted(os.listdir(rendered)))}")


if __name__ == "__main__":
    main()
