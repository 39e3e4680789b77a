"""The one marshmallow-to-400 converter (``shared.schemas.load_arguments``) as services see it for
RPC arguments and other documents; the gateway's query strings and bodies are checked over HTTP in
services/gateway/tests."""
import pytest
from marshmallow import Schema, fields

from shared.exceptions import InvalidParameter
from shared.schemas import ReplicaField, UuidField, VersionField, load_arguments

UUID = "11111111-2222-4333-8444-555555555555"


class Call(Schema):
    replica = ReplicaField()
    uuid = UuidField(required=True)
    version = VersionField()
    per_page = fields.Integer(load_default=100)


def refusal(values, **kwargs) -> InvalidParameter:
    with pytest.raises(InvalidParameter) as raised:
        load_arguments(Call(), values, **kwargs)
    return raised.value


def test_good_arguments_are_loaded_and_normalised():
    assert load_arguments(Call(), {"replica": "gcp", "uuid": UUID.upper()}) == {
        "replica": "gcp", "uuid": UUID, "per_page": 100}


@pytest.mark.parametrize("values, code", [
    ({"replica": "azure", "uuid": UUID}, "unknown_replica"),
    ({"replica": "aws", "uuid": "not-a-uuid"}, "illegal_uuid"),
    ({"replica": "aws", "uuid": UUID, "version": "yesterday"}, "illegal_version"),
    ({"replica": "aws", "uuid": UUID, "per_page": "many"}, "illegal_arguments"),
    ({"uuid": UUID}, "illegal_arguments"),  # missing is not malformed: the generic code
])
def test_the_code_is_the_first_offending_fields_own(values, code):
    refused = refusal(values)
    assert refused.error_code == code
    assert refused.title.startswith("invalid arguments: ")


def test_titles_name_fields_and_rules_never_values():
    refused = refusal({"replica": "azure-secret", "uuid": UUID})
    assert refused.title == "invalid arguments: replica: must be one of aws, gcp"
    refused = refusal({"uuid": UUID})
    assert refused.title == "invalid arguments: replica: is required"


def test_unknown_fields_are_refused_by_name_for_what_they_are():
    values = {"replica": "aws", "uuid": UUID, "colour": "blue"}
    assert refusal(values).title == "unknown argument(s): colour"
    assert refusal(values, where="query").title == "unknown query parameter(s): colour"
    assert refusal(values, where="body").title == "unknown field(s) in the request body: colour"
    assert refusal(values, where="subscription").title == "unknown field(s) in the subscription: colour"
    assert refusal(values).error_code == "illegal_arguments"


def test_none_is_default_lets_the_schema_default_apply():
    loaded = load_arguments(Call(), {"replica": "aws", "uuid": UUID, "per_page": None}, none_is_default=True)
    assert loaded["per_page"] == 100
    assert refusal({"replica": "aws", "uuid": UUID, "per_page": None}).error_code == "illegal_arguments"
