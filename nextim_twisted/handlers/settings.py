"""``setting`` (D11) and ``notification(s)`` (D12)."""
import json

from ..errors import BadRequest, TooLarge
from . import OK


async def setting(ctx, identity, params):
    """``webim/setting``: with ``data`` (the whole settings object as JSON text) store
    it verbatim; without, answer the stored object (``{}`` when none)."""
    data = params.values.get("data")
    if data is None:
        return await ctx.settings_of(identity.user_id)
    limit = ctx.config.limits.setting_bytes
    if len(data.encode("utf-8", "surrogatepass")) > limit:
        raise TooLarge(f"data: at most {limit} bytes", code="setting_too_large")
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        raise BadRequest("data: must be a JSON object", code="bad_parameter") from None
    if not isinstance(value, dict):
        raise BadRequest("data: must be a JSON object", code="bad_parameter")
    await ctx.store.put_setting(identity.user_id, data)
    return OK


async def notifications(ctx, identity, params):
    """``webim/notification(s)``: unread notifications newest first, then marked read
    (D12): ``[{text, link, time}]``."""
    rows = await ctx.store.take_unread_notifications(identity.user_id)
    return [{"text": n["text"], "link": n.get("link") or "", "time": n["time"]} for n in rows]
