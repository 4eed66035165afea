#!/usr/bin/env python3
"""Check that the official OpenAI Python client works through a running modelgate.

Environment:
  MODELGATE_BASE_URL  the gateway's OpenAI base URL, e.g. http://127.0.0.1:8080/v1
  MODELGATE_API_KEY   a client key the gateway accepts, e.g. demo-key

Written for `modelgate demo` (the demo model answers every request with the same
canned text). Prints one line per check, then `N passed, M failed`; exits 1 if
any check failed, 2 on a usage error. Run by the Rust integration tests through
$MODELGATE_PYTHON (the .venv that `make deps` creates).
"""

import os
import sys
import traceback

import openai

MODEL = "demo-model"
MESSAGES = [{"role": "user", "content": "How do I reach support?"}]
TIMEOUT_S = 30.0


def make_client(api_key):
    # trust_env=False: never send 127.0.0.1 traffic through an HTTP(S)_PROXY from the environment.
    return openai.OpenAI(
        base_url=BASE_URL,
        api_key=api_key,
        max_retries=0,
        timeout=TIMEOUT_S,
        http_client=openai.DefaultHttpxClient(trust_env=False),
    )


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def nonempty_str(v):
    return isinstance(v, str) and v != ""


# Results shared between checks (the streaming checks compare with these).
seen = {}


def chat_plain(client):
    resp = client.chat.completions.create(model=MODEL, messages=MESSAGES)
    check(len(resp.choices) == 1, f"expected 1 choice, got {len(resp.choices)}")
    content = resp.choices[0].message.content
    check(nonempty_str(content), f"choices[0].message.content is {content!r}")
    check(resp.choices[0].finish_reason == "stop", f"finish_reason {resp.choices[0].finish_reason!r}")
    check(resp.usage is not None, "no usage")
    check(resp.usage.total_tokens > 0, f"usage.total_tokens = {resp.usage.total_tokens}")
    seen["chat"] = content
    return f"{len(content)} chars, {resp.usage.total_tokens} tokens"


def chat_stream(client):
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks, pieces, usage, finish = 0, [], None, None
    for chunk in stream:
        chunks += 1
        check(chunk.object == "chat.completion.chunk", f"chunk object {chunk.object!r}")
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            finish = choice.finish_reason or finish
    text = "".join(pieces)
    check(len(pieces) > 1, f"expected several content chunks, got {len(pieces)} ({chunks} chunks)")
    check(text != "", "joined delta.content is empty")
    check("chat" in seen, "no non-streaming answer to compare with (its check failed)")
    check(text == seen["chat"], f"streamed text differs from non-streaming:\n  {text!r}\n  {seen['chat']!r}")
    check(finish == "stop", f"finish_reason {finish!r}")
    check(usage is not None, "no usage chunk (stream_options.include_usage)")
    check(usage.total_tokens > 0, f"usage.total_tokens = {usage.total_tokens}")
    return f"{chunks} chunks, {len(text)} chars, {usage.total_tokens} tokens"


def legacy_plain(client):
    resp = client.completions.create(model=MODEL, prompt="hi")
    check(resp.object == "text_completion", f"object {resp.object!r}")
    text = resp.choices[0].text
    check(nonempty_str(text), f"choices[0].text is {text!r}")
    check(resp.usage is not None and resp.usage.total_tokens > 0, f"usage {resp.usage!r}")
    seen["legacy"] = text
    return f"{len(text)} chars, {resp.usage.total_tokens} tokens"


def legacy_stream(client):
    stream = client.completions.create(
        model=MODEL, prompt="hi", stream=True, stream_options={"include_usage": True}
    )
    chunks, pieces, usage = 0, [], None
    for chunk in stream:
        chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage
        pieces.extend(c.text for c in chunk.choices if c.text)
    text = "".join(pieces)
    check(len(pieces) > 1, f"expected several text chunks, got {len(pieces)} ({chunks} chunks)")
    check("legacy" in seen, "no non-streaming answer to compare with (its check failed)")
    check(text == seen["legacy"], f"streamed text differs from non-streaming:\n  {text!r}\n  {seen['legacy']!r}")
    check(usage is not None and usage.total_tokens > 0, f"usage {usage!r}")
    return f"{chunks} chunks, {len(text)} chars"


def wrong_key(_client):
    bad = make_client("definitely-not-a-valid-key")
    try:
        bad.chat.completions.create(model=MODEL, messages=MESSAGES)
    except openai.AuthenticationError as e:
        check(e.status_code == 401, f"status {e.status_code}")
        rid = e.response.headers.get("x-request-id")
        check(nonempty_str(rid), "no x-request-id header on the 401 response")
        return f"401, x-request-id {rid}"
    except openai.APIStatusError as e:
        raise AssertionError(f"expected AuthenticationError, got {type(e).__name__} ({e.status_code})")
    finally:
        bad.close()
    raise AssertionError("a wrong key was accepted")


def request_id(client):
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
    rid = raw.headers.get("x-request-id")
    check(nonempty_str(rid), f"no x-request-id header (headers: {dict(raw.headers)})")
    check(nonempty_str(raw.parse().choices[0].message.content), "empty content")
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, stream=True
    )
    rid2 = raw.headers.get("x-request-id")
    check(nonempty_str(rid2), "no x-request-id header on the streaming response")
    for _ in raw.parse():  # drain the stream
        pass
    check(rid != rid2, f"two requests got the same x-request-id {rid}")
    return f"{rid}, {rid2} (streaming)"


CHECKS = [
    ("chat completion", chat_plain),
    ("chat completion, streaming", chat_stream),
    ("legacy completion", legacy_plain),
    ("legacy completion, streaming", legacy_stream),
    ("wrong key -> AuthenticationError", wrong_key),
    ("x-request-id header", request_id),
]


def main():
    passed = failed = 0
    print(f"openai {openai.__version__} against {BASE_URL}")
    with make_client(API_KEY) as client:
        for name, fn in CHECKS:
            try:
                detail = fn(client)
                passed += 1
                print(f"ok   {name}: {detail}")
            except AssertionError as e:
                failed += 1
                print(f"FAIL {name}: {e}")
            except openai.APIError as e:  # an HTTP or transport error: one line is enough
                failed += 1
                cause = f" ({type(e.__cause__).__name__}: {e.__cause__})" if e.__cause__ else ""
                print(f"FAIL {name}: {type(e).__name__}: {e}{cause}")
            except Exception as e:  # anything else is a failed check too, with its traceback
                failed += 1
                print(f"FAIL {name}: {type(e).__name__}: {e}")
                traceback.print_exc(file=sys.stdout)
            sys.stdout.flush()
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    BASE_URL = os.environ.get("MODELGATE_BASE_URL", "")
    API_KEY = os.environ.get("MODELGATE_API_KEY", "")
    if not BASE_URL or not API_KEY:
        print("usage: MODELGATE_BASE_URL=http://HOST:PORT/v1 MODELGATE_API_KEY=KEY "
              f"{sys.argv[0]}", file=sys.stderr)
        sys.exit(2)
    sys.exit(main())
