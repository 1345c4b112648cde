"""The partition keys: Kafka's murmur2 in pure Python, one key per family with its reason,
and the producer SDK putting every event of one email on one partition while a tenant's
emails spread over all of them."""

from __future__ import annotations

import random

import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from topics.catalog import FAMILY_KEYS, Catalog
from topics.partitioner import murmur2, partition_for
from topics.taxonomy import FAMILIES

# org.apache.kafka.common.utils.UtilsTest#testMurmur2 (signed 32-bit results)
JAVA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("data", "signed"), JAVA_VECTORS.items())
def test_murmur2_is_the_java_clients(data, signed):
    assert murmur2(data) == signed & 0xFFFFFFFF


def test_murmur2_agrees_with_an_independent_port_on_any_bytes():
    rng = random.Random(3)
    for _ in range(3000):
        data = rng.randbytes(rng.randrange(0, 90))
        assert partition_for(data, 1 << 31) == aiokafka_murmur2(data) & 0x7FFFFFFF


def test_every_family_has_a_key_and_a_reason():
    assert set(FAMILY_KEYS) == set(FAMILIES)
    for family in FAMILIES:
        spec = Catalog().for_family(family)
        assert spec.key[0] == "tenant_id" and spec.key_reason, family
    assert Catalog().for_family("email").key == ("tenant_id", "email_id")
    assert Catalog().for_family("warmup").key == ("tenant_id", "email_id")
    for family in ("business", "admin_action", "infra"):  # state that needs the tenant
        assert Catalog().for_family(family).key == ("tenant_id",)


def test_an_emails_events_share_a_partition_and_a_tenants_emails_use_every_one():
    spec = Catalog(partitions=8).for_family("email")
    base = {"tenant_id": "agency", "campaign_id": "c", "mailbox_id": "m", "lead_id": "l"}
    homes = set()
    for n in range(400):
        events = [
            {**base, "event_type": t, "email_id": f"em-{n}", "mailbox_id": f"m-{n % 7}"}
            for t in ("email_sent", "email_opened", "email_replied")
        ]
        assert len({spec.partition_of(e) for e in events}) == 1  # fields besides the key vary
        homes.add(spec.partition_of(events[0]))
    assert homes == set(range(8))


def test_home_trusts_the_catalog_key_and_recomputes_any_other():
    spec = Catalog(partitions=8).for_family("email")
    event = {"tenant_id": "t", "email_id": "e-1"}
    home = spec.partition_of(event)
    assert spec.home(event, home, spec.record_key(event)) == home
    other = (home + 1) % 8
    assert spec.home(event, other, spec.record_key(event)) == other  # trusted: no hash
    assert spec.home(event, other, b"t") == home  # the tenant key of an older release
    assert spec.home(event, other, None) == home


def test_the_producer_sdk_keys_every_family_as_the_catalog_says():
    from sluice.producer import EventProducer
    from sluice.settings import Settings

    producer = EventProducer(Settings(_env_file=None))
    event = {
        "event_id": "0d9c7b8e-4b1f-4f7e-9c4e-2f0a1b2c3d4e",
        "event_type": "email_opened",
        "occurred_at": 1_793_491_200_000,
        "tenant_id": "agency",
        "source": "mailer",
        "email_id": "em-9",
        "campaign_id": "c",
        "mailbox_id": "m",
        "lead_id": "l",
    }
    assert producer.encode(event).key == b"agency\x00em-9"
    business = {
        "event_id": "1d9c7b8e-4b1f-4f7e-9c4e-2f0a1b2c3d4e",
        "event_type": "business_upgrade",
        "occurred_at": 1_793_491_200_000,
        "tenant_id": "agency",
        "source": "billing",
    }
    assert producer.encode(business).key == b"agency"
