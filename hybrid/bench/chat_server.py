"""A real chat-completions server on 127.0.0.1 for tests and `hybrid bench llm` (stdlib only).

It speaks enough of the OpenAI protocol for the `openai` client: `POST /v1/chat/completions` (with
`response_format: json_schema`, `usage` tokens) and `GET /v1/models`. Each test scripts it:

    with ChatServer(latency=0.2, p429=0.1, p500=0.05, seed=1) as server:   # random faults, seeded
        server.push("429", "500", "hang", "malformed_body", "bad_json", "schema_mismatch")  # next answers, in order
        server.answer = lambda body, schema_name: {...}                      # what a good answer holds
        ... server.base_url ... server.requests ... server.max_in_window(10.0)

Every request is recorded (time, path, fault served, schema name, messages); the Authorization header is only
checked (`auth_ok`), never stored.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULTS = ("ok", "429", "500", "hang", "malformed_body", "bad_json", "schema_mismatch", "truncated")
_ID_RE = re.compile(r"`([^`\s]+::[^`\s]+::[^`\s]+)`")


@dataclass
class RecordedRequest:
    t: float  # time.monotonic() on arrival
    method: str
    path: str
    fault: str
    status: int
    schema_name: str | None = None
    model: str | None = None
    messages: list = field(default_factory=list)
    auth_ok: bool = True
    answered: bool = False  # the whole response was written

    def prompt_text(self) -> str:
        return "\n".join(str(m.get("content") or "") for m in self.messages)


def default_answer(body: dict, schema_name: str | None) -> Any:
    """A plausible valid answer for the schemas the stages use (deterministic per prompt)."""
    text = "\n".join(str(m.get("content") or "") for m in body.get("messages", []))
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    if schema_name == "tasks":
        ids = list(dict.fromkeys(_ID_RE.findall(text)))
        return {
            "tasks": [
                {
                    "description": f"Implement the change described by the commit (variant {digest}).",
                    "function_ids": ids[:3],
                }
            ]
        }
    if schema_name == "reasoning":
        return {
            "reasoning": f"I changed this function because the task asked for it; I kept the interface stable "
            f"and made the smallest edit that works ({digest})."
        }
    if schema_name == "ping":
        return {"ok": True, "word": "pong"}
    return {"answer": digest}


class ChatServer:
    def __init__(
        self,
        *,
        latency: float | Callable[[], float] = 0.0,
        p429: float = 0.0,
        p500: float = 0.0,
        retry_after: float | None = 1.0,
        retry_after_ms: float | None = None,
        seed: int = 0,
        api_key: str | None = None,
        models: tuple[str, ...] = ("test-model",),
        hang_s: float = 60.0,
        supports_json_schema: bool = True,
    ):
        self.latency = latency
        self.p429, self.p500 = p429, p500
        self.retry_after, self.retry_after_ms = retry_after, retry_after_ms
        self.api_key = api_key
        self.models = models
        self.hang_s = hang_s
        self.supports_json_schema = supports_json_schema
        self.answer: Callable[[dict, str | None], Any] = default_answer
        # Optional: a fault chosen by the request's content (e.g. always 500 for one function), checked first.
        self.fault_rule: Callable[[dict], str | None] | None = None
        self.requests: list[RecordedRequest] = []
        self._script: deque[str] = deque()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------ scripting
    def push(self, *faults: str) -> None:
        """The next chat requests get these faults, in order (then the random/ok behaviour resumes)."""
        for fault in faults:
            if fault not in FAULTS:
                raise ValueError(f"unknown fault {fault!r} (choose from {', '.join(FAULTS)})")
        with self._lock:
            self._script.extend(faults)

    def chat_requests(self) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def max_in_window(self, window_s: float) -> int:
        """The largest number of chat requests that arrived within any `window_s` seconds."""
        times = sorted(r.t for r in self.chat_requests())
        best, lo = 0, 0
        for hi, t in enumerate(times):
            while t - times[lo] >= window_s:
                lo += 1
            best = max(best, hi - lo + 1)
        return best

    def _next_fault(self, body: dict) -> str:
        if self.fault_rule is not None:
            fault = self.fault_rule(body)
            if fault:
                return fault
        with self._lock:
            if self._script:
                return self._script.popleft()
            r = self._rng.random()
        if r < self.p429:
            return "429"
        if r < self.p429 + self.p500:
            return "500"
        return "ok"

    # ------------------------------------------------------------------------------------------ lifecycle
    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> ChatServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers
            disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms delayed-ACK stall

            _record: RecordedRequest | None = None

            def log_message(self, format, *args):  # quiet; and never echo headers
                pass

            def _send(self, status: int, payload: bytes, headers: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)
                self.wfile.flush()
                if self._record is not None:
                    self._record.answered = True

            def _auth_ok(self) -> bool:
                if server.api_key is None:
                    return True
                return self.headers.get("Authorization", "") == f"Bearer {server.api_key}"

            def do_GET(self):
                t = time.monotonic()
                self._record = None
                ok = self._auth_ok()
                status = 200 if ok else 401
                with server._lock:
                    server.requests.append(RecordedRequest(t, "GET", self.path, "ok", status, auth_ok=ok))
                if not ok:
                    return self._send(
                        401,
                        json.dumps(
                            {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}
                        ).encode(),
                    )
                if self.path.rstrip("/").endswith("/models"):
                    data = [{"id": m, "object": "model", "created": 0, "owned_by": "test"} for m in server.models]
                    return self._send(200, json.dumps({"object": "list", "data": data}).encode())
                self._send(404, json.dumps({"error": {"message": f"no route {self.path}"}}).encode())

            def do_POST(self):
                t = time.monotonic()
                self._record = None
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    body = {}
                ok = self._auth_ok()
                fmt = body.get("response_format") or {}
                schema_name = (fmt.get("json_schema") or {}).get("name") if fmt.get("type") == "json_schema" else None
                is_chat = self.path.rstrip("/").endswith("/chat/completions")
                fault = server._next_fault(body) if (is_chat and ok) else "ok"
                record = RecordedRequest(
                    t,
                    "POST",
                    self.path,
                    fault,
                    200,
                    schema_name,
                    body.get("model"),
                    list(body.get("messages") or []),
                    ok,
                )
                self._record = record
                with server._lock:
                    server.requests.append(record)
                if not is_chat:
                    record.status = 404
                    return self._send(404, json.dumps({"error": {"message": f"no route {self.path}"}}).encode())
                if not ok:
                    record.status = 401
                    return self._send(
                        401,
                        json.dumps(
                            {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}
                        ).encode(),
                    )
                if body.get("model") not in server.models:
                    record.status = 404
                    return self._send(
                        404,
                        json.dumps(
                            {
                                "error": {
                                    "message": f"model {body.get('model')!r} not found",
                                    "type": "invalid_request_error",
                                }
                            }
                        ).encode(),
                    )
                if fmt.get("type") == "json_schema" and not server.supports_json_schema:
                    record.status = 400
                    return self._send(
                        400,
                        json.dumps(
                            {
                                "error": {
                                    "message": "response_format json_schema is not supported",
                                    "type": "invalid_request_error",
                                }
                            }
                        ).encode(),
                    )
                latency = server.latency() if callable(server.latency) else server.latency
                if fault == "hang":
                    server._stop.wait(server.hang_s)  # the client times out first
                    self.close_connection = True
                    return
                if latency > 0:
                    server._stop.wait(latency)
                if fault == "429":
                    record.status = 429
                    headers = {}
                    if server.retry_after is not None:
                        headers["retry-after"] = f"{server.retry_after:g}"
                    if server.retry_after_ms is not None:
                        headers["retry-after-ms"] = f"{server.retry_after_ms:g}"
                    return self._send(
                        429,
                        json.dumps(
                            {
                                "error": {
                                    "message": "Rate limit reached",
                                    "type": "requests",
                                    "code": "rate_limit_exceeded",
                                }
                            }
                        ).encode(),
                        headers,
                    )
                if fault == "500":
                    record.status = 500
                    return self._send(
                        500,
                        json.dumps({"error": {"message": "The server had an error", "type": "server_error"}}).encode(),
                    )
                if fault == "malformed_body":
                    return self._send(200, b'{"id": "chatcmpl-x", "choices": [ {"mess')
                if fault == "bad_json":
                    content = "Sure! Here is the JSON you asked for: {tasks: [oops"
                elif fault == "schema_mismatch":
                    content = json.dumps({"unexpected": True})
                else:
                    answer = server.answer(body, schema_name)
                    content = answer if isinstance(answer, str) else json.dumps(answer)
                finish = "length" if fault == "truncated" else "stop"
                if fault == "truncated":
                    content = content[: max(1, len(content) // 2)]
                prompt_chars = sum(len(str(m.get("content") or "")) for m in body.get("messages") or [])
                usage = {"prompt_tokens": prompt_chars // 4 + 1, "completion_tokens": len(content) // 4 + 1}
                usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
                payload = {
                    "id": f"chatcmpl-{len(server.requests)}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content},
                            "finish_reason": finish,
                            "logprobs": None,
                        }
                    ],
                    "usage": usage,
                }
                self._send(200, json.dumps(payload).encode())

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="chat-test-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
