"""What the SDK check scripts share: a boto3 Kinesis client for the local
endpoint the test started (moto), named by KINESIS_ENDPOINT."""

import os

import boto3


def kinesis_client():
    return boto3.client(
        "kinesis",
        endpoint_url=os.environ["KINESIS_ENDPOINT"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
