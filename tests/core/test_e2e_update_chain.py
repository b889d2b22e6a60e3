"""The chain of a local user's device-list updates (``prev_id``) as other
servers receive it, with stand-ins for the room's servers and the
federation sender: each update names the one before even when another
E2eKeys (a restart, another process) sent that one."""

from __future__ import annotations

from _device_list_room import BOB, OneRoom, SentEdus, e2e_keys

from ranvier.storage import Storage


def _chain(sent: SentEdus) -> list[tuple[str, int, list[int]]]:
    return [
        (content["device_id"], content["stream_id"], content["prev_id"])
        for _, edu_type, content in sent.edus
        if edu_type == "m.device_list_update"
    ]


async def test_each_update_names_the_one_before_across_restarts(storage: Storage) -> None:
    sent = SentEdus()
    first = await storage.e2e_keys.mark_device_list_changed(BOB)
    await e2e_keys(storage, OneRoom(), sent).devices_changed(BOB, first, ["PHONE"])
    # Another E2eKeys (the server restarted, or another process) sends the next.
    second = await storage.e2e_keys.mark_device_list_changed(BOB)
    await e2e_keys(storage, OneRoom(), sent).devices_changed(BOB, second, ["LAPTOP", "TABLET"])
    # Another user's change in between is no link in Bob's chain.
    await storage.e2e_keys.mark_device_list_changed("@carol:here.example")
    third = await storage.e2e_keys.mark_device_list_changed(BOB)
    await e2e_keys(storage, OneRoom(), sent).devices_changed(BOB, third, ["PHONE"])

    assert _chain(sent) == [
        ("PHONE", first, []),
        # The devices of one change follow each other under one position.
        ("LAPTOP", second, [first]),
        ("TABLET", second, [second]),
        ("PHONE", third, [second]),
    ]
