"""Schemathesis hooks for the contract run (`tests/contract.rs`).

Every URL a generated request would have the gateway call (a webhook endpoint, a media file to
fetch) is pointed at the test's own listener on 127.0.0.1 (`CONTRACT_SINK`): tests reach this
machine only. Values that are no http(s) URL stay as generated, so what the document forbids
is still tried and must still be refused.
"""

import os

import schemathesis

SINK = os.environ["CONTRACT_SINK"]


def local(value):
    if isinstance(value, str) and value.lower().startswith(("http://", "https://")):
        return SINK + "/contract"
    return value


@schemathesis.hook
def map_body(context, body):
    if isinstance(body, dict):
        if "url" in body:
            body["url"] = local(body["url"])
        for kind in ("image", "video", "audio", "document", "sticker"):
            media = body.get(kind)
            if isinstance(media, dict) and "url" in media:
                media["url"] = local(media["url"])
    return body
