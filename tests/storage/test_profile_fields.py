"""Every field of a profile in a real SQLite file."""

from __future__ import annotations

from ranvier.storage import Storage
from ranvier.storage.accounts import NewAccount
from ranvier.storage.profile_fields import profile_size

ALICE = "@alice:example.org"
BOB = "@bob:example.org"


async def _alice(storage: Storage) -> None:
    await storage.accounts.create_account(NewAccount(ALICE, None, admin=False, created_ts=1))


async def test_fields_of_any_json_are_kept_beside_the_name_and_avatar(storage: Storage) -> None:
    await _alice(storage)
    data = storage.client_data
    assert await data.profile_fields(ALICE) == {}
    assert await data.profile_fields(BOB) is None
    await data.set_profile(ALICE, "Alice", None)
    assert await data.set_profile_field(ALICE, "m.tz", '"Europe/Paris"', max_bytes=65536)
    assert await data.set_profile_field(
        ALICE, "org.example.pets", '[{"cat": 2}, null]', max_bytes=65536
    )
    assert await data.set_profile_field(ALICE, "org.example.gone", "null", max_bytes=65536)
    assert await data.profile_fields(ALICE) == {
        "displayname": "Alice",
        "m.tz": "Europe/Paris",
        "org.example.pets": [{"cat": 2}, None],
        "org.example.gone": None,
    }
    # The name and avatar stay where the member events read them.
    assert await data.set_profile_field(ALICE, "avatar_url", '"mxc://x/a"', max_bytes=65536)
    assert await data.get_profile(ALICE) == ("Alice", "mxc://x/a")
    assert await data.set_profile_field(ALICE, "displayname", "null", max_bytes=65536)
    assert await data.get_profile(ALICE) == (None, "mxc://x/a")


async def test_a_field_for_no_account_is_refused(storage: Storage) -> None:
    assert not await storage.client_data.set_profile_field(BOB, "m.tz", '"UTC"', max_bytes=65536)
    assert await storage.client_data.profile_fields(BOB) is None


async def test_a_change_that_would_reach_the_limit_writes_nothing(storage: Storage) -> None:
    await _alice(storage)
    data = storage.client_data
    assert await data.set_profile_field(ALICE, "m.tz", '"UTC"', max_bytes=100)
    before = await data.profile_fields(ALICE)
    assert before is not None
    room = 100 - profile_size(before)
    # A value that makes the profile exactly the limit is one byte too many.
    padding = "x" * (room - len(',"org.example.pad":""'))
    assert profile_size({**before, "org.example.pad": padding}) == 100
    assert not await data.set_profile_field(ALICE, "org.example.pad", f'"{padding}"', max_bytes=100)
    # "displayname" is four characters shorter than "org.example.pad".
    longer = f'"{padding}xxxx"'
    assert not await data.set_profile_field(ALICE, "displayname", longer, max_bytes=100)
    assert await data.profile_fields(ALICE) == before
    assert await data.set_profile_field(ALICE, "org.example.pad", f'"{padding[1:]}"', max_bytes=100)
    # Replacing a field measures the profile without its old value.
    assert await data.set_profile_field(ALICE, "m.tz", '"GMT"', max_bytes=100)


async def test_deleting_and_erasing(storage: Storage) -> None:
    await _alice(storage)
    data = storage.client_data
    await data.set_profile(ALICE, "Alice", "mxc://x/a")
    for key in ("m.tz", "org.example.a", "org.example.b"):
        assert await data.set_profile_field(ALICE, key, '"v"', max_bytes=65536)
    await data.delete_profile_field(ALICE, "org.example.a")
    await data.delete_profile_field(ALICE, "org.example.never")
    await data.delete_profile_field(ALICE, "avatar_url")
    assert await data.profile_fields(ALICE) == {
        "displayname": "Alice",
        "m.tz": "v",
        "org.example.b": "v",
    }
    await data.erase_profile(ALICE)
    assert await data.profile_fields(ALICE) == {}
    assert await data.get_profile(ALICE) == (None, None)
