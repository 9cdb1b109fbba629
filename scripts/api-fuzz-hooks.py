"""Schemathesis hooks for scripts/api-fuzz.sh.

The OpenAPI document states every bound the server enforces on a single value. A few rules tie
two values together, which JSON Schema cannot say; they are written in the members'
descriptions, tested in crates/herald-http's tests, and here a generated request that breaks one
of them is changed to keep it, so that `positive_data_acceptance` judges everything else:

- a subscription's `retry.max` is not shorter than `retry.initial` (defaults 1s and 5m);
- `push` and `filter` are for queue subscriptions;
- a push `timeout` is at most `push_timeout_max(ack_timeout)` = ack_timeout - max(ack_timeout/10, 1s)
  (ack_timeout default 30s), so a push subscription needs an ack_timeout over 1s;
- a read takes `offset` or `from_time`, not both;
- a PATCH sends `push.secret` or `push.rotate_secret: true`, not both;
- a request names its reply group in `herald-reply-group` or `herald-service`.

Long polls are shortened to at most 50ms (`wait` of reads and pulls, `timeout` of requests, 5s when left out) so a
run takes a minute, not an hour; the 60s bound itself is in the document and in the tests.
"""

import re

import schemathesis

UNITS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def millis(text):
    """A Herald duration in milliseconds, or None when it is not one."""
    if not isinstance(text, str):
        return None
    match = re.fullmatch(r"([0-9]+)(ms|s|m|h|d)", text)
    if not match:
        return None
    return int(match.group(1)) * UNITS[match.group(2)]


def shorten(container, key):
    if isinstance(container, dict) and (millis(container.get(key)) or 0) > 50:
        container[key] = "50ms"


def keep_subscription_rules(body):
    if not isinstance(body, dict):
        return
    retry = body.get("retry")
    if isinstance(retry, dict):
        initial = millis(retry.get("initial")) if retry.get("initial") is not None else 1_000
        longest = millis(retry.get("max")) if retry.get("max") is not None else 300_000
        if initial is not None and longest is not None and longest < initial:
            retry["max"] = retry.get("initial") or "1s"
    push = body.get("push")
    if (isinstance(push, dict) or body.get("filter") is not None) and body.get("mode") == "stream":
        body["mode"] = "queue"
    if isinstance(push, dict):
        ack = millis(body.get("ack_timeout")) if body.get("ack_timeout") is not None else 30_000
        if ack is not None and ack <= 1_000:
            body["ack_timeout"] = "30s"
            ack = 30_000
        timeout = millis(push.get("timeout"))
        if ack is not None and timeout is not None:
            longest = ack - max(ack // 10, 1_000)
            if timeout > longest:
                push["timeout"] = f"{longest}ms"


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    operation = f"{case.method.upper()} {case.path}"
    if operation == "PUT /v1/subscriptions/{name}":
        keep_subscription_rules(case.body)
    elif operation == "PATCH /v1/subscriptions/{name}":
        push = case.body.get("push") if isinstance(case.body, dict) else None
        if isinstance(push, dict) and push.get("secret") is not None and push.get("rotate_secret") is True:
            del push["rotate_secret"]
    elif operation == "GET /v1/topics/{topic}/events":
        if isinstance(case.query, dict):
            if "offset" in case.query and "from_time" in case.query:
                del case.query["from_time"]
            shorten(case.query, "wait")
    elif operation == "POST /v1/subscriptions/{name}/pull":
        shorten(case.body, "wait")
    elif operation == "POST /v1/topics/{topic}/requests":
        # (without `timeout` a call waits 5s)
        if case.query is None:
            case.query = {}
        if isinstance(case.query, dict) and "timeout" not in case.query:
            case.query["timeout"] = "50ms"
        shorten(case.query, "timeout")
        headers = case.headers if case.headers is not None else {}
        if "herald-reply-group" not in headers and "herald-service" not in headers:
            headers["herald-service"] = "api-fuzz"
            case.headers = headers
