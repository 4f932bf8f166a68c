"""The jobs behind the commands and the Python API: resolve inputs, build plugins through the
registry, run the engine, write results. Front-end free: each takes a `Context` (store,
registry, reporter, device) and reports through its reporter. One module per job."""
