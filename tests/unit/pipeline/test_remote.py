"""Remote sources without a server: the allow-list, redaction, identities, the settings."""

from __future__ import annotations

import pytest

from nodes_import import config
from nodes_import.errors import SourceRefusedError
from nodes_import.jobs import ImportJob
from nodes_import.pipeline.remote import Identity, check_allowed_uri
from nodes_import.pipeline.source import Source
from nodes_import.redact import redact_uri

ALLOWED = ("s3://imports/incoming/", "https://files.example.com/exports/",
           "http://127.0.0.1:8080/dev/")


def test_no_remote_source_is_allowed_until_configured() -> None:
    with pytest.raises(SourceRefusedError, match="no remote source is allowed"):
        check_allowed_uri("s3://imports/incoming/u.csv.gz", ())
    assert config.load(environ={}).imports.remote.allowed_uris == ()
    with pytest.raises(SourceRefusedError, match="allowed-uris is empty"):
        Source("https://files.example.com/exports/u.csv", allowed_roots=("/",),
               max_file_bytes=1 << 30, max_decompressed_bytes=1 << 30)


@pytest.mark.parametrize("uri", [
    "s3://imports/incoming/u.csv.gz",
    "s3://imports/incoming/2026/12/u.csv.gz",
    "https://files.example.com/exports/u.csv.gz?X-Amz-Signature=abc&X-Amz-Expires=60",
    "https://FILES.example.com:443/exports/u.csv.gz",
    "HTTPS://files.example.com/exports/u.csv.gz",
    "http://127.0.0.1:8080/dev/u.csv",
])
def test_a_uri_under_an_allowed_prefix_is_allowed(uri: str) -> None:
    check_allowed_uri(uri, ALLOWED)


@pytest.mark.parametrize("uri", [
    "s3://imports/other/u.csv.gz",  # another prefix of the same bucket
    "s3://imports-other/incoming/u.csv.gz",  # another bucket that starts alike
    "s3://other/incoming/u.csv.gz",
    "https://files.example.com.evil.test/exports/u.csv.gz",  # a host that starts alike
    "https://files.example.com:8443/exports/u.csv.gz",  # another port
    "http://files.example.com/exports/u.csv.gz",  # http is not https
    "https://127.0.0.1:8080/dev/u.csv",  # nor the other way round
    "http://127.0.0.1:8081/dev/u.csv",
    "http://169.254.169.254/latest/meta-data/",  # what a message must never make us fetch
    "gs://imports/incoming/u.csv.gz",  # another scheme
])
def test_a_uri_outside_every_prefix_is_refused(uri: str) -> None:
    with pytest.raises(SourceRefusedError, match=r"not under node\.import\.allowed-uris"):
        check_allowed_uri(uri, ALLOWED)


@pytest.mark.parametrize(("uri", "reason"), [
    ("https://files.example.com/exports/../admin/u.csv", "'..' in the path"),
    ("https://files.example.com/exports/%2e%2e/admin/u.csv", "'..' in the path"),
    ("https://files.example.com/exports/..%2Fadmin/u.csv", "'..' in the path"),
    ("s3://imports/incoming/./u.csv.gz", "'.' or '..'"),
    ("https://user:pw@files.example.com/exports/u.csv", "credentials in a URI"),
    ("https://files.example.com@evil.test/exports/u.csv", "credentials in a URI"),
    ("https://files.example.com\\@evil.test/exports/u.csv", "backslash"),
    ("https://files.example.com/exports/u .csv", "whitespace"),
    ("https://files.example.com/exports/u.csv\r\nX-Injected: 1", "control character"),
    ("https:///exports/u.csv", "no host"),
    ("https://files.example.com:99999/exports/u.csv", "not a valid URI"),
])
def test_a_uri_that_could_escape_its_prefix_is_refused(uri: str, reason: str) -> None:
    with pytest.raises(SourceRefusedError, match=reason):
        check_allowed_uri(uri, ALLOWED)


def test_a_prefix_that_is_not_a_uri_never_matches() -> None:
    with pytest.raises(SourceRefusedError, match="not under"):
        check_allowed_uri("s3://imports/incoming/u.csv.gz", ("/tmp/", "imports/incoming/"))


def test_an_s3_uri_with_a_query_string_is_refused() -> None:
    # pyarrow reads options such as endpoint_override from an s3:// URI's query
    remote = config.RemoteConfig(allowed_uris=("s3://imports/",))
    with pytest.raises(SourceRefusedError, match="takes no query string"):
        Source("s3://imports/u.csv?endpoint_override=127.0.0.1:9", allowed_roots=(),
               max_file_bytes=1 << 30, max_decompressed_bytes=1 << 30, remote=remote)


@pytest.mark.parametrize(("uri", "shown"), [
    (("https://h.example/p/u.csv?X-Amz-Credential=AKIA%2F&X-Amz-Signature=f00d&"
      "X-Amz-Security-Token=tok"), "https://h.example/p/u.csv?***"),
    ("https://user:secret@h.example/p/u.csv", "https://***@h.example/p/u.csv"),
    ("s3://bucket/key.csv.gz", "s3://bucket/key.csv.gz"),
    ("/data/users?.csv", "/data/users?.csv"),
    ("file:///data/u.csv", "file:///data/u.csv"),
])
def test_a_uri_is_shown_without_its_secrets(uri: str, shown: str) -> None:
    assert redact_uri(uri) == shown


def test_the_job_row_records_a_presigned_url_without_its_signature() -> None:
    job = ImportJob("j", "g", "d", source="https://h.example/u.csv?X-Amz-Signature=f00d")
    assert job.source_label == "https://h.example/u.csv?***"
    assert ImportJob("j", "g", "d", reference_ids_file="s3://b/ids").source_label == \
        "reference-ids"


def test_a_refusal_never_shows_the_signature() -> None:
    with pytest.raises(SourceRefusedError) as caught:
        check_allowed_uri("https://other.example/u.csv?X-Amz-Signature=f00d", ALLOWED)
    assert "f00d" not in str(caught.value)


def test_identities_compare_on_the_validator_both_sides_have() -> None:
    etag = Identity.of('"abc"', "Mon, 01 Dec 2026 10:00:00 GMT")
    assert etag.same_as(Identity.of('"abc"', "Tue, 02 Dec 2026 10:00:00 GMT"))
    assert not etag.same_as(Identity.of('"abd"', "Mon, 01 Dec 2026 10:00:00 GMT"))
    weak = Identity.of('W/"abc"', "Mon, 01 Dec 2026 10:00:00 GMT")
    assert weak.etag is None and weak.same_as(etag)
    assert not Identity.of('"abc"', None).same_as(Identity())
    assert not Identity().known


def test_allowed_uris_come_from_the_environment_as_a_yaml_list() -> None:
    cfg = config.load(environ={
        "NODES_IMPORT_NODE_IMPORT_ALLOWED_URIS": "[s3://b/in/, 'https://h.example:8443/p/']"})
    assert cfg.imports.remote.allowed_uris == ("s3://b/in/", "https://h.example:8443/p/")
    paths = config.load(environ={"NODES_IMPORT_NODE_IMPORT_ALLOWED_ROOTS": "/a:/b"})
    assert paths.imports.allowed_roots[-2:] == ("/a", "/b")  # paths keep ':' as separator


def test_the_s3_endpoint_falls_back_to_the_aws_variables() -> None:
    s3 = config.load(environ={"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}).imports.remote.s3
    assert s3.endpoint_override == "http://127.0.0.1:9000"
    s3 = config.load(environ={"AWS_ENDPOINT_URL": "http://a:1", "AWS_ENDPOINT_URL_S3": "http://b:2",
                              "NODES_IMPORT_NODE_IMPORT_S3_ENDPOINT_OVERRIDE": "http://c:3"}
                     ).imports.remote.s3
    assert s3.endpoint_override == "http://c:3"
    assert config.load(environ={}).imports.remote.s3.endpoint_override is None
