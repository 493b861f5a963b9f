"""Benchmarks for brubeck and brubeck-service, each run side by side with its baselines (issue 5).

`bench/run` is the one command: it starts every server and client as a separate process, measures, and
compares each figure with a baseline measured in the same run (raw zmq.green, zerorpc, a raw Mongrel2
handler). Benchmarks print figures; they never assert a time.

The layout follows the request path of a run: `payload` (what is sent) -> `servers` and `clients` (the
processes) -> `procs` and `httpload` (starting them, driving wrk) -> `cases` (what is compared with what)
-> `stats` and `report` (medians, ratios, table, JSON, PNG) -> `run` (the command line). `hotpath` times
the library's per-call steps in-process, without sockets, to say where the time goes. The many-workers
benchmarks (7-10) are `workers`, with their own worker app (`worker_app`) and client (`worker_clients`).
"""
