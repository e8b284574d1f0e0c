"""What the benchmarks share; each bench/*.py script is a driver on top of these.

- mails.py            the test mail: German inquiries, small and 200 KB, and the seed inquiry
- loadclient.py       the SMTP and HTTP load clients, each in a process of its own
- measure.py          a load client against a running server, turned into a figure
- baselines.py        the do-nothing servers and loops every figure is printed beside
- gateway_process.py  the real gateway in a child process, driven over its pipe
- gateway_calls.py    every use of `gateway.*` by the benchmarks (rewrite here when modules move)
- procs.py            child processes, deadlines, cores, CPU from /proc, throwaway databases, smtp-sink
- profiling.py        smtp_ingest --profile inside the gateway: thread CPU, timed functions, stacks
- report.py           percentiles, ratios, verdicts, tables
"""
