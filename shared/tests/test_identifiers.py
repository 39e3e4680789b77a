import pytest

from shared.config import Settings
from shared.exceptions import InvalidParameter
from shared.identifiers import (Keys, Replica, is_email_address, is_version, new_version, normalize_uuid, parse_version,
                                split_fqid)


def test_uuids_are_lower_cased_and_validated():
    assert normalize_uuid("2B1E6E0A-0C55-4B5E-8F0F-1A2B3C4D5E6F") == "2b1e6e0a-0c55-4b5e-8f0f-1a2b3c4d5e6f"
    # Nothing around it either: the API description's pattern is the whole rule.
    for bad in ("", "not-a-uuid", "2b1e6e0a0c554b5e8f0f1a2b3c4d5e6f", "2b1e6e0a-0c55-4b5e-8f0f-1a2b3c4d5e6g",
                " 2b1e6e0a-0c55-4b5e-8f0f-1a2b3c4d5e6f", "2b1e6e0a-0c55-4b5e-8f0f-1a2b3c4d5e6f\n"):
        with pytest.raises(InvalidParameter) as error:
            normalize_uuid(bad)
        assert error.value.error_code == "illegal_uuid"


def test_versions_must_round_trip_the_dss_format():
    assert is_version("2017-06-20T214506.766634Z")
    for bad in ("2017-06-20T214506Z", "2017-06-20T21:45:06.766634Z", "2017-13-20T214506.766634Z",
                "2017-06-20T214506.7666Z", "x",
                "1969-12-31T235959.999999Z"):  # before 1970: the search index could not order it
        with pytest.raises(InvalidParameter) as error:
            parse_version(bad)
        assert error.value.error_code == "illegal_version"
    assert is_version("1970-01-01T000000.000000Z")
    first, second = new_version(), new_version()
    assert is_version(first) and first <= second


def test_keys_and_fqids():
    uuid = "2b1e6e0a-0c55-4b5e-8f0f-1a2b3c4d5e6f"
    assert Keys.bundle_tombstone(uuid) == f"bundles/{uuid}.dead"
    assert Keys.bundle_tombstone(uuid, "v") == f"bundles/{uuid}.v.dead"
    assert split_fqid(f"{uuid.upper()}.2017-06-20T214506.766634Z") == (uuid, "2017-06-20T214506.766634Z")
    assert Replica.from_scheme("gs") is Replica.gcp and Replica.aws.other is Replica.gcp
    # a tombstone sorts after every version of the same uuid
    assert f"bundles/{uuid}.dead" > f"bundles/{uuid}.2099-01-01T000000.000000Z"


def test_settings_precedence_config_then_environment_then_default():
    settings = Settings.from_config({"DSS_S3_BUCKET": "from-config"},
                                    environ={"DSS_S3_BUCKET": "from-env", "DSS_GS_BUCKET": "gs-env",
                                             "DSS_ADMIN_EMAILS": "a@x.org, b@x.org"})
    assert settings.bucket("aws") == "from-config"
    assert settings.bucket("gcp") == "gs-env"
    assert settings.bucket("gcp", "checkout") == "dss-checkout"
    assert settings.admin_emails == ("a@x.org", "b@x.org")
    assert settings.async_copy_threshold == 64 * 1024 * 1024


def test_progress_reports_each_tenth_once(caplog):
    import logging

    from shared.metrics import Progress
    progress = Progress("copying x", 1000, log=logging.getLogger("progress-test"))
    with caplog.at_level(logging.INFO, logger="progress-test"):
        for _ in range(40):
            progress.advance(25)
    percents = [record.getMessage().split(": ")[1].split("%")[0] for record in caplog.records]
    assert percents == [str(p) for p in range(10, 101, 10)]


@pytest.mark.parametrize("address, valid", [
    ("user@example.org", True), ("first.last+tag@sub.example.co.uk", True),
    ("user@localhost", False), ("no-at-sign", False), ("User <user@example.org>", False),
    ("user@example.org\r\nBcc: victim@example.org", False), ("user@example.org\n", False), ("", False),
    (None, False), (42, False),
    ("a" * 250 + "@example.org", False),
])
def test_email_addresses(address, valid):
    assert is_email_address(address) is valid
