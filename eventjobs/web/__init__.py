"""The web dashboard: pages over the ClickHouse projections, and operator actions that append events."""
