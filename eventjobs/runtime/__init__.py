"""The services that run jobs: the lifecycle processor, the timer service, the worker and the
schedule service. Each reads records, asks `eventjobs.core` what they mean and writes what it
decides (through `eventjobs.log`)."""
