"""What `scripts/test-arm` checks on a packaged system running under
emulation: the official Python SDK (pinned) creates a stream with a Kinesis
export, appends, reads every message back, and the records arrive in moto.
Run with STREAM_MANAGER_SERVER_PORT and KINESIS_ENDPOINT set; prints one
line per check and closes with `N passed, M failed` (exit 1 on a failure)."""

import os
import sys
import time

from local_aws import kinesis_client
from stream_manager import (
    ExportDefinition,
    KinesisConfig,
    MessageStreamDefinition,
    ReadMessagesOptions,
    StrategyOnFull,
    StreamManagerClient,
)

MESSAGES = 50
PORT = int(os.environ["STREAM_MANAGER_SERVER_PORT"])
results = []


def check(name, ok, detail=""):
    results.append(ok)
    print(("ok   " if ok else "FAIL ") + name + (f": {detail}" if detail else ""), flush=True)


kinesis = kinesis_client()
kinesis.create_stream(StreamName="device", ShardCount=1)

client = StreamManagerClient(port=PORT)
client.create_message_stream(
    MessageStreamDefinition(
        name="device-stream",
        strategy_on_full=StrategyOnFull.RejectNewData,
        export_definition=ExportDefinition(
            kinesis=[KinesisConfig(identifier="to-kinesis", kinesis_stream_name="device", batch_size=10)]
        ),
    )
)
payloads = [f"message {i} from the device".encode() * (1 + i % 5) for i in range(MESSAGES)]
sequence_numbers = [client.append_message("device-stream", p) for p in payloads]
check("appends acknowledged in order", sequence_numbers == list(range(MESSAGES)), str(sequence_numbers[:5]))

read = client.read_messages(
    "device-stream",
    ReadMessagesOptions(desired_start_sequence_number=0, min_message_count=MESSAGES, read_timeout_millis=10000),
)
check("every message read back", [m.payload for m in read] == payloads, f"{len(read)} read")

shard = kinesis.describe_stream(StreamName="device")["StreamDescription"]["Shards"][0]["ShardId"]
got = []
deadline = time.time() + 120
while len(got) < MESSAGES and time.time() < deadline:
    iterator = kinesis.get_shard_iterator(StreamName="device", ShardId=shard, ShardIteratorType="TRIM_HORIZON")[
        "ShardIterator"
    ]
    got = [r["Data"] for r in kinesis.get_records(ShardIterator=iterator, Limit=10000)["Records"]]
    if len(got) < MESSAGES:
        time.sleep(1)
check("every message arrived in Kinesis, in order", got == payloads, f"{len(got)} records")

status = client.describe_message_stream("device-stream")
exported = status.export_statuses[0].last_exported_sequence_number if status.export_statuses else None
check("the export's cursor is at the last message", exported == MESSAGES - 1, f"cursor {exported}")

client.close()
passed = sum(results)
print(f"{passed} passed, {len(results) - passed} failed")
sys.exit(0 if all(results) else 1)
