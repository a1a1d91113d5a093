"""Secrets never printed: URL userinfo, query values and storage option values are redacted in
every storage error, against a real S3 API (moto on 127.0.0.1)."""

from __future__ import annotations

import sys

import pytest
from fsspec.registry import _registry as fsspec_registry

from pusa_batch.errors import StoreError
from pusa_batch.store.io import redact_text, secrets_of
from pusa_batch.store.store import Store

USER, PASSWORD, SIGNATURE = "AKIDUSERINFO7", "PASSWORDINURL9", "SIGNEDQUERYVALUE3"
OPTION_SECRET = "OPTIONSECRETVALUE5"


def test_text_loses_url_credentials_query_values_and_given_secrets():
    text = f"failed s3://{USER}:{PASSWORD}@b/run?X-Amz-Signature={SIGNATURE} with {OPTION_SECRET}"
    clean = redact_text(text, [OPTION_SECRET])
    assert clean == "failed s3://***@b/run?X-Amz-Signature=*** with ***"


def test_the_secrets_of_a_root_are_its_userinfo_and_every_string_option():
    options = {"secret": OPTION_SECRET, "client_kwargs": {"aws_session_token": "TOKENVALUE"}}
    found = secrets_of(f"s3://{USER}:{PASSWORD}@bucket/run", options)
    assert {USER, PASSWORD, OPTION_SECRET, "TOKENVALUE"} <= set(found)


@pytest.mark.parametrize(
    "url",
    [
        f"s3://bucket/run?{SIGNATURE}",  # a bare query, no `=`
        f"s3://bucket/run#token={SIGNATURE}/lease.json",  # a fragment, with a key appended
        f"s3://bucket/run?a=1&{SIGNATURE}",
    ],
)
def test_a_bare_query_or_a_fragment_is_redacted_whole(url):
    assert SIGNATURE not in redact_text(f"Error: {url}: failed")


def test_percent_encoded_userinfo_is_a_secret_in_either_spelling():
    url = f"s3://{USER}:PASS%58WORD9@bucket/run"
    text = f'Invalid bucket name "{USER}:PASS%58WORD9@bucket" (PASSXWORD9)'
    clean = redact_text(text, secrets_of(url, {}))
    assert "PASS%58WORD9" not in clean and "PASSXWORD9" not in clean and USER not in clean


def test_a_missing_bucket_is_named_as_the_cause_without_the_option_secrets(s3):
    options = {**s3.storage_options, "secret": OPTION_SECRET}
    store = Store(f"s3://no-such-bucket-here/run?X-Amz-Signature={SIGNATURE}", options)
    with pytest.raises(StoreError) as failed:
        store.acquire_lease({"command": "run"})
    message = str(failed.value)
    assert "bucket does not exist" in message
    assert OPTION_SECRET not in message and SIGNATURE not in message
    assert failed.value.__suppress_context__  # no chained traceback from botocore


def test_url_credentials_never_reach_a_storage_error(s3):
    store = Store(f"s3://{USER}:{PASSWORD}@pusa-test/run", s3.storage_options)
    with pytest.raises(StoreError) as failed:
        store.acquire_lease({"command": "run"})
    assert USER not in str(failed.value) and PASSWORD not in str(failed.value)


def test_bad_storage_options_are_named_without_their_values(s3):
    client = {**s3.storage_options["client_kwargs"], "no_such_option": OPTION_SECRET}
    store = Store("s3://pusa-test/run", {**s3.storage_options, "client_kwargs": client})
    with pytest.raises(StoreError, match="storage option") as failed:
        store.acquire_lease({"command": "run"})
    assert OPTION_SECRET not in str(failed.value)


def test_a_url_whose_filesystem_is_not_installed_names_the_package_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # `import gcsfs` fails, as if not installed
    for protocol in ("gs", "gcs"):  # and fsspec has not registered it yet
        monkeypatch.delitem(fsspec_registry, protocol, raising=False)
    with pytest.raises(StoreError, match=r"needs gcsfs: pip install gcsfs \(or the \[gcs\] extra"):
        Store("gs://bucket/run")
