"""A real Faust app for the compatibility test: relays raw records from one topic to another.

Configured by environment so the test can give it the session broker and unique topic names:
FAUST_RELAY_BROKER, FAUST_RELAY_IN, FAUST_RELAY_OUT, FAUST_RELAY_ID.
"""

import os

import faust

app = faust.App(
    os.environ["FAUST_RELAY_ID"],
    broker=f"kafka://{os.environ['FAUST_RELAY_BROKER']}",
    store="memory://",
    web_enabled=False,
    topic_replication_factor=1,
    topic_partitions=1,
)
source = app.topic(os.environ["FAUST_RELAY_IN"], value_serializer="raw", key_serializer="raw")
sink = app.topic(os.environ["FAUST_RELAY_OUT"], value_serializer="raw", key_serializer="raw")


@app.agent(source)
async def relay(stream):  # type: ignore[no-untyped-def]
    async for event in stream.events():
        await sink.send(key=event.key, value=b"relayed:" + event.value)
