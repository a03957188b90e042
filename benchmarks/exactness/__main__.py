"""``python -m benchmarks.exactness``: run the benchmark from the command line."""

from .cli import main

main()
