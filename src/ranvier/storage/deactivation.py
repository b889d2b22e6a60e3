"""What deactivating an account removes of it in storage, and what it keeps.

:func:`remove_account_data` runs inside the write that marks the account
deactivated (:func:`ranvier.storage.accounts.deactivate_account`), so no
crash leaves an account marked deactivated with some of its data still
kept, nor data gone from an account still active. The same write run
again (a worker's write repeated after a restart, an admin deactivating
the account again) finds nothing more to remove; run on an account
deactivated before a kind of data was removed here, it removes that too.

Removed, whatever ``erase`` says (the spec asks for account data and
contact addresses to go with ``erase``; Synapse removes the account data
on every deactivation, and so does this server, since nobody can read it
any more):

* every token: access tokens (their refresh tokens go with them), OpenID
  and login tokens;
* every device, the dehydrated one (MSC3814) and its ``device_data``
  included, with each device's keys (device, one-time and fallback), the
  to-device messages waiting for it and its to-device transaction IDs;
  the device-list stream moves once for them, so those sharing a room
  with the user stop encrypting for them;
* the e-mail addresses on the account, free for other accounts;
* all account data, global and per room: push rules, the ignored users
  list, room tags, ``m.direct``, read markers, secret storage and any
  client's own;
* server-side key backups: every stored key, and every version marked
  deleted with its ``auth_data`` emptied. The rows stay as
  :mod:`ranvier.storage.room_keys` keeps deleted versions, so a version
  number is never handed out twice to the user (reactivated by an admin);
* every pusher, e-mail ones too, not only those of the devices logged out;
* the user's filters, sliding sync connections and the record of their
  sent transaction IDs, which served only their own clients;
* private read receipts (``m.read.private``), which only the user saw.

Kept, on purpose:

* the ``users`` row: the user ID is never handed out again;
* the password hash, so that the right password is told the account is
  deactivated (``M_USER_DEACTIVATED``) and a wrong one is refused as
  ever, where Synapse wipes it and refuses both alike (the spec allows
  either); an admin's reactivation sets a new one;
* events, public receipts and room aliases, which belong to the rooms:
  erasure governs how the user's events are served
  (:mod:`ranvier.storage.erasure`);
* the user's cross-signing keys: public keys, with which others verified
  the user's devices; Synapse keeps them too;
* media the user uploaded, which events refer to (the admin media API
  deletes a user's media);
* single sign-on links: the identity provider's subject keeps leading to
  this account, refused as deactivated, as Synapse keeps its external IDs;
* what admins and other users made about the account (reports, rate
  limit overrides, redaction jobs, registration token uses) and the
  user-interactive authentication sessions, whose recorded answer is what
  a retried ``/account/deactivate`` is given, until they expire;
* the profile, which :mod:`ranvier.core.deactivation` erases once the
  user has left their rooms, and memberships, which it ends by leaving.
"""

from __future__ import annotations

import sqlite3
from typing import Final

from .e2e_keys import forget_device_keys, kept_device_ids

__all__ = ["remove_account_data"]

#: The receipt type nobody but its user is shown.
_PRIVATE_RECEIPT: Final = "m.read.private"
#: What a deleted backup version keeps of the ``auth_data`` its client gave.
_EMPTIED_AUTH_DATA: Final = b"{}"


def remove_account_data(conn: sqlite3.Connection, *, user_id: str) -> tuple[int | None, list[str]]:
    """Remove, inside the caller's write, what the module's doc lists of
    ``user_id``'s. Returns the device-list position the removed devices
    moved the stream to and those devices, or ``(None, [])`` when there
    were none.
    """
    run = conn.execute
    for table in ("access_tokens", "openid_tokens", "login_tokens"):
        run(f"DELETE FROM {table} WHERE user_id = ?", (user_id,))

    devices = kept_device_ids(conn, user_id=user_id)
    devices.update(
        str(device_id)
        for (device_id,) in run("SELECT device_id FROM devices WHERE user_id = ?", (user_id,))
    )
    run("DELETE FROM devices WHERE user_id = ?", (user_id,))
    run("DELETE FROM dehydrated_devices WHERE user_id = ?", (user_id,))
    run("DELETE FROM to_device_transactions WHERE user_id = ?", (user_id,))
    position = None
    if devices:
        position = forget_device_keys(conn, user_id=user_id, device_ids=sorted(devices))

    for table in ("user_threepids", "account_data", "pushers", "user_filters"):
        run(f"DELETE FROM {table} WHERE user_id = ?", (user_id,))
    run("DELETE FROM client_transactions WHERE user_id = ?", (user_id,))

    run("DELETE FROM room_key_backup_keys WHERE user_id = ?", (user_id,))
    run(
        "UPDATE room_key_backup_versions SET deleted = 1, auth_data = ?"
        " WHERE user_id = ? AND (deleted = 0 OR auth_data != ?)",
        (_EMPTIED_AUTH_DATA, user_id, _EMPTIED_AUTH_DATA),
    )

    connections = "SELECT conn_key FROM sliding_sync_connections WHERE user_id = ?"
    run(f"DELETE FROM sliding_sync_rooms WHERE conn_key IN ({connections})", (user_id,))
    run(f"DELETE FROM sliding_sync_positions WHERE conn_key IN ({connections})", (user_id,))
    run("DELETE FROM sliding_sync_connections WHERE user_id = ?", (user_id,))

    # Found through the user's memberships: the receipts' index leads with
    # the room, and a receipt is only ever sent in a room the user was in.
    run(
        "DELETE FROM receipts WHERE receipt_type = ? AND user_id = ? AND room_id IN"
        " (SELECT room_id FROM current_state WHERE type = 'm.room.member' AND state_key = ?)",
        (_PRIVATE_RECEIPT, user_id, user_id),
    )
    return position, sorted(devices)
