"""`python -m eventjobs.cli`."""

from eventjobs.cli.main import main

main()
