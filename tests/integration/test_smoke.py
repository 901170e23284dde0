from tests.integration.conftest import wait_state
def test_smoke(start_jqd):
    d = start_jqd()
    with d.client() as c:
        r = c.post("/createJob", json={"type": "noop", "payload": {}})
        assert r.status_code == 201
        wait_state(c, r.json()["id"], "succeeded")
    assert d.stop() == 0
