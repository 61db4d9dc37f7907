"""The read side: the projector that writes every event into ClickHouse, the tables' migrations,
the service that owns a chdb directory, replay, and the queries behind the CLI and dashboard."""
