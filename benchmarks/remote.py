"""Question: how much does it cost to read the file from object storage instead of disk?

The fresh import of the same generated file (``generate.py``, all-new rows) from a local
file and from a local S3-protocol server (moto's standalone server, a subprocess on
127.0.0.1, reached through pyarrow's S3 client as in production: ranged GETs, a HEAD
after each), each into its own empty schema of the run's throwaway PostgreSQL. The runs
come in pairs whose order alternates (local, S3, S3, local, ...) so a shared machine's drift
spreads over both; the figure is S3 rows/s over local rows/s, each summed over its runs,
with the spread of the pairs' own ratios and the client CPU ratio (which the machine's
load hardly moves). Target: at least 0.9.

Needs moto (the dev extra: ``bin/test`` installs it in the same ``.venv``).

``python -m benchmarks.remote --rows 1000000 [--pairs 3] [--json results/X.json]``
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson

from benchmarks import generate
from benchmarks.harness import BenchServer, Result
from benchmarks.imports import import_once
from benchmarks.run import table

TARGET = 0.9
BUCKET = "bench"
# The AWS chain of the import: moto takes any credentials.
AWS_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


@contextmanager
def s3_server() -> Iterator[str]:
    """moto's S3 server on a free port; its endpoint URL."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                 "-p", str(port)], stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **AWS_ENV})
        try:
            deadline = time.monotonic() + 30
            while True:
                log.seek(0)
                if re.search(rb"Running on http://127\.0\.0\.1:%d" % port, log.read()):
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto's S3 server did not start (is moto installed?)")
                time.sleep(0.05)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(10)


def upload(endpoint: str, path: Path) -> str:
    """Put the file in the bucket as it is; its URI."""
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(access_key=AWS_ENV["AWS_ACCESS_KEY_ID"],
                           secret_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"], region="us-east-1",
                           scheme="http", endpoint_override=endpoint.removeprefix("http://"),
                           allow_bucket_creation=True)
    fs.create_dir(BUCKET)
    with open(path, "rb") as source, \
            fs.open_output_stream(f"{BUCKET}/{path.name}", compression=None) as sink:
        while chunk := source.read(8 << 20):
            sink.write(chunk)
    return f"s3://{BUCKET}/{path.name}"


def compare(server: BenchServer, data_dir: Path, rows: int,
            pairs: int = 2) -> tuple[list[Result], dict[str, float]]:
    """The runs and the ratios."""
    path = generate.ensure(data_dir, "new", rows)
    results: list[Result] = []
    with s3_server() as endpoint:
        uri = upload(endpoint, path)
        remote_env = {**AWS_ENV, "NODES_IMPORT_NODE_IMPORT_S3_ENDPOINT_OVERRIDE": endpoint,
                      "NODES_IMPORT_NODE_IMPORT_ALLOWED_URIS": f"[s3://{BUCKET}/]"}
        order = [w for n in range(pairs) for w in (("local", "s3") if n % 2 == 0
                                                   else ("s3", "local"))]
        for where in order:
            schema = server.new_schema(where)
            name = f"fresh import from {'the local S3 server' if where == 's3' else 'a local file'}"
            results.append(import_once(
                server, schema, path, name, rows, timeout_s=900,
                source=uri if where == "s3" else None,
                env_extra=remote_env if where == "s3" else None))
            server.drop_schema(schema)
    local = [r for r in results if "local file" in r.name]
    remote = [r for r in results if "S3" in r.name]
    if not all(r.ok for r in results):
        return results, {"ratio": 0.0}
    pair_ratios = [(r.rows / r.seconds) / (l_.rows / l_.seconds)
                   for l_, r in zip(local, remote, strict=True)]
    return results, {
        "ratio": round(sum(r.seconds for r in local) / sum(r.seconds for r in remote), 3),
        "pair_min": round(min(pair_ratios), 3), "pair_max": round(max(pair_ratios), 3),
        "client_cpu_ratio": round(sum(r.client_cpu_s or 0 for r in remote)
                                  / sum(r.client_cpu_s or 0 for r in local), 3)}


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--data-dir", type=Path, default=Path(
        os.environ.get("NODES_IMPORT_BENCH_DATA", "/tmp/nodes-import-bench")))
    parser.add_argument("--pairs", type=int, default=2, help="local/S3 pairs (default 2)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    with BenchServer() as server:
        results, ratios = compare(server, args.data_dir, args.rows, args.pairs)
    print(table(results))
    ratio = ratios["ratio"]
    cpu = 1 / ratios["client_cpu_ratio"] if ratios.get("client_cpu_ratio") else 0.0
    verdict = "meets" if ratio >= TARGET else "MISSES"
    print(f"\nS3 / local file, rows/s: {ratio:.3f} ({verdict} the target {TARGET}); pairs "
          f"{ratios.get('pair_min', 0):.3f}..{ratios.get('pair_max', 0):.3f}; client CPU, "
          f"local / S3: {cpu:.3f}")
    if args.json:
        args.json.write_bytes(orjson.dumps(
            {"question": "fresh import from S3 vs a local file", "rows": args.rows,
             **ratios, "target": TARGET, "load_avg_end": os.getloadavg(),
             "results": [r.as_dict() for r in results]}, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
