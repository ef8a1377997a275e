# predictor.py: the Cortex BatchAPI tutorial's image classifier, with its
# model (torchvision's AlexNet over ImageNet's labels) replaced by one that
# needs no download: TinyModel tells a picture's class by its colour.
# Everything else is the tutorial's, its imports included: requests and PIL,
# which Cortex's Python predictor image had preinstalled and which the
# tutorial never listed in requirements.txt; boto3; config and job_spec;
# images fetched with requests (http) or boto3 (s3); per-batch result files;
# and on_job_complete aggregating them.

import os
import requests
from PIL import Image
from io import BytesIO
import boto3
import json
import re
import time


class TinyModel:
    """Stands in for AlexNet: a picture's red channel, over 40, is its class."""

    labels = ["tabby cat", "golden retriever", "goldfish", "great white shark", "tree frog"]

    def __call__(self, image):
        red = image.convert("RGB").getpixel((0, 0))[0]
        index = round(red / 40)
        return self.labels[index] if index < len(self.labels) else "unknown"


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

    def fetch(self, image_url):
        if image_url.startswith("s3://"):
            bucket, key = re.match("s3://(.+?)/(.+)", image_url).groups()
            return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        return requests.get(image_url).content

    def predict(self, payload, batch_id):
        results = []

        # download and classify each image
        for image_url in payload:
            img_pil = Image.open(BytesIO(self.fetch(image_url)))
            results.append({"url": image_url, "class": self.model(img_pil)})

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
