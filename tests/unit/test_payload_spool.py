"""The payload spool (order, size cap and drops, torn records, restarts) and the payload logger
in front of a sink that fails for a while."""

from __future__ import annotations

import json
import threading

import pytest

from shipyard.monitor.cloudevents import REQUEST_TYPE, RESPONSE_TYPE, Event, event_id, make_event
from shipyard.monitor.logger import JsonlSink, PayloadLogger, SinkError, sink_for
from shipyard.monitor.spool import HEADER, Spool


def records(n: int, size: int = 10, start: int = 0) -> list[bytes]:
    return [f"{i:0{size}d}".encode() for i in range(start, start + n)]


def drain(spool: Spool) -> list[bytes]:
    out = []
    while batch := spool.peek(7):
        out += [record for _, record in batch]
        spool.ack(batch[-1][0])
    return out


def test_fifo_across_segments_and_acks(tmp_path):
    spool = Spool(tmp_path, segment_bytes=100)  # a few records per segment
    assert spool.append_many(records(50)) == 50
    assert spool.records == 50 and spool.bytes == 50 * (HEADER.size + 10)
    first = spool.peek(3)
    assert [r for _, r in first] == records(3)
    assert [r for _, r in spool.peek(3)] == records(3)  # peek does not consume
    spool.ack(first[-1][0])
    spool.ack(first[0][0])  # a position behind is ignored
    assert spool.records == 47
    assert drain(spool) == records(47, start=3)
    assert spool.records == 0 and spool.bytes == 0
    assert len(list(tmp_path.glob("*.seg"))) <= 2  # acknowledged segments are deleted
    spool.close()


def test_cap_drop_newest_counts_and_persists(tmp_path):
    cap = 10 * (HEADER.size + 10)
    spool = Spool(tmp_path, max_bytes=cap)
    assert spool.append_many(records(15)) == 10
    assert spool.dropped == 5 and spool.records == 10
    assert spool.append(b"x" * (cap + 1)) is False
    assert spool.dropped == 6
    spool.close()
    again = Spool(tmp_path, max_bytes=cap)
    assert again.dropped == 6  # reported across restarts
    assert drain(again) == records(10)
    again.close()


def test_cap_drop_oldest(tmp_path):
    cap = 10 * (HEADER.size + 10)
    spool = Spool(tmp_path, max_bytes=cap, drop="oldest", segment_bytes=50)
    assert spool.append_many(records(15)) == 15
    assert spool.dropped == 5 and spool.records == 10 and spool.bytes <= cap
    assert drain(spool) == records(10, start=5)
    spool.close()


def test_torn_last_record_is_dropped_at_open(tmp_path):
    spool = Spool(tmp_path)
    spool.append_many(records(5))
    spool.close()
    segment = sorted(tmp_path.glob("*.seg"))[-1]
    whole = segment.read_bytes()
    # a crash in the middle of a write: a header and half a payload
    segment.write_bytes(whole + HEADER.pack(10, 1234) + b"01234")
    again = Spool(tmp_path)
    assert again.torn == 1 and again.records == 5
    assert segment.read_bytes() == whole  # truncated back
    again.append(b"after")
    assert drain(again) == [*records(5), b"after"]
    again.close()


def test_corrupt_record_is_cut_off(tmp_path):
    spool = Spool(tmp_path)
    spool.append_many(records(3))
    spool.close()
    segment = sorted(tmp_path.glob("*.seg"))[-1]
    data = bytearray(segment.read_bytes())
    data[-1] ^= 0xFF  # the last record's payload no longer matches its CRC
    segment.write_bytes(bytes(data))
    again = Spool(tmp_path)
    assert again.torn == 1 and drain(again) == records(2)
    again.close()


def test_restart_resumes_after_the_acknowledged_position(tmp_path):
    spool = Spool(tmp_path, segment_bytes=60)
    spool.append_many(records(20))
    batch = spool.peek(8)
    spool.ack(batch[-1][0])
    # no close(): as after a crash (the ack and the records were fsynced)
    again = Spool(tmp_path, segment_bytes=60)
    assert again.records == 12
    assert drain(again) == records(12, start=8)
    again.append(b"next")
    again.close()
    third = Spool(tmp_path, segment_bytes=60)
    assert drain(third) == [b"next"]
    third.close()


def test_event_encoding_and_headers():
    event = make_event("request", "abc", b'{"instances": [[1]]}', "application/json", namespace="ns",
                       isvc="iris", endpoint="iris-predictor-00001")
    assert Event.decode(event.encode()) == event
    h = event.headers
    assert h["ce-specversion"] == "1.0" and h["ce-type"] == REQUEST_TYPE and h["ce-id"] == "abc"
    assert h["ce-source"] == "shipyard://ns/iris/predictor" and h["ce-component"] == "predictor"
    assert h["ce-time"].endswith("Z") and h["content-type"] == "application/json"
    response = make_event("response", "abc", b"\x00\x01", "application/octet-stream", namespace="ns", isvc="iris",
                          endpoint="e", status=500)
    assert response.headers["ce-type"] == RESPONSE_TYPE and response.headers["ce-statuscode"] == "500"
    assert event.structured()["data"] == {"instances": [[1]]}
    assert response.structured()["data_base64"] == "AAE="
    assert event_id({"x-request-id": "r1"}) == "r1" and event_id({"ce-id": "c", "x-request-id": "r"}) == "c"
    assert len(event_id({})) == 36


class FlakySink:
    """Fails while ``down`` is set; after 3 events of a batch when ``partial`` is set."""

    def __init__(self) -> None:
        self.got: list[Event] = []
        self.down = threading.Event()
        self.partial = False

    def send(self, events):
        if self.down.is_set():
            raise SinkError("down")
        if self.partial and len(events) > 3:
            self.partial = False
            self.got += events[:3]
            raise SinkError("broke mid-batch", 3)
        self.got += events

    def close(self):
        pass


def _event(i: int) -> Event:
    return make_event("request", str(i), str(i).encode(), "text/plain", namespace="n", isvc="s", endpoint="e")


def test_logger_delivers_in_order_once_after_outage_and_restart(tmp_path):
    sink = FlakySink()
    sink.down.set()
    logger = PayloadLogger(sink, tmp_path / "spool", batch_size=5, backoff_s=0.01, backoff_max_s=0.05)
    for i in range(30):
        assert logger.log(_event(i))
    import time
    time.sleep(0.3)
    assert logger.failed_attempts >= 2 and logger.stats()["backlog"] == 30 and not sink.got
    logger.close(timeout_s=0.1)  # stopped while the sink is down: the events wait in the spool
    sink.down.clear()
    sink.partial = True
    again = PayloadLogger(sink, tmp_path / "spool", batch_size=10, backoff_s=0.01)
    for i in range(30, 40):
        again.log(_event(i))
    assert again.flush(10)
    assert [e.id for e in sink.got] == [str(i) for i in range(40)]  # in order, none twice
    assert again.stats()["sent"] == 40 and again.dropped == 0
    lines = again.prometheus({"isvc": "s"})
    assert 'shipyard_payload_logger_sent_total{isvc="s"} 40' in lines
    again.close()


def test_logger_queue_full_drops_and_counts(tmp_path):
    sink = FlakySink()
    sink.down.set()
    logger = PayloadLogger(sink, tmp_path / "spool", queue_size=0)
    assert logger.log(_event(1)) is False
    assert logger.dropped == 1
    logger.close(timeout_s=0.1)


def test_jsonl_sink(tmp_path):
    path = tmp_path / "out" / "events.jsonl"
    sink = sink_for(f"file://{path}")
    assert isinstance(sink, JsonlSink)
    sink.send([_event(1), _event(2)])
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["id"] for line in lines] == ["1", "2"]
    assert lines[0]["type"] == REQUEST_TYPE and lines[0]["data_base64"] == "MQ=="
    with pytest.raises(ValueError):
        sink_for("ftp://x")
