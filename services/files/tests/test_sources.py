"""Unit tests of what the files service may ingest from (no storage: the decision is the URL's)."""
import pytest

from shared.config import Settings
from shared.exceptions import Forbidden, InvalidParameter
from services.files.claims import Claim, MARKER_MIN_SECONDS
from services.files.sources import Area, IngestSources


def sources(value="", **settings):
    return IngestSources.from_settings(Settings.from_config({"DSS_INGEST_SOURCES": value, **settings}, environ={}))


def test_by_default_the_staging_bucket_of_each_replica_is_the_only_source():
    allowed = sources(DSS_S3_STAGING_BUCKET="up-s3", DSS_GS_STAGING_BUCKET="up-gs")
    assert allowed.check("s3://up-s3/a/b.bin") == ("aws", "up-s3", "a/b.bin")
    assert allowed.check("gs://up-gs/k") == ("gcp", "up-gs", "k")
    for refused in ("s3://up-gs/k", "gs://up-s3/k", "s3://dss-main/files/x", "gs://dss-main/blobs/x",
                    "s3://dss-checkout/blobs/x"):
        with pytest.raises(Forbidden, match="^source_not_allowed: "):
            allowed.check(refused)


def test_buckets_match_exactly_and_prefixes_on_whole_segments():
    allowed = sources("s3://dss-staging, gs://uploads/incoming/")
    assert allowed.check("s3://dss-staging/x")[1] == "dss-staging"
    assert allowed.check("gs://uploads/incoming/a/b")[2] == "incoming/a/b"
    for refused in ("s3://dss-staging-evil/x", "s3://dss-stagin/x", "s3://DSS-STAGING/x", "gs://dss-staging/x",
                    "s3://dss-staging@dss-main/x", "s3://dss-main:dss-staging/x", "s3://dss-main/dss-staging/x",
                    "gs://uploads/incoming-evil/x", "gs://uploads/incomingx", "gs://uploads/incoming/",
                    "gs://uploads/other/incoming/x", "s3://uploads/incoming/x"):
        with pytest.raises(Forbidden, match="^source_not_allowed: "):
            allowed.check(refused)


@pytest.mark.parametrize("key", ["../dss-main/files/x", "a/../../dss-main/x", "./x", "a/./b", "a/..",
                                 "%2e%2e/dss-main/x", "a/%2E%2E/b", "a%2f..%2fb", "..\\dss-main\\x"])
def test_dot_segments_raw_or_encoded_are_refused(key):
    with pytest.raises(Forbidden, match="^source_not_allowed: "):
        sources().check(f"s3://dss-staging/{key}")


def test_the_refusal_does_not_depend_on_the_url():
    titles = set()
    for url in ("s3://dss-main/files/a", "s3://dss-main/does/not/exist", "gs://elsewhere/x"):
        with pytest.raises(Forbidden, match="^source_not_allowed: ") as refused:
            sources().check(url)
        assert refused.value.error_code == "source_not_allowed" and refused.value.title
        titles.add(refused.value.title)
    assert len(titles) == 1 and "s3://dss-staging" in titles.pop()


def test_a_malformed_url_is_still_a_400():
    with pytest.raises(InvalidParameter, match="^unknown_source_scheme: "):
        sources().check("ftp://dss-staging/x")


@pytest.mark.parametrize("bad", ["dss-staging", "http://dss-staging", "s3://", "s3://Bad_Bucket!", "s3://b/../x",
                                 "s3://b/a//c", "s3://user@b"])
def test_malformed_areas_stop_the_service(bad):
    with pytest.raises(ValueError):
        sources(bad)


def test_an_area_in_a_main_or_checkout_bucket_stops_the_service():
    for own in ("s3://dss-main", "gs://dss-checkout/blobs"):
        with pytest.raises(ValueError):
            sources(f"s3://dss-staging,{own}")


def test_areas_print_as_they_are_matched():
    assert str(Area.parse("s3://b/p/q/")) == "s3://b/p/q/" and str(Area.parse("gs://b")) == "gs://b"


def test_claims_round_trip_and_lapse():
    claim = Claim.new("task", {"size": 3, "creator_uid": 1}, 20 * 1024 * 1024, now=1000.0)
    assert claim.deadline == 1000.0 + MARKER_MIN_SECONDS + 1
    assert Claim.decode(claim.encode(now=1000.0)) == claim
    assert claim.live(claim.deadline - 1) and not claim.live(claim.deadline)
    for garbage in (b"", b"[]", b"{}", b'{"task_id": "t", "file": {}, "deadline": "soon"}'):
        assert Claim.decode(garbage) is None
