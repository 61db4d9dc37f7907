"""The contract's generators: `docs/events.md` (`docgen`) and the JSON Schemas of `docs/schema/`
(`schemagen`), written from the core's models so that the documents cannot drift from the code."""
