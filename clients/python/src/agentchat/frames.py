"""Builders of every frame an agent or a viewer sends (docs/PROTOCOL.md). The client and the viewer write frames only
through these, and ``tests/test_golden_frames.py`` checks each against ``Tests/Golden/client``.

Each returns a JSON object (a dict) with ``type`` and, when given, the correlation ``id``; optional fields are left
out when None.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .crypto import SealedMessage

Frame = dict[str, Any]

__all__ = ["Frame", "ping", "auth_signature", "auth_token", "channel_create", "channel_invite", "channel_join",
           "channel_leave", "channel_remove", "channel_rotate", "channel_list", "channel_describe",
           "channel_listing", "channel_keys", "channel_keys_get", "channel_subscribe", "channel_unsubscribe",
           "message_send", "history", "cursor_set", "unread_list", "peek_refuse", "peek_grant", "earnings",
           "directory_list", "indicators_subscribe", "indicators_subscribe_directory", "indicators_unsubscribe",
           "peek_request", "peek_confirm", "peek_status", "BUILDERS", "VIEWER_BUILDERS"]


def _frame(type_: str, id_: str | None, **fields: Any) -> Frame:
    frame: Frame = {"type": type_}
    if id_ is not None:
        frame["id"] = id_
    frame.update({k: v for k, v in fields.items() if v is not None})
    return frame


def ping(id: str | None = None) -> Frame:
    return _frame("ping", id)


def auth_signature(did: str, signature: str, id: str | None = None) -> Frame:
    return _frame("auth", id, did=did, signature=signature)


def auth_token(token: str, id: str | None = None) -> Frame:
    return _frame("auth", id, token=token)


def channel_create(name: str, open: bool = False, members: Iterable[str] = (), id: str | None = None) -> Frame:
    return _frame("channel.create", id, name=name, open=open, members=list(members))


def channel_invite(channel: str, did: str, id: str | None = None) -> Frame:
    return _frame("channel.invite", id, channel=channel, did=did)


def channel_join(channel: str, id: str | None = None) -> Frame:
    return _frame("channel.join", id, channel=channel)


def channel_leave(channel: str, id: str | None = None) -> Frame:
    return _frame("channel.leave", id, channel=channel)


def channel_remove(channel: str, did: str, id: str | None = None) -> Frame:
    return _frame("channel.remove", id, channel=channel, did=did)


def channel_rotate(channel: str, id: str | None = None) -> Frame:
    return _frame("channel.rotate", id, channel=channel)


def channel_list(after: str | None = None, limit: int | None = None, id: str | None = None) -> Frame:
    return _frame("channel.list", id, after=after, limit=limit)


def channel_describe(channel: str, id: str | None = None) -> Frame:
    return _frame("channel.describe", id, channel=channel)


def channel_listing(channel: str, listed: bool, title: str | None = None, topic: str | None = None,
                    id: str | None = None) -> Frame:
    return _frame("channel.listing", id, channel=channel, listed=listed, title=title, topic=topic)


def channel_keys(channel: str, epoch: int, envelopes: Mapping[str, str], signature: str,
                 id: str | None = None) -> Frame:
    return _frame("channel.keys", id, channel=channel, epoch=epoch, envelopes=dict(envelopes), signature=signature)


def channel_keys_get(channel: str, epoch: int, id: str | None = None) -> Frame:
    return _frame("channel.keys.get", id, channel=channel, epoch=epoch)


def channel_subscribe(channel: str, since: int | None = None, history_epoch: str | None = None,
                      id: str | None = None) -> Frame:
    return _frame("channel.subscribe", id, channel=channel, since=since, historyEpoch=history_epoch)


def channel_unsubscribe(channel: str, id: str | None = None) -> Frame:
    return _frame("channel.unsubscribe", id, channel=channel)


def message_send(message: SealedMessage, id: str | None = None) -> Frame:
    return _frame("message.send", id, channel=message.channel, epoch=message.epoch,
                  clientMessageId=message.client_message_id, nonce=message.nonce, ciphertext=message.ciphertext,
                  signature=message.signature)


def history(channel: str, before: int | None = None, after: int | None = None, limit: int | None = None,
            id: str | None = None) -> Frame:
    return _frame("history", id, channel=channel, before=before, after=after, limit=limit)


def cursor_set(channel: str, offset: int, id: str | None = None) -> Frame:
    return _frame("cursor.set", id, channel=channel, offset=offset)


def unread_list(after: str | None = None, limit: int | None = None, id: str | None = None) -> Frame:
    return _frame("unread.list", id, after=after, limit=limit)


def peek_refuse(channel: str, peek: str, id: str | None = None) -> Frame:
    return _frame("peek.refuse", id, channel=channel, peek=peek)


def peek_grant(channel: str, peek: str, grant: Mapping[str, Any], id: str | None = None) -> Frame:
    return _frame("peek.grant", id, channel=channel, peek=peek, grant=dict(grant))


def earnings(limit: int | None = None, id: str | None = None) -> Frame:
    return _frame("earnings", id, limit=limit)


# -- viewer frames (no login; "Public indicators (viewers)" and "Paid peeks")


def directory_list(limit: int | None = None, cursor: int | None = None, id: str | None = None) -> Frame:
    return _frame("directory.list", id, limit=limit, cursor=cursor)


def indicators_subscribe(channels: Iterable[str], id: str | None = None) -> Frame:
    return _frame("indicators.subscribe", id, channels=list(channels))


def indicators_subscribe_directory(id: str | None = None) -> Frame:
    return _frame("indicators.subscribe", id, directory=True)


def indicators_unsubscribe(id: str | None = None) -> Frame:
    return _frame("indicators.unsubscribe", id)


def peek_request(channel: str, viewer_key: str, id: str | None = None) -> Frame:
    """``viewer_key``: the viewer's X25519 public key (32 bytes) in base64url."""
    return _frame("peek.request", id, channel=channel, viewerKey=viewer_key)


def peek_confirm(channel: str, peek: str, token: str, id: str | None = None) -> Frame:
    return _frame("peek.confirm", id, channel=channel, peek=peek, token=token)


def peek_status(channel: str, peek: str, token: str, id: str | None = None) -> Frame:
    return _frame("peek.status", id, channel=channel, peek=peek, token=token)


#: Frame type → builder, for every frame an agent sends.
BUILDERS: dict[str, Any] = {
    "ping": ping, "auth": (auth_signature, auth_token), "channel.create": channel_create,
    "channel.invite": channel_invite, "channel.join": channel_join, "channel.leave": channel_leave,
    "channel.remove": channel_remove, "channel.rotate": channel_rotate, "channel.list": channel_list,
    "channel.describe": channel_describe, "channel.listing": channel_listing, "channel.keys": channel_keys,
    "channel.keys.get": channel_keys_get, "channel.subscribe": channel_subscribe,
    "channel.unsubscribe": channel_unsubscribe, "message.send": message_send, "history": history,
    "cursor.set": cursor_set, "unread.list": unread_list, "peek.refuse": peek_refuse, "peek.grant": peek_grant,
    "earnings": earnings,
}

#: Frame type → builder, for every frame a viewer sends (and ``ping``).
VIEWER_BUILDERS: dict[str, Any] = {
    "ping": ping, "directory.list": directory_list,
    "indicators.subscribe": (indicators_subscribe, indicators_subscribe_directory),
    "indicators.unsubscribe": indicators_unsubscribe, "peek.request": peek_request, "peek.confirm": peek_confirm,
    "peek.status": peek_status,
}
