"""The services that run jobs: the lifecycle processor, the timer service, the worker, and the
state watcher behind `App.wait`. Each reads records, asks `eventjobs.core` what they mean and
writes what it decides."""
