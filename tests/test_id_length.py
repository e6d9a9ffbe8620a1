"""One owner for the id length limit (timbral.ids): bytes of UTF-8, everywhere.

An id of 64 four-byte characters is 256 bytes: at the limit, it passes the loader, the
service's request validation and ingestion; one byte more fails all three, each naming
the limit in bytes. The service may lower the limit, never raise it: what it ingests is
trained on with the loader's limit.
"""

from __future__ import annotations

import re

import pyarrow as pa
import pytest
from server_support import config

from timbral import load_interactions
from timbral.exceptions import DataError, ValidationError
from timbral.ids import MAX_ID_BYTES, IdMap, check_id_text, first_overlong
from timbral.server.app import create_app
from timbral.server.config import Config, ConfigError
from timbral.server.errors import ApiError
from timbral.server.ingest import RejectedEvents, parse_events
from timbral.server.schemas import check_id

AT_LIMIT = "😀" * (MAX_ID_BYTES // 4)  # 64 characters, 256 bytes of UTF-8
OVER = "é" * (MAX_ID_BYTES // 2) + "a"  # 129 characters, 257 bytes
OVER_MESSAGE = rf"is 257 bytes long.*at most {MAX_ID_BYTES} bytes"
REC = "/api/v1/recommendations"


def test_the_limit_counts_bytes_of_utf8():
    assert len(AT_LIMIT.encode()) == MAX_ID_BYTES and len(OVER.encode()) == MAX_ID_BYTES + 1
    assert check_id_text(AT_LIMIT, name="user_id") == AT_LIMIT
    with pytest.raises(ValidationError, match=rf"user_id {OVER_MESSAGE}"):
        check_id_text(OVER, name="user_id")
    with pytest.raises(ValidationError, match="item_id is 5 bytes long in UTF-8 \\(2 characters\\); ids are at most 4"):
        check_id_text("a😀", name="item_id", max_bytes=4)
    assert IdMap.from_ids([AT_LIMIT, "u1"], name="user_id").ids.tolist() == [AT_LIMIT, "u1"]  # models, Recommender
    with pytest.raises(ValidationError, match=f"position 1 {OVER_MESSAGE}"):
        IdMap.from_ids(["u1", OVER], name="user_id")
    for bad, match in [("", "user_id must not be empty"), ("a\ud800", "not valid Unicode text")]:
        with pytest.raises(ValidationError, match=match):
            check_id_text(bad, name="user_id")


def _csv(tmp_path, user_id: str):
    rows = [f"{user}\t{item}\t1" for user in (user_id, "plain") for item in range(3)]
    path = tmp_path / "plays.tsv"
    path.write_text("user\titem\tplays\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_the_loader_takes_an_id_at_the_limit_and_refuses_one_byte_more(tmp_path):
    data = load_interactions(_csv(tmp_path, AT_LIMIT), min_user_interactions=1)
    assert AT_LIMIT in data.user_ids.tolist()
    with pytest.raises(DataError, match=f"user id in data row 1 {OVER_MESSAGE}"):
        load_interactions(_csv(tmp_path, OVER), min_user_interactions=1)


@pytest.fixture
async def client(aiohttp_client, model_dir):
    return await aiohttp_client(create_app(config(model_dir)))


async def test_the_service_takes_an_id_at_the_limit_and_refuses_one_byte_more(client):
    for response in [await client.get(f"{REC}/{AT_LIMIT}?k=2"),
                     await client.post(REC, json={"user_id": AT_LIMIT, "k": 2, "items": [AT_LIMIT]})]:
        assert response.status == 200, await response.text()
        assert (await response.json())["user_id"] == AT_LIMIT
    for response in [await client.get(f"{REC}/{OVER}"), await client.post(REC, json={"user_id": OVER}),
                     await client.post(REC, json={"user_ids": ["u1", OVER]}),
                     await client.post(REC, json={"user_id": "u1", "exclude_items": [OVER]}),
                     await client.get(f"/api/v1/similar/{OVER}"),
                     await client.get(f"/api/v1/explain/u1/{OVER}")]:
        assert response.status == 422
        error = (await response.json())["error"]
        assert error["code"] == "invalid_request"
        assert re.search(OVER_MESSAGE, error["message"]), error["message"]


def _events(user_id: str) -> dict[str, object]:
    return {"events": [{"event_id": "e1", "user_id": user_id, "item_id": AT_LIMIT, "value": 2}]}


def test_ingestion_takes_an_id_at_the_limit_and_refuses_one_byte_more():
    (event,) = parse_events(_events(AT_LIMIT), max_events=10, max_id_length=MAX_ID_BYTES)
    assert event.user_id == AT_LIMIT and event.item_id == AT_LIMIT
    with pytest.raises(RejectedEvents) as caught:
        parse_events(_events(OVER), max_events=10, max_id_length=MAX_ID_BYTES)
    (row,) = caught.value.rejected
    assert row["index"] == 0 and row["event_id"] == "e1"
    assert re.search(rf"user_id {OVER_MESSAGE}", row["reason"]), row["reason"]


def test_a_lower_service_limit_applies_to_requests_and_events():
    with pytest.raises(RejectedEvents, match="1 of 1 events are invalid") as caught:
        parse_events(_events(AT_LIMIT), max_events=10, max_id_length=100)
    assert "is 256 bytes long in UTF-8 (64 characters); ids are at most 100 bytes" in caught.value.rejected[0]["reason"]
    with pytest.raises(ApiError, match="is 256 bytes long"):
        check_id(AT_LIMIT, "user_id", 100)


def test_the_service_limit_cannot_exceed_the_loaders():
    assert Config.from_env({}).max_id_length == MAX_ID_BYTES
    assert Config.from_env({"TIMBRAL_MAX_ID_LENGTH": "64"}).max_id_length == 64
    for raw in ("257", "0"):
        with pytest.raises(ConfigError, match=rf"TIMBRAL_MAX_ID_LENGTH={raw}: expected a number of bytes "
                                              rf"\(UTF-8\) in 1..{MAX_ID_BYTES}"):
            Config.from_env({"TIMBRAL_MAX_ID_LENGTH": raw})


def test_first_overlong_names_the_first_longest_row_in_bytes():
    at_limit, over = "😀" * 64, "😀" * 64 + "a"  # 256 and 257 bytes of UTF-8
    assert first_overlong(pa.array(["a", at_limit, None]), 256) is None
    assert first_overlong(pa.array(["a", over, at_limit, over]), 256) == (1, 257)
    assert first_overlong(pa.array([], type=pa.string()), 256) is None
