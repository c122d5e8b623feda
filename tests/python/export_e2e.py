"""The official Python SDK (pinned) against the whole system started by
`stream-manager`, exporting to Kinesis on moto. Run by
tests/tests/kinesis_sdk.rs with STREAM_MANAGER_SERVER_PORT and KINESIS_ENDPOINT
set. Creates a stream with a KinesisConfig export through the SDK, appends,
waits until the SDK's describe shows the export caught up, and reads the
records back from moto with boto3."""

import os
import sys
import time

from local_aws import kinesis_client
from stream_manager import (
    ExportDefinition,
    KinesisConfig,
    MessageStreamDefinition,
    StrategyOnFull,
    StreamManagerClient,
)

PORT = int(os.environ["STREAM_MANAGER_SERVER_PORT"])

kinesis = kinesis_client()
kinesis.create_stream(StreamName="sdk-kinesis", ShardCount=1)

client = StreamManagerClient(port=PORT)
client.create_message_stream(
    MessageStreamDefinition(
        name="sdk-export",
        strategy_on_full=StrategyOnFull.OverwriteOldestData,
        export_definition=ExportDefinition(
            kinesis=[
                KinesisConfig(
                    identifier="to-kinesis",
                    kinesis_stream_name="sdk-kinesis",
                    batch_size=10,
                )
            ]
        ),
    )
)
payloads = [("message %d " % i).encode() + bytes(range(i % 256)) for i in range(50)]
for p in payloads:
    client.append_message("sdk-export", p)

deadline = time.time() + 60
while True:
    status = client.describe_message_stream("sdk-export").export_statuses[0]
    if status.last_exported_sequence_number == 49:
        break
    if time.time() > deadline:
        print("FAIL: export did not catch up: %r" % status)
        sys.exit(1)
    time.sleep(0.2)

failures = []
if status.export_config_identifier != "to-kinesis":
    failures.append("identifier %r" % status.export_config_identifier)
if status.exported_messages_count != 50:
    failures.append("exported_messages_count %r" % status.exported_messages_count)
if status.exported_bytes_from_stream != sum(len(p) for p in payloads):
    failures.append("exported_bytes_from_stream %r" % status.exported_bytes_from_stream)
if status.error_message:
    failures.append("error_message %r" % status.error_message)
if not status.last_export_time:
    failures.append("no last_export_time")

shard = kinesis.list_shards(StreamName="sdk-kinesis")["Shards"][0]["ShardId"]
iterator = kinesis.get_shard_iterator(
    StreamName="sdk-kinesis", ShardId=shard, ShardIteratorType="TRIM_HORIZON"
)["ShardIterator"]
records = kinesis.get_records(ShardIterator=iterator, Limit=1000)["Records"]
got = [r["Data"] for r in records]
if got != payloads:
    failures.append("read back %d records, not the 50 appended in order" % len(got))
keys = {r["PartitionKey"] for r in records}
if len(keys) != len(records) or not all(len(k) == 36 for k in keys):
    failures.append("partition keys are not one UUID per record")

for f in failures:
    print("FAIL:", f)
print("%d passed, %d failed" % (1 if not failures else 0, len(failures)))
sys.exit(1 if failures else 0)
