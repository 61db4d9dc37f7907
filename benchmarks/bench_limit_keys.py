"""What the dashboard's Limits table costs: `queries.limit_keys` over many slot events, on chdb.

Writes synthetic slot events straight into `job_events` of a fresh chdb directory: `--requests`
requests over `--keys` keys, every request granted and released but the last 5 per key (2 hold
a slot, 3 wait), and a `jobs` row per requester (1 % of the keys' jobs in queue `default`). Then
times `limit_keys` (best of 3), over every key and for one queue.

    python benchmarks/bench_limit_keys.py --requests 250000 --keys 1000
"""

from __future__ import annotations

import argparse
import tempfile
import time

from eventjobs.clickhouse import ChdbBackend
from eventjobs.readside import queries
from eventjobs.readside.migrations import apply_migrations, default_projections_dir

COLUMNS = "event_id, job_id, type, occurred_at, causation_id, payload, log_partition, log_offset"
START = "toDateTime64('2026-01-01 00:00:00', 3, 'UTC') + number"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=250_000)
    parser.add_argument("--keys", type=int, default=1000)
    options = parser.parse_args()
    n, keys = options.requests, options.keys
    backend = ChdbBackend(tempfile.mkdtemp(prefix="bench-limit-keys-"), "bench", role="bench")
    backend.command("CREATE DATABASE IF NOT EXISTS bench", database="")
    apply_migrations(backend, default_projections_dir())
    payload = ("concat('{\"requester_id\":\"job-', toString(number), '\",\"attempt\":0,\"limit\":\"sync\","
               f"\"key\":\"k', toString(number % {keys}), '\",\"max\":2,\"strategy\":\"queue\"}}')")
    backend.command(f"INSERT INTO job_events ({COLUMNS}) SELECT concat('r', toString(number)), "
                    f"concat('owner-', toString(number % {keys})), 'slot_requested', {START}, '', {payload}, 0, number "
                    f"FROM numbers({n})")
    backend.command(f"INSERT INTO job_events ({COLUMNS}) SELECT concat('g', toString(number)), "
                    f"concat('job-', toString(number)), 'slot_granted', {START}, concat('r', toString(number)), '{{}}', "
                    f"1, number FROM numbers({n}) WHERE number < {n - 3 * keys}")
    backend.command(f"INSERT INTO job_events ({COLUMNS}) SELECT concat('x', toString(number)), "
                    f"concat('owner-', toString(number % {keys})), 'slot_released', {START}, concat('r', toString(number)), "
                    f"'{{}}', 2, number FROM numbers({n}) WHERE number < {n - 5 * keys}")
    backend.command(f"INSERT INTO jobs (job_id, queue) SELECT concat('job-', toString(number)), "
                    f"if(number % {keys} < {max(keys // 100, 1)}, 'default', 'other') FROM numbers({n})")
    backend.command("OPTIMIZE TABLE job_events FINAL")
    events = backend.query("SELECT count() FROM job_events").scalar()
    print(f"{events:,} slot events: {n:,} requests over {keys:,} keys")
    for queue in (None, "default"):
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            listed = queries.limit_keys(backend, queue=queue)
            best = min(best, time.perf_counter() - started)
        top = listed[0]
        print(f"queue {queue or '(all)'}: {len(listed)} keys listed, best of 3 {best:.3f} s; "
              f"busiest {top.key}: {top.in_use} in use of {top.max}, {top.waiting} waiting")
    backend.close()


if __name__ == "__main__":
    main()
