"""A worker process: `python -m pylb.workerproc FD`, started by pylb.workers.WorkerPool
with its stream to the controller as descriptor FD (a module of its own so that the
worker's code runs as `pylb.workers`, not as a second copy named `__main__`)."""

import sys

from pylb.workers import process_main

process_main(sys.argv[1:])
