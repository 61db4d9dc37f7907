"""The job partition rule: which partition of the event log holds a job's events.

Why this module exists: all events of a job must be on one partition, in order, because the
processor that owns that partition is the only one that knows the job (its state, its timers and
its changelog record are on the same partition number of the co-partitioned topics). If each
writer let its client's partitioner choose, a job would be split as soon as two clients disagree:
librdkafka's default (``consistent_random``, CRC32) and sarama's (FNV-1a) do not pick what the
Java client and aiokafka pick (murmur2). So eventjobs computes the partition itself, with one
rule, and every eventjobs writer names it explicitly:

    job_partition(job_id, n) = (murmur2(utf8(job_id)) & 0x7fffffff) % n

which is the Java client's default partitioner for the key ``job_id``, so a Java producer with
default settings already follows it. Producers in other languages compute it (docs/producers.md);
an event that arrives on another partition is moved to its job's by the processor.

Pure and deterministic (no I/O); ``eventjobs.kafka.clients`` re-exports these functions.
"""

from __future__ import annotations

import struct

__all__ = ["job_partition", "key_partition", "murmur2"]

_words = struct.Struct("<I").iter_unpack


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``) as an unsigned 32-bit int.

    Seed ``0x9747b28c``, little-endian 32-bit words. The same result as
    ``aiokafka.partitioner.murmur2``, about 2.5 times faster (whole words instead of byte by byte):
    the processor hashes the id of every job it sees for the first time.
    """
    length = len(data)
    m = 0x5BD1E995
    h = 0x9747B28C ^ length
    whole = length & ~3
    for (k,) in _words(data[:whole]):
        k = (k * m) & 0xFFFFFFFF
        k = ((k ^ (k >> 24)) * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    extra = length - whole
    if extra:
        if extra >= 3:
            h ^= data[whole + 2] << 16
        if extra >= 2:
            h ^= data[whole + 1] << 8
        h = ((h ^ data[whole]) * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    return h ^ (h >> 15)


def key_partition(key: bytes, partition_count: int) -> int:
    """The partition the Java client's default partitioner picks for ``key``: murmur2 of the key
    bytes, its sign bit cleared, modulo the partition count (aiokafka's default does the same)."""
    return (murmur2(key) & 0x7FFFFFFF) % partition_count


def job_partition(job_id: str, partition_count: int) -> int:
    """The job partition rule: the one partition of the event log that holds every event of ``job_id``.

    ``(murmur2(utf8(job_id)) & 0x7fffffff) % partition_count``, the Java client's default for the
    key ``job_id``. Every eventjobs writer names this partition explicitly (the worker, ``App``,
    the timer service, the processor, the Faust bridge through ``App``), so no client's
    partitioner decides where a job's events go; the processor writes a job's state and timers
    to the same partition number of the co-partitioned changelog and timer topic.
    """
    if partition_count < 1:
        raise ValueError(f"a topic has at least one partition, got {partition_count}")
    return (murmur2(job_id.encode()) & 0x7FFFFFFF) % partition_count
