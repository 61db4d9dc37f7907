"""The log's own room: what writes to and reads from the Kafka topics for the app and the
services, so that neither needs the other for it.

The per-loop writer with the size check (`writer`), the readers of the compacted topics
(`readers`), the changelog watcher behind `App.wait` (`state_watch`) and the accounting of
records nobody can use (`bad_records`).
"""
