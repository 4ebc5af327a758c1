"""The load tester's client against a real socket server on 127.0.0.1 that misbehaves on cue."""

from __future__ import annotations

import asyncio
import json

from serve import loadtest

HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n"
ANSWER = HEAD + b"{}"


async def read_request(reader: asyncio.StreamReader) -> bool:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    await reader.readexactly(length)
    return True


async def serve_then(
    answers_per_connection: int, posts: int, last_words: bytes = b""
) -> tuple[list[object], int, int]:
    """A server that answers ``answers_per_connection`` requests on each connection, then
    reads the next one, writes ``last_words`` and closes; the client posts ``posts`` times."""
    connections = 0

    async def handle(reader, writer):
        nonlocal connections
        connections += 1
        for _ in range(answers_per_connection):
            await read_request(reader)
            writer.write(ANSWER)
            await writer.drain()
        await read_request(reader)
        writer.write(last_words)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = loadtest.Connection(f"http://127.0.0.1:{port}", "/v1/embeddings")
    outcomes: list[object] = []
    for _ in range(posts):
        try:
            outcomes.append((await client.post(b"{}"))[0])
        except ConnectionError as error:
            outcomes.append(type(error).__name__)
            await client.close()
    await client.close()
    server.close()
    return outcomes, sum(client.replays.values()), connections


def test_a_kept_alive_connection_closed_unanswered_is_resent_once_on_a_new_one():
    outcomes, replayed, connections = asyncio.run(serve_then(1, 3))
    # Post 1 answered; post 2 met the closed connection, was resent on connection 2 and
    # answered; post 3 the same on connection 3.
    assert outcomes == [200, 200, 200]
    assert replayed == 2 and connections == 3


def test_a_new_connection_closed_unanswered_is_an_error_not_a_resend():
    outcomes, replayed, _ = asyncio.run(serve_then(0, 2))
    assert outcomes == ["ConnectionError", "ConnectionError"]
    assert replayed == 0


def test_an_answer_cut_off_after_its_headers_is_resent_once_on_a_new_connection():
    # What a replica SIGKILLed between its two socket writes leaves: headers, then the close.
    outcomes, replayed, connections = asyncio.run(serve_then(1, 3, last_words=HEAD))
    assert outcomes == [200, 200, 200]
    assert replayed == 2 and connections == 3


def test_a_resend_cut_off_again_is_an_error():
    # Each connection cuts its first answer off: post, resend, both cut: one failure, not a loop.
    outcomes, replayed, connections = asyncio.run(serve_then(0, 2, last_words=HEAD + b"{"))
    assert outcomes == ["CutOff", "CutOff"]
    assert replayed == 2 and connections == 4


def test_the_openai_sdk_resends_an_answer_cut_off_after_its_headers():
    """What README's Faults table tells users: with its default retries, the OpenAI SDK meets
    an answer cut off by a killed replica as a resend, not as a failure."""
    from openai import OpenAI

    data = [{"object": "embedding", "index": 0, "embedding": [0.6, 0.8]}]
    usage = {"prompt_tokens": 1, "total_tokens": 1}
    body = json.dumps({"object": "list", "model": "m", "data": data, "usage": usage}).encode()
    whole = HEAD.replace(b"Content-Length: 2", b"Content-Length: %d" % len(body))
    connections = 0

    async def handle(reader, writer):
        nonlocal connections
        connections += 1
        await read_request(reader)
        writer.write(whole if connections == 1 else whole + body)  # the first: headers only
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=10)
        try:
            return await asyncio.to_thread(client.embeddings.create, model="m", input="x")
        finally:
            server.close()

    created = asyncio.run(main())
    assert created.data[0].embedding == [0.6, 0.8] and connections == 2
