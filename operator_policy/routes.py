"""GET /responsible_steering/policy: the active policy's summary for everyone; the whole policy and the latest
audit records for an operator (the X-RS-Operator-Token header whose sha256 the policy names). Loopback is not
trusted: behind a reverse proxy every request comes from loopback."""
from __future__ import annotations

import hashlib
import hmac

from .document import Policy
from .enforcement import STATE

TOKEN_HEADER = "X-RS-Operator-Token"
ROUTE = "/responsible_steering/policy"
RECENT_SHOWN = 50


def is_operator(request, policy: Policy) -> bool:
    token = request.headers.get(TOKEN_HEADER, "")
    expected = policy.operator_token_sha256
    return bool(token and expected) and hmac.compare_digest(hashlib.sha256(token.encode()).hexdigest(), expected)


async def policy_route(request):
    from aiohttp import web

    if STATE.error is not None:
        return web.json_response({"active": True, "error": STATE.error})
    policy = STATE.policy
    if policy is None:
        return web.json_response({"active": False})
    answer = policy.summary()
    answer["operator"] = is_operator(request, policy)
    if answer["operator"]:
        answer["document"] = {k: v for k, v in policy.document.items() if k != "operator_token_sha256"}
        answer["path"], answer["audit_path"] = policy.path, policy.audit_path
        answer["previews"] = {**answer["previews"], **dict(STATE.previews)}
        answer["recent"] = list(STATE.recent)[-RECENT_SHOWN:]
    return web.json_response(answer)
