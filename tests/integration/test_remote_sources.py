"""Remote sources against real servers: moto's S3 server through pyarrow's S3 client (and
the fault proxy in front of it), and a real HTTP server with ranges and injected faults.

Each test reads through the pipeline as the engine does (``Source`` -> ``CsvReader`` or
``IdFileReader``) and compares with what was stored: the exact rows, once each.
"""

from __future__ import annotations

import gzip
import logging
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from nodes_import.cli.sample import write_reference_ids, write_users
from nodes_import.config import RemoteConfig
from nodes_import.errors import SourceChangedError, SourceError, SourceRefusedError
from nodes_import.pipeline import s3
from nodes_import.pipeline.parse import CsvReader, IdFileReader
from nodes_import.pipeline.remote import RemoteFile
from nodes_import.pipeline.source import Source
from tests.fixtures.faultproxy import FaultProxy
from tests.fixtures.fileserver import FileServer
from tests.fixtures.s3 import Bucket, S3Server, remote_config

GiB = 1 << 30


def _source(uri: str, remote: RemoteConfig, *, max_file_bytes: int = GiB) -> Source:
    return Source(uri, allowed_roots=(), max_file_bytes=max_file_bytes,
                  max_decompressed_bytes=8 * GiB, remote=remote)


def _ids(source: Source, *, id_file: bool = False,
         arm: Callable[[], object] | None = None) -> list[str]:
    """Every reference_id the reader yields, in order (small read blocks: many reads).
    ``arm`` sets a fault once the header is read: for the read of the rows."""
    reader = (IdFileReader(source, block_size=1 << 16, batch_size=5000) if id_file else
              CsvReader(source, block_size=1 << 16, batch_size=5000))
    if arm is not None:
        arm()
    return [ref for batch in reader.batches()
            for ref in batch.table.column("reference_id").to_pylist()]


@pytest.fixture()
def users(tmp_path: Path) -> Path:
    """40,000 users, ~1.4 MB gzipped: a read of many fetches."""
    return write_users(tmp_path / "users.csv.gz", 40_000)


@pytest.fixture()
def local_ids(users: Path, tmp_path: Path) -> list[str]:
    return _ids(Source(str(users), allowed_roots=(str(tmp_path),), max_file_bytes=GiB,
                       max_decompressed_bytes=8 * GiB))


# -- S3 -------------------------------------------------------------------------------


def test_a_gzipped_csv_in_s3_reads_exactly_like_the_local_file(
        bucket: Bucket, s3_server: S3Server, users: Path, local_ids: list[str]) -> None:
    uri = bucket.put("in/users.csv.gz", users)
    source = _source(uri, remote_config(s3_server.endpoint, (f"s3://{bucket.name}/in/",)))
    assert source.info.gzip and source.info.size == users.stat().st_size
    assert _ids(source) == local_ids


def test_a_plain_csv_and_a_gzipped_id_file_in_s3_are_read_exactly(
        bucket: Bucket, s3_server: S3Server, tmp_path: Path) -> None:
    rows = ["reference_id,name"] + [f"r{n},name {n}" for n in range(30_000)]
    remote = remote_config(s3_server.endpoint, (f"s3://{bucket.name}/",))
    plain = _source(bucket.put("plain.csv", "\n".join(rows).encode()), remote)
    assert not plain.info.gzip
    assert _ids(plain) == [f"r{n}" for n in range(30_000)]
    ids = write_reference_ids(tmp_path / "ids.txt.gz", 50_000)
    expected = gzip.decompress(ids.read_bytes()).decode().split()
    assert _ids(_source(bucket.put("ids.txt.gz", ids), remote), id_file=True) == expected


def test_a_connection_reset_in_the_middle_of_an_s3_object_resumes_and_reads_exactly(
        bucket: Bucket, s3_server: S3Server, s3_proxy: FaultProxy, users: Path,
        local_ids: list[str], caplog: pytest.LogCaptureFixture) -> None:
    uri = bucket.put("users.csv.gz", users)
    source = _source(uri, remote_config(f"http://127.0.0.1:{s3_proxy.port}",
                                        (f"s3://{bucket.name}/",)))
    with caplog.at_level(logging.WARNING, logger="nodes_import.pipeline.remote"):
        assert _ids(source, arm=lambda: s3_proxy.cut_download_after(
            users.stat().st_size // 2)) == local_ids
    assert s3_proxy.connections_cut == 1
    resumed = [r for r in caplog.records if r.message == "remote read interrupted; resuming"]
    assert len(resumed) == 1
    assert "NETWORK_CONNECTION" in resumed[0].fields["error"]  # type: ignore[attr-defined]


def test_a_stalled_s3_read_times_out_and_resumes_at_the_offset_it_reached(
        bucket: Bucket, s3_server: S3Server, s3_proxy: FaultProxy, users: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    uri = bucket.put("users.csv.gz", users)
    remote = remote_config(f"http://127.0.0.1:{s3_proxy.port}", (f"s3://{bucket.name}/",),
                           read_timeout_ms=500)
    stream = RemoteFile(uri, remote, max_bytes=GiB).open()  # the stored bytes
    first = stream.read(1000)  # the first fetch, 64 KiB
    s3_proxy.stall()
    threading.Timer(1.2, s3_proxy.stall, kwargs={"on": False}).start()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="nodes_import.pipeline.remote"):
        rest = stream.read(-1)
    assert time.monotonic() - started >= 1.0
    assert stream.resumes == 1
    offsets = {r.fields["offset"] for r in caplog.records  # type: ignore[attr-defined]
               if r.message == "remote read interrupted; resuming"}
    assert offsets == {64 << 10}  # after the first fetch, never from the start
    stream.close()
    assert first + rest == users.read_bytes()


def test_an_s3_object_replaced_in_the_middle_of_a_read_fails_clearly(
        bucket: Bucket, s3_server: S3Server, s3_proxy: FaultProxy, users: Path,
        tmp_path: Path) -> None:
    uri = bucket.put("users.csv.gz", users)
    other = write_users(tmp_path / "other.csv.gz", 40_000, seed=7)
    source = _source(uri, remote_config(f"http://127.0.0.1:{s3_proxy.port}",
                                        (f"s3://{bucket.name}/",)))
    with pytest.raises(SourceChangedError, match="was replaced while it was read") as caught:
        _ids(source, arm=lambda: s3_proxy.cut_download_after(
            users.stat().st_size // 2, before_cut=lambda: bucket.put("users.csv.gz", other)))
    assert f"s3://{bucket.name}/users.csv.gz" in str(caught.value)


def test_an_s3_object_replaced_between_two_fetches_is_seen_without_any_fault(
        bucket: Bucket, s3_server: S3Server, users: Path, tmp_path: Path) -> None:
    uri = bucket.put("users.csv.gz", users)
    stream = RemoteFile(uri, remote_config(s3_server.endpoint, (f"s3://{bucket.name}/",)),
                        max_bytes=GiB).open()
    stream.read(1000)  # the first fetch (64 KiB) is in
    bucket.put("users.csv.gz", write_users(tmp_path / "o.csv.gz", 40_000, seed=7))
    with pytest.raises(SourceChangedError):
        while stream.read(1 << 20):
            pass


def test_a_missing_object_or_bucket_is_a_clear_error_at_once(
        bucket: Bucket, s3_server: S3Server) -> None:
    remote = remote_config(s3_server.endpoint, (f"s3://{bucket.name}/", "s3://no-such-bucket-x1/"),
                           max_retries=50,
                           retry_interval_ms=1000)
    started = time.monotonic()
    with pytest.raises(SourceError, match=f"no such file: s3://{bucket.name}/nope.csv"):
        _source(f"s3://{bucket.name}/nope.csv", remote)
    with pytest.raises(SourceError, match=r"no such file: s3://no-such-bucket-x1/u\.csv"):
        _source("s3://no-such-bucket-x1/u.csv", remote)
    assert time.monotonic() - started < 5  # not retried


def test_an_unreachable_store_fails_once_the_retries_are_spent(
        bucket: Bucket, s3_server: S3Server, s3_proxy: FaultProxy, users: Path) -> None:
    uri = bucket.put("users.csv.gz", users)
    stream = RemoteFile(uri, remote_config(f"http://127.0.0.1:{s3_proxy.port}",
                                           (f"s3://{bucket.name}/",), max_retries=2),
                        max_bytes=GiB).open()
    stream.read(1000)
    s3_proxy.refuse_for(60)
    with pytest.raises(SourceError, match=r"2 retries in a row failed: "
                                          r"node.import.remote.max-retries"):
        while stream.read(1 << 20):
            pass


def test_a_refused_s3_uri_makes_no_request(s3_server: S3Server, s3_proxy: FaultProxy,
                                           s3_env: dict[str, str]) -> None:
    remote = remote_config(f"http://127.0.0.1:{s3_proxy.port}", ("s3://allowed/",))
    with pytest.raises(SourceRefusedError, match=r"not under node\.import\.allowed-uris"):
        _source("s3://other/secret.csv", remote)
    assert s3_proxy.connections_accepted == 0


def test_an_upload_past_one_part_is_a_multipart_upload_read_back_exactly(
        bucket: Bucket, s3_server: S3Server, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * (48 << 10) + b"tail")  # 12 MiB + 4 bytes
    remote = remote_config(s3_server.endpoint, (f"s3://{bucket.name}/",))
    uri = s3.upload_uri(f"s3://{bucket.name}/uploads", "job-1", big)
    assert uri == f"s3://{bucket.name}/uploads/job-1/big.bin"
    assert s3.upload(big, uri, remote) == big.stat().st_size
    assert bucket.get("uploads/job-1/big.bin") == big.read_bytes()
    assert bucket.etag("uploads/job-1/big.bin").endswith('-2"')  # two parts


def test_an_uploaded_gzip_file_is_stored_as_it_is(bucket: Bucket, s3_server: S3Server,
                                                   users: Path) -> None:
    uri = f"s3://{bucket.name}/u/users.csv.gz"
    s3.upload(users, uri, remote_config(s3_server.endpoint, ()))
    assert bucket.get("u/users.csv.gz") == users.read_bytes()  # not compressed again


# -- HTTP -----------------------------------------------------------------------------


@contextmanager
def _started(tls: tuple[Path, Path] | None = None) -> Iterator[FileServer]:
    server = FileServer(tls=tls).start()
    try:
        yield server
    finally:
        server.close()


def _http(server: FileServer, **settings: object) -> RemoteConfig:
    values: dict[str, object] = {"retry_interval_ms": 20, "connect_timeout_ms": 2000,
                                 "read_timeout_ms": 5000, **settings}
    return RemoteConfig(allowed_uris=(server.url("files/"),), **values)  # type: ignore[arg-type]


def test_a_file_over_http_reads_exactly_with_one_request_per_open(
        file_server: FileServer, users: Path, local_ids: list[str]) -> None:
    url = file_server.put("files/users.csv.gz", users.read_bytes())
    source = _source(url + "?X-Amz-Signature=f00d", _http(file_server))
    assert source.info.size == users.stat().st_size and source.info.gzip
    assert _ids(source) == local_ids
    assert [h["Range"] for _, h in file_server.requests] == ["bytes=0-0"] + ["bytes=0-"] * 3
    # the first request (size, identity), the magic bytes, the header, the rows
    assert len(file_server.requests) == 4


def test_a_connection_reset_in_the_middle_resumes_with_a_range_checked_by_its_etag(
        file_server: FileServer, users: Path, local_ids: list[str]) -> None:
    url = file_server.put("files/users.csv.gz", users.read_bytes())
    source = _source(url, _http(file_server))
    middle = users.stat().st_size // 2
    assert _ids(source, arm=lambda: file_server.arm(reset_after=middle)) == local_ids
    assert file_server.resets == 1
    resumed = [h for _, h in file_server.requests if h["Range"] not in ("bytes=0-", "bytes=0-0")]
    assert len(resumed) == 1
    assert int(resumed[0]["Range"].removeprefix("bytes=").rstrip("-")) <= middle
    assert resumed[0]["If-Match"] == file_server.files["/files/users.csv.gz"].etag


def test_a_file_replaced_in_the_middle_of_a_read_fails_clearly(
        file_server: FileServer, users: Path, tmp_path: Path) -> None:
    url = file_server.put("files/users.csv.gz", users.read_bytes())
    source = _source(url, _http(file_server))
    other = write_users(tmp_path / "o.csv.gz", 40_000, seed=7).read_bytes()
    with pytest.raises(SourceChangedError, match=r"replaced while it was read .*HTTP 412"):
        _ids(source, arm=lambda: file_server.arm(
            replace=("/files/users.csv.gz", users.stat().st_size // 2, other)))


def test_without_validators_a_file_is_read_but_never_resumed(
        file_server: FileServer, users: Path, local_ids: list[str]) -> None:
    file_server.faults.validators = False
    url = file_server.put("files/users.csv.gz", users.read_bytes())
    assert _ids(_source(url, _http(file_server))) == local_ids
    with pytest.raises(SourceError, match="neither an ETag nor a Last-Modified"):
        _ids(_source(url, _http(file_server)),
             arm=lambda: file_server.arm(reset_after=users.stat().st_size // 2))


def test_a_server_without_ranges_is_read_but_never_resumed(
        file_server: FileServer, users: Path, local_ids: list[str]) -> None:
    file_server.faults.ranges = False
    url = file_server.put("files/users.csv.gz", users.read_bytes())
    assert _ids(_source(url, _http(file_server))) == local_ids
    with pytest.raises(SourceError, match="does not serve byte ranges"):
        _ids(_source(url, _http(file_server)),
             arm=lambda: file_server.arm(reset_after=users.stat().st_size // 2))


@pytest.mark.parametrize(("status", "reason"), [
    (404, "HTTP 404 Not Found"), (403, "HTTP 403 Forbidden"), (410, "HTTP 410 Gone"),
    (401, "HTTP 401 Unauthorized")])
def test_a_missing_or_forbidden_file_is_a_clear_error_asked_once(
        file_server: FileServer, status: int, reason: str) -> None:
    file_server.faults.statuses = [status]
    with pytest.raises(SourceError, match=reason):
        _source(file_server.url("files/u.csv?sig=s3cret"), _http(file_server))
    assert len(file_server.requests) == 1


def test_server_errors_are_retried_within_the_budget(
        file_server: FileServer, users: Path, local_ids: list[str]) -> None:
    url = file_server.put("files/users.csv.gz", users.read_bytes())
    file_server.faults.statuses = [503, 429, 500]
    assert _ids(_source(url, _http(file_server, max_retries=3))) == local_ids
    file_server.faults.statuses = [503] * 3
    with pytest.raises(SourceError, match=r"HTTP 503 .*2 retries in a row failed"):
        _source(url, _http(file_server, max_retries=2))


def test_a_redirect_is_followed_only_into_the_allow_list(
        file_server: FileServer, users: Path, local_ids: list[str]) -> None:
    file_server.put("files/users.csv.gz", users.read_bytes())
    url = file_server.redirect("files/old.csv.gz", "/files/users.csv.gz")
    assert _ids(_source(url, _http(file_server))) == local_ids
    with _started() as elsewhere:
        elsewhere.put("secret.csv", b"reference_id\nx\n")
        hop = file_server.redirect("files/away.csv", elsewhere.url("secret.csv"))
        with pytest.raises(SourceRefusedError, match="refused to follow a redirect to"):
            _source(hop, _http(file_server))
        assert elsewhere.requests == []


def test_a_uri_outside_the_allow_list_is_refused_before_any_request(
        file_server: FileServer) -> None:
    file_server.put("private/u.csv", b"reference_id\nx\n")
    with pytest.raises(SourceRefusedError, match=r"not under node\.import\.allowed-uris"):
        _source(file_server.url("private/u.csv"), _http(file_server))
    assert file_server.requests == []


def test_a_file_over_the_size_limit_is_refused_from_its_content_length(
        file_server: FileServer, users: Path) -> None:
    url = file_server.put("files/users.csv.gz", users.read_bytes())
    with pytest.raises(SourceError, match=r"over node\.import\.max-file-bytes"):
        _source(url, _http(file_server), max_file_bytes=100_000)
    assert len(file_server.requests) == 1  # the first request's headers only


def test_https_is_verified_against_the_trusted_certificates(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    with _started(tls=(cert, key)) as server:
        server.put("files/u.csv", b"reference_id\nr1\nr2\n")
        url = server.url("files/u.csv")
        remote = RemoteConfig(allowed_uris=(server.url("files/"),), max_retries=1,
                              retry_interval_ms=10)
        with pytest.raises(SourceError, match=r"certificate verify failed|self.signed"):
            _source(url, remote)
        assert len(server.requests) == 0  # refused in the handshake, not retried
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        assert _ids(_source(url, remote)) == ["r1", "r2"]
