"""``setting`` (docs/design.md#d11-settings) and ``notification(s)`` (docs/design.md#d12-notifications)."""
from ..errors import TooLarge
from . import OK
from .context import parse_setting


async def setting(ctx, identity, params):
    """``webim/setting``: with ``data`` (the whole settings object as JSON text) store
    it verbatim; without, answer the stored object (``{}`` when none)."""
    data = params.values.get("data")
    if data is None:
        return await ctx.settings_of(identity.user_id)
    limit = ctx.config.limits.setting_bytes
    if len(data.encode("utf-8", "surrogatepass")) > limit:
        raise TooLarge(f"data: at most {limit} bytes", code="setting_too_large")
    parse_setting(data)  # refuses what could not be answered again (NaN, 1e400, deep nesting)
    await ctx.store.put_setting(identity.user_id, data)
    return OK


async def notifications(ctx, identity, params):
    """``webim/notification(s)``: unread notifications newest first, then marked read
    (docs/design.md#d12-notifications): ``[{text, link, time}]``."""
    rows = await ctx.store.take_unread_notifications(identity.user_id)
    return [{"text": n["text"], "link": n.get("link") or "", "time": n["time"]} for n in rows]
