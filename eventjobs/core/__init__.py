"""The functional core of eventjobs: events, options, outcomes, job state and ``apply``.

Nothing in this package does I/O or reads the clock (except ``new_event_id``/``SystemClock``,
used by the shell): time arrives inside events, so the same events give the same state in any
process, at any time. The Kafka/ClickHouse shell reads events, calls ``apply``, writes events.
"""
