"""Images table → shards on Ray: config (the options), fetch (downloads and local reads), resize
(decode and store), writer (one tar and its Parquet slice), worker (the actor that builds shards),
pool (the Ray actor pool, resume checks, the manifest), retry (finished shards' transient failures
again) and build (the `shards build` job). Nothing is imported here: each actor imports only the
worker's modules (`from shards import BuildConfig, build_shards` for the public names)."""
