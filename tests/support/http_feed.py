"""Feeding a RequestReader in pieces, for the sans-I/O HTTP tests."""

from __future__ import annotations

from labsquid.http import ConnectionClosed, Data, NeedData, Paused, RequestReader


def pump(chunks: list[bytes], eof: bool = True, **limits: int) -> list:
    """All events for `chunks` (then EOF unless `eof` is off), Data merged per
    message, cycles restarted; a ProtocolError propagates."""
    reader = RequestReader(**limits)
    events: list = []
    for chunk in [*chunks, None]:
        if chunk is None:
            if not eof:
                break
            reader.feed_eof()
        else:
            reader.feed(chunk)
        while True:
            event = reader.next_event()
            if event is NeedData:
                break
            if event is Paused:
                reader.start_next_cycle()
                continue
            if type(event) is Data and events and type(events[-1]) is Data:
                events[-1] = Data(events[-1].data + event.data)
            else:
                events.append(event)
            if type(event) is ConnectionClosed:
                return events
    return events


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]
