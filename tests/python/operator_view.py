"""The official Python SDK (pinned) sets up what the operator-view test
(tests/tests/operator_view.rs) watches through metrics and `status`: a
stream whose Kinesis export delivers, and a small OverwriteOldestData stream
whose export points at a Kinesis stream that does not exist (it fails, falls
behind, and its oldest messages are overwritten before they are exported).
Run with STREAM_MANAGER_SERVER_PORT and KINESIS_ENDPOINT set."""

import os

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
kinesis.create_stream(StreamName="delivered", ShardCount=1)

client = StreamManagerClient(port=PORT)
client.create_message_stream(
    MessageStreamDefinition(
        name="ok-stream",
        strategy_on_full=StrategyOnFull.RejectNewData,
        export_definition=ExportDefinition(
            kinesis=[KinesisConfig(identifier="to-kinesis", kinesis_stream_name="delivered", batch_size=10)]
        ),
    )
)
client.create_message_stream(
    MessageStreamDefinition(
        name="stuck-stream",
        max_size=16384,
        stream_segment_size=4096,
        strategy_on_full=StrategyOnFull.OverwriteOldestData,
        export_definition=ExportDefinition(
            kinesis=[KinesisConfig(identifier="to-missing", kinesis_stream_name="missing", batch_size=10)]
        ),
    )
)
for i in range(20):
    client.append_message("ok-stream", b"ok %d" % i)
for i in range(100):
    client.append_message("stuck-stream", (b"stuck %d " % i).ljust(1000, b"."))
print("set up")
