"""ToDevice over real storage: transactions remembered a day, then forgotten."""

from __future__ import annotations

from ranvier.core.client_txns import DEFAULT_KEEP_MS, DEFAULT_PRUNE_EVERY_MS, TxnOwner
from ranvier.core.notifier import StreamNotifier
from ranvier.core.to_device import ToDevice
from ranvier.storage import Storage
from ranvier.storage.accounts import NewAccount, NewDevice

ALICE = "@alice:example.org"
BOB = "@bob:example.org"


async def test_a_transaction_is_forgotten_a_day_after_by_an_hourly_prune(
    storage: Storage,
) -> None:
    for user, device in ((ALICE, "A"), (BOB, "B")):
        await storage.accounts.create_account(NewAccount(user, "hash", admin=False, created_ts=1))
        await storage.accounts.add_device(NewDevice(user, device, None, device.encode(), 1))
    now = [1_000_000]
    notifier = StreamNotifier()
    to_device = ToDevice(
        server_name="example.org", store=storage.e2e_keys, notifier=notifier, clock=lambda: now[0]
    )
    keys = storage.e2e_keys

    async def send(txn_id: str) -> int:
        await to_device.send(TxnOwner(ALICE, "A"), "m.test", txn_id, {"messages": {BOB: {"B": {}}}})
        upto = await keys.to_device_position()
        return len(await keys.to_device_messages(BOB, "B", 0, upto, 100))

    assert await send("t1") == 1
    assert notifier.position.to_device == await keys.to_device_position()
    # Retried within the day: nothing new, even after the hourly prune ran.
    now[0] += DEFAULT_PRUNE_EVERY_MS + 1
    assert await send("t1") == 1
    # A day on, the next send's prune forgets t1; sent again, it is new.
    now[0] += DEFAULT_KEEP_MS
    assert await send("t2") == 2
    assert await send("t1") == 3
