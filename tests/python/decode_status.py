"""Decodes StatusMessage JSON payloads with the official Python SDK's own
model (stream_manager.StatusMessage, pinned in requirements.txt). Reads one
JSON payload per line on stdin; prints, per line, a compact JSON summary of
what the SDK decoded, so tests/tests/s3_export.rs can check it. Exits non-zero
when any payload does not decode."""

import json
import sys

from stream_manager import Status, StatusLevel, StatusMessage, EventType
from stream_manager.util import Util

for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    msg = Util.deserialize_json_bytes_to_obj(line.encode(), StatusMessage)
    ctx = msg.status_context
    task = ctx.s3_export_task_definition if ctx else None
    print(
        json.dumps(
            {
                "event_type": EventType(msg.event_type).name,
                "status": Status(msg.status).name,
                "status_level": StatusLevel(msg.status_level).name,
                "message": msg.message,
                "stream": ctx.stream_name if ctx else None,
                "export": ctx.export_identifier if ctx else None,
                "sequence_number": ctx.sequence_number if ctx else None,
                "bucket": task.bucket if task else None,
                "key": task.key if task else None,
                "timestamp_ok": isinstance(msg.timestamp_epoch_ms, int)
                and msg.timestamp_epoch_ms > 1_600_000_000_000,
            }
        )
    )
