# predictor.py: the Cortex BatchAPI tutorial's image classifier, with its
# model (AlexNet over downloaded ImageNet labels) replaced by one that needs
# no download: a "picture" here is a small file whose bytes name its class.
# Everything else is the tutorial's: config, job_spec, boto3, per-batch
# result files and on_job_complete aggregating them.

import json
import os
import re
import time

import boto3


class TinyModel:
    """Stands in for torchvision's AlexNet: one class per image."""

    labels = ["tabby cat", "golden retriever", "goldfish", "great white shark", "tree frog"]

    def classify(self, image_bytes):
        text = image_bytes.decode("utf-8", errors="replace")
        for label in self.labels:
            if label in text:
                return label
        return "unknown"


class PythonPredictor:
    def __init__(self, config, job_spec):
        self.model = TinyModel()

        if len(config.get("dest_s3_dir", "")) == 0:
            raise Exception("'dest_s3_dir' field was not provided in job submission")

        self.s3 = boto3.client("s3")

        self.bucket, self.key = re.match("s3://(.+?)/(.+)", config["dest_s3_dir"]).groups()
        self.key = os.path.join(self.key, job_spec["job_id"])
        # Not in the tutorial: lets a test catch a job while it runs.
        self.delay = float(config.get("delay_s", 0))

    def predict(self, payload, batch_id):
        results = []

        # download and classify each image
        for image_url in payload:
            bucket, image_key = re.match("s3://(.+?)/(.+)", image_url).groups()
            image_bytes = self.s3.get_object(Bucket=bucket, Key=image_key)["Body"].read()
            results.append({"url": image_url, "class": self.model.classify(image_bytes)})

        time.sleep(self.delay)
        print(f"classified {len(payload)} images in batch {batch_id}")
        json_output = json.dumps(results)

        # save results
        self.s3.put_object(Bucket=self.bucket, Key=f"{self.key}/{batch_id}.json", Body=json_output)

    def on_job_complete(self):
        all_results = []

        # aggregate all classifications
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.key):
            if "Contents" not in page:
                continue

            for obj in page["Contents"]:
                body = self.s3.get_object(Bucket=self.bucket, Key=obj["Key"])["Body"]
                all_results += json.loads(body.read().decode("utf8"))

        # save single file containing aggregated classifications
        self.s3.put_object(
            Bucket=self.bucket,
            Key=os.path.join(self.key, "aggregated_results.json"),
            Body=json.dumps(all_results),
        )
