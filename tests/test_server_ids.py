"""The service matches ids exactly (issue 10 point 6): ``int()`` is not an id parser."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from server_support import config

from timbral import NMFModel
from timbral.recommender import Recommender
from timbral.server.app import create_app

# int() accepts every one of these as 42 (or 1000); none is the canonical form of an id.
NOT_42 = ["+42", "%2042", "42%20", "4_2", "042", "%D9%A4%D9%A2", "42.0", "-0", "0x2a"]


@pytest.fixture(scope="module")
def int_ids_model_dir(tmp_path_factory):
    """Integer user ids 0..119 and 2**63 - 1, string item ids ``007``, ``7``, ``t2``..."""
    rng = np.random.default_rng(3)
    user_items = sp.random(121, 40, density=0.2, random_state=rng, format="csr", dtype=np.float32)
    user_items.data = np.ceil(user_items.data * 5)
    model = NMFModel(n_components=4, max_iter=4, tol=0, random_state=0, n_threads=1).fit(user_items)
    users = list(range(120)) + [2**63 - 1]
    items = ["007", "7"] + [f"t{j}" for j in range(2, 40)]
    return Recommender(model, users, items, user_items).save(tmp_path_factory.mktemp("ids") / "model")


@pytest.fixture
async def client(aiohttp_client, int_ids_model_dir):
    return await aiohttp_client(create_app(config(int_ids_model_dir)))


async def test_canonical_int_user_ids_are_known(client):
    for path, user in (("42", 42), ("0", 0), (str(2**63 - 1), 2**63 - 1)):
        body = await (await client.get(f"/api/v1/recommendations/{path}?k=3")).json()
        assert body["strategy"] == "nmf" and body["user_id"] == user
    body = await (await client.post("/api/v1/recommendations", json={"user_id": "42", "k": 3})).json()
    assert body["strategy"] == "nmf" and body["user_id"] == 42


@pytest.mark.parametrize("path", NOT_42)
async def test_lookalike_user_ids_are_unknown_users(client, path):
    response = await client.get(f"/api/v1/recommendations/{path}?k=3")
    body = await response.json()
    assert response.status == 200 and body["strategy"] == "popularity"
    assert isinstance(body["user_id"], str)  # echoed as sent, never coerced to 42
    response = await client.get(f"/api/v1/explain/{path}/t5")
    assert response.status == 404


async def test_lookalike_ids_in_a_body_are_unknown(client):
    body = await (await client.post("/api/v1/recommendations",
                                    json={"user_ids": ["42", "+42", " 42", "4_2", 42, str(2**63)], "k": 2})).json()
    assert [r["strategy"] for r in body["results"]] == ["nmf", "popularity", "popularity", "popularity", "nmf",
                                                       "popularity"]
    assert [r["user_id"] for r in body["results"]] == [42, "+42", " 42", "4_2", 42, str(2**63)]


async def test_string_item_ids_keep_leading_zeros(client):
    first = await (await client.get("/api/v1/similar/007?k=2")).json()
    second = await (await client.get("/api/v1/similar/7?k=2")).json()
    assert first["item_id"] == "007" and second["item_id"] == "7"
    assert "007" not in [s["item_id"] for s in first["similar"]]  # itself excluded, not merged with "7"
    assert (await client.get("/api/v1/similar/0007?k=2")).status == 404
    assert (await client.get("/api/v1/similar/%207?k=2")).status == 404
