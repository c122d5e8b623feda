"""End-to-end checks of the official Python Stream Manager SDK (pinned in
requirements.txt) against a running store + ingest. Run by
tests/tests/python_sdk.rs with STREAM_MANAGER_SERVER_PORT set. Each check is
a function; the script prints one line per check and a closing
'N passed, N failed' line, and exits non-zero when any check fails."""

import os
import sys
import threading
import time
import traceback

from stream_manager import (
    ExportDefinition,
    InvalidRequestException,
    KinesisConfig,
    MessageStreamDefinition,
    NotEnoughMessagesException,
    Persistence,
    ReadMessagesOptions,
    ResourceNotFoundException,
    StrategyOnFull,
    StreamManagerClient,
    UpdateNotAllowedException,
    ConnectFailedException,
)

PORT = int(os.environ["STREAM_MANAGER_SERVER_PORT"])
CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


def client():
    return StreamManagerClient(port=PORT)


def raises(exc, fn, *args):
    try:
        fn(*args)
    except exc as e:
        return e
    raise AssertionError(f"expected {exc.__name__}")


@check
def create_append_read_describe_list_delete():
    c = client()
    c.create_message_stream(MessageStreamDefinition(name="py-basic", strategy_on_full=StrategyOnFull.OverwriteOldestData))
    seqs = [c.append_message("py-basic", f"m{i}".encode()) for i in range(5)]
    assert seqs == [0, 1, 2, 3, 4], seqs
    msgs = c.read_messages("py-basic", ReadMessagesOptions(desired_start_sequence_number=1, min_message_count=2, max_message_count=3))
    assert [m.sequence_number for m in msgs] == [1, 2, 3]
    assert msgs[0].payload == b"m1" and msgs[0].stream_name == "py-basic" and msgs[0].ingest_time > 0
    assert "py-basic" in c.list_streams()
    info = c.describe_message_stream("py-basic")
    assert info.definition.name == "py-basic"
    assert info.storage_status.oldest_sequence_number == 0
    assert info.storage_status.newest_sequence_number == 4
    assert info.storage_status.total_bytes > 0
    c.delete_message_stream("py-basic")
    assert "py-basic" not in c.list_streams()
    raises(ResourceNotFoundException, c.append_message, "py-basic", b"x")
    c.close()


@check
def read_option_combinations():
    c = client()
    c.create_message_stream(MessageStreamDefinition(name="py-read", strategy_on_full=StrategyOnFull.RejectNewData))
    for i in range(10):
        c.append_message("py-read", bytes([i]))
    # No options: one message from 0.
    msgs = c.read_messages("py-read")
    assert [m.sequence_number for m in msgs] == [0], msgs
    # Default options object.
    assert len(c.read_messages("py-read", ReadMessagesOptions())) == 1
    # Max only.
    assert len(c.read_messages("py-read", ReadMessagesOptions(max_message_count=100))) == 10
    # Start beyond the newest, no wait: not enough.
    raises(NotEnoughMessagesException, c.read_messages, "py-read", ReadMessagesOptions(desired_start_sequence_number=10))
    # min > available with a short wait: not enough, on time.
    t = time.monotonic()
    raises(NotEnoughMessagesException, c.read_messages, "py-read",
           ReadMessagesOptions(desired_start_sequence_number=5, min_message_count=6, max_message_count=6, read_timeout_millis=500))
    took = time.monotonic() - t
    # Answered at its timeout, not at a later housekeeping tick; the slack is
    # the Python client's own scheduling on a loaded machine.
    assert 0.3 < took < 0.75, took
    c.close()


@check
def long_poll_is_woken_by_an_append_from_another_thread_on_the_same_client():
    c = client()
    c.create_message_stream(MessageStreamDefinition(name="py-poll", strategy_on_full=StrategyOnFull.RejectNewData))
    result = {}

    def reader():
        t = time.monotonic()
        result["msgs"] = c.read_messages("py-poll", ReadMessagesOptions(min_message_count=1, read_timeout_millis=5000))
        result["took"] = time.monotonic() - t

    th = threading.Thread(target=reader)
    th.start()
    time.sleep(0.3)
    # The append on the same connection is not held behind the waiting read.
    t = time.monotonic()
    assert c.append_message("py-poll", b"wake") == 0
    assert time.monotonic() - t < 1.0
    th.join(10)
    assert [m.payload for m in result["msgs"]] == [b"wake"]
    assert result["took"] < 2.0, result
    c.close()


@check
def errors_map_to_the_sdk_exceptions():
    c = client()
    c.create_message_stream(MessageStreamDefinition(name="py-err", strategy_on_full=StrategyOnFull.RejectNewData))
    raises(InvalidRequestException, c.create_message_stream,
           MessageStreamDefinition(name="py-err", strategy_on_full=StrategyOnFull.RejectNewData))
    raises(ResourceNotFoundException, c.describe_message_stream, "py-missing")
    raises(ResourceNotFoundException, c.read_messages, "py-missing")
    raises(ResourceNotFoundException, c.delete_message_stream, "py-missing")
    # Persistence cannot change.
    raises(UpdateNotAllowedException, c.update_message_stream,
           MessageStreamDefinition(name="py-err", strategy_on_full=StrategyOnFull.RejectNewData, persistence=Persistence.Memory))
    # Full under RejectNewData.
    c.create_message_stream(MessageStreamDefinition(name="py-full", max_size=1024, stream_segment_size=1024,
                                                    strategy_on_full=StrategyOnFull.RejectNewData))
    c.append_message("py-full", b"x" * 900)
    raises(InvalidRequestException, c.append_message, "py-full", b"y" * 900)
    c.close()


@check
def update_and_exports_round_trip():
    c = client()
    d = MessageStreamDefinition(name="py-upd", strategy_on_full=StrategyOnFull.RejectNewData,
                                export_definition=ExportDefinition(kinesis=[KinesisConfig(identifier="k1", kinesis_stream_name="ks", batch_size=100)]))
    c.create_message_stream(d)
    d.max_size = 512 * 1024 * 1024
    d.time_to_live_millis = 3_600_000
    c.update_message_stream(d)
    info = c.describe_message_stream("py-upd")
    assert info.definition.max_size == 512 * 1024 * 1024
    assert info.definition.time_to_live_millis == 3_600_000
    assert info.definition.export_definition.kinesis[0].identifier == "k1"
    assert info.definition.export_definition.kinesis[0].batch_size == 100
    statuses = info.export_statuses
    assert len(statuses) == 1 and statuses[0].export_config_identifier == "k1"
    assert statuses[0].last_exported_sequence_number == -1
    c.close()


@check
def many_pipelined_appends_keep_their_order():
    c = client()
    c.create_message_stream(MessageStreamDefinition(name="py-order", strategy_on_full=StrategyOnFull.RejectNewData))
    results = []
    lock = threading.Lock()

    def writer(w):
        for i in range(50):
            seq = c.append_message("py-order", f"{w}:{i}".encode())
            with lock:
                results.append((w, i, seq))

    ths = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    [t.start() for t in ths]
    [t.join() for t in ths]
    assert sorted(s for _, _, s in results) == list(range(200))
    for w in range(4):
        seqs = [s for ww, _, s in sorted(results) if ww == w]
        assert seqs == sorted(seqs), "one thread's appends were reordered"
    c.close()


@check
def memory_streams_work():
    c = client()
    c.create_message_stream(MessageStreamDefinition(name="py-mem", strategy_on_full=StrategyOnFull.OverwriteOldestData,
                                                    persistence=Persistence.Memory))
    assert c.append_message("py-mem", b"in memory") == 0
    assert c.read_messages("py-mem")[0].payload == b"in memory"
    assert c.describe_message_stream("py-mem").definition.persistence == Persistence.Memory
    c.close()


def main():
    failed = 0
    for fn in CHECKS:
        try:
            fn()
            print(f"ok   {fn.__name__}")
        except Exception:
            failed += 1
            print(f"FAIL {fn.__name__}")
            traceback.print_exc()
    print(f"{len(CHECKS) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
