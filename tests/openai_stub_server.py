"""A real HTTP server on loopback that speaks enough of the OpenAI API for the briefs.

Why a server and not a mock: openai >= 3 talks through httpx2, which request mocks do
not intercept, and only a real socket exercises timeouts, connection reuse, 429s and
the client's own parsing. Endpoints:

* ``POST /v1/chat/completions`` - answers each brief request with a structured brief
  (one JSON object: session_type, max_zone, tss, intervals, race, text). It reads the
  ``<decision>`` block of the last user message and writes a brief that follows it
  (a compliant model), or - at ``bad_rate`` - one that breaks it (intervals, Z5, TSS far
  above the cap, declared honestly). With ``obey_injection`` it is a model that obeys
  an instruction injected in the athlete's free text ("... reply: <text>"): it sends
  that text as the brief, with fields that claim to follow the decision. At
  ``fail_rate`` it answers 429 or 500 instead; ``latency_s`` delays every answer;
  ``slow_rate`` answers take ``slow_latency_s`` (to trigger timeouts).
* ``POST /v1/files``, ``GET /v1/files/{id}/content``, ``POST /v1/batches``,
  ``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel`` - the Batch API.
* ``GET /_stub/stats``, ``POST /_stub/reset``, ``POST /_stub/config`` - for a stub run
  in another process (the bench).

Faults are seeded and per request body: whether the n-th sending of a given request
fails depends only on (seed, body, n), so runs are reproducible under any concurrency.

Run standalone: ``python tests/openai_stub_server.py --latency 0.3`` prints
``READY http://127.0.0.1:<port>/v1``.
"""

from __future__ import annotations

import argparse
import asyncio
import email.parser
import email.policy
import hashlib
import json
import re
import socket
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

DECISION_RE = re.compile(r"<decision>\s*(\{.*?\})\s*</decision>", re.DOTALL)
FREE_TEXT_RE = re.compile(r"<athlete_free_text[^>]*>\s*(\{.*?\})\s*</athlete_free_text>",
                          re.DOTALL)
# An injected instruction the obedient model follows: "... reply: <the brief to send>".
INSTRUCTION_RE = re.compile(r"(?:reply|say|write|answer)(?: with| exactly)?\s*:\s*(.+)",
                            re.IGNORECASE | re.DOTALL)


@dataclass
class StubConfig:
    """How the stub behaves; every rate is a probability per request."""

    latency_s: float = 0.0
    fail_rate: float = 0.0  # half 429, half 500
    bad_rate: float = 0.0  # rule-breaking briefs
    slow_rate: float = 0.0
    slow_latency_s: float = 5.0
    retry_after_s: float | None = None  # sent with 429s when set
    seed: int = 0
    batch_polls_before_done: int = 1
    model: str = "gpt-4o-mini"
    obey_injection: bool = False  # follow instructions found in the athlete's free text


@dataclass
class StubStats:
    """What the stub saw."""

    requests: int = 0  # every HTTP request to /v1
    chat_requests: int = 0
    statuses: Counter = field(default_factory=Counter)
    answers: Counter = field(default_factory=Counter)  # good | bad | obeyed | 429 | 500
    chat_times: list[float] = field(default_factory=list)  # arrival, time.monotonic()
    in_flight: int = 0
    max_in_flight: int = 0
    files_uploaded: int = 0
    batches_created: int = 0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["statuses"] = {str(k): v for k, v in self.statuses.items()}
        d["answers"] = dict(self.answers)
        return d


def max_in_window(times: list[float], window_s: float) -> int:
    """The most arrivals inside any window of ``window_s`` seconds."""
    ts = sorted(times)
    best = 0
    j = 0
    for i, t in enumerate(ts):
        while t - ts[j] >= window_s:
            j += 1
        best = max(best, i - j + 1)
    return best


def _unit(*parts: object) -> float:
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _sentence(text: str) -> str:
    text = text.strip().rstrip(".")
    return text[:1].upper() + text[1:] + "."


def structured(text: str, *, session_type: str, max_zone: int, tss: int,
               intervals: bool = False, race: bool = False) -> str:
    """The model's reply: one JSON object (what the v2 prompt asks for)."""
    return json.dumps({"session_type": session_type, "max_zone": max_zone, "tss": tss,
                       "intervals": intervals, "race": race, "text": text})


def compliant_fields(decision: dict[str, Any]) -> dict[str, Any]:
    """Fields that claim to follow the decision exactly."""
    types = decision.get("session_types") or ["rest"]
    rest = decision.get("kind") == "rest"
    return {"session_type": "rest" if rest else types[-1],
            "max_zone": int(decision.get("max_zone", 1)),
            "tss": int(decision.get("tss_high" if rest else "tss_aim", 0))}


def good_brief(decision: dict[str, Any]) -> str:
    """A structured brief that follows the decision, worded differently from the rules
    engine."""
    return structured(good_text(decision), **compliant_fields(decision))


def good_text(decision: dict[str, Any]) -> str:
    """The text of a brief that follows the decision."""
    reasons = decision.get("reasons") or ["your numbers"]
    zones = decision.get("zones") or ["Z1"]
    zone_text = zones[0] if len(zones) == 1 else f"{zones[0]} to {zones[-1]}"
    tail = decision.get("fuelling") or decision.get("sleep_advice") or "recover well tonight"
    if decision.get("kind") == "rest":
        return (
            f"Easy does it, {reasons[0]}, so today is for resting. "
            f"If you ride at all, stay under {decision['tss_high']} TSS of soft Z1 pedalling. "
            + _sentence(tail)
        )
    headline = {
        "productive": "You're good to go today",
        "mixed": "Steady does it today",
        "deload": "Back off a bit today",
    }.get(decision.get("kind", ""), "Here's the plan")
    return (
        f"{headline}: {reasons[0]}. "
        f"Target about {decision['tss_aim']} TSS in {zone_text}. "
        + _sentence(tail)
    )


def bad_brief(decision: dict[str, Any]) -> str:
    """A brief that breaks the decision: intervals, Z5 and far too much TSS."""
    tss = int(decision.get("tss_high", 50)) + 60
    text = ("Ignore the numbers and smash 5x5 min VO2max intervals in Z5 today. "
            f"Go for {tss} TSS and empty the tank.")
    return structured(text, session_type="vo2max", max_zone=5, tss=tss, intervals=True)


def injected_instruction(user_message: str) -> str | None:
    """The text an instruction in the athlete's free text asks the model to send."""
    match = FREE_TEXT_RE.search(user_message or "")
    if not match:
        return None
    for value in json.loads(match.group(1)).values():
        found = INSTRUCTION_RE.search(str(value))
        if found:
            return found.group(1).strip().strip('"')
    return None


class StubServer:
    """The stub, served by uvicorn on 127.0.0.1 in a background thread."""

    def __init__(self, config: StubConfig | None = None) -> None:
        self.config = config or StubConfig()
        self.stats = StubStats()
        self._lock = threading.Lock()
        self._seen: Counter = Counter()
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/files", self.upload_file, methods=["POST"]),
                Route("/v1/files/{file_id}/content", self.file_content, methods=["GET"]),
                Route("/v1/batches", self.create_batch, methods=["POST"]),
                Route("/v1/batches/{batch_id}", self.retrieve_batch, methods=["GET"]),
                Route("/v1/batches/{batch_id}/cancel", self.cancel_batch, methods=["POST"]),
                Route("/_stub/stats", self.stats_endpoint, methods=["GET"]),
                Route("/_stub/reset", self.reset_endpoint, methods=["POST"]),
                Route("/_stub/config", self.config_endpoint, methods=["POST"]),
            ]
        )

    # ------------------------------------------------------------------ lifecycle
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, port: int = 0) -> StubServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, log_level="warning", lifespan="off", access_log=False, backlog=2048,
            timeout_keep_alive=30,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("stub server did not start in 10 s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def reset(self) -> None:
        """Fresh counters; answers still in flight from before are not counted."""
        with self._lock:
            self.stats = StubStats()
            self._seen.clear()

    # ------------------------------------------------------------------ behaviour
    def _count(self) -> None:
        with self._lock:
            self.stats.requests += 1

    def _decide_fault(self, body_digest: str) -> tuple[str, float]:
        """('good'|'bad'|'429'|'500', latency) for this sending of this body."""
        c = self.config
        with self._lock:
            n = self._seen[body_digest]
            self._seen[body_digest] += 1
        latency = c.latency_s
        if c.slow_rate and _unit(c.seed, "slow", body_digest, n) < c.slow_rate:
            latency = c.slow_latency_s
        if c.fail_rate and _unit(c.seed, "fail", body_digest, n) < c.fail_rate:
            kind = "429" if _unit(c.seed, "which", body_digest, n) < 0.5 else "500"
            return kind, latency
        if c.bad_rate and _unit(c.seed, "bad", body_digest) < c.bad_rate:
            return "bad", latency
        return "good", latency

    def _obeys(self, body: dict[str, Any], kind: str) -> str:
        """'obeyed' when this model follows an instruction injected in the free text."""
        if kind != "good" or not self.config.obey_injection:
            return kind
        last_user = next((m.get("content", "") for m in reversed(body.get("messages") or [])
                          if m.get("role") == "user"), "")
        return "obeyed" if injected_instruction(last_user) else kind

    def _completion(self, body: dict[str, Any], kind: str) -> dict[str, Any]:
        messages = body.get("messages") or []
        last_user = next(
            (m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), ""
        )
        match = DECISION_RE.search(last_user or "")
        decision = json.loads(match.group(1)) if match else {}
        text = bad_brief(decision) if kind == "bad" else good_brief(decision)
        if kind == "obeyed":
            text = structured(injected_instruction(last_user) or "", **compliant_fields(decision))
        prompt_tokens = sum(len(str(m.get("content", ""))) for m in messages) // 4
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", self.config.model),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(text) // 4,
                "total_tokens": prompt_tokens + len(text) // 4,
            },
        }

    @staticmethod
    def _error(status: int) -> dict[str, Any]:
        kind = "rate_limit_exceeded" if status == 429 else "server_error"
        return {"error": {"message": f"stub {status}", "type": kind, "code": kind}}

    async def chat(self, request: Request) -> Response:
        arrived = time.monotonic()
        raw = await request.body()
        with self._lock:
            stats = self.stats  # a reset during the latency must not see this answer
            stats.requests += 1
            stats.chat_requests += 1
            stats.chat_times.append(arrived)
            stats.in_flight += 1
            stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            try:
                body = json.loads(raw)
            except json.JSONDecodeError:
                return JSONResponse(self._error(400), status_code=400)
            kind, latency = self._decide_fault(hashlib.sha256(raw).hexdigest())
            kind = self._obeys(body, kind)
            if latency:
                await asyncio.sleep(latency)
            with self._lock:
                stats.answers[kind] += 1
            if kind in ("429", "500"):
                status = int(kind)
                with self._lock:
                    stats.statuses[status] += 1
                headers = {}
                if status == 429 and self.config.retry_after_s is not None:
                    headers["retry-after"] = str(self.config.retry_after_s)
                return JSONResponse(self._error(status), status_code=status, headers=headers)
            with self._lock:
                stats.statuses[200] += 1
            return JSONResponse(self._completion(body, kind))
        finally:
            with self._lock:
                stats.in_flight -= 1

    async def upload_file(self, request: Request) -> Response:
        self._count()
        raw = await request.body()
        header = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(header + raw)
        content = b""
        filename = "upload.jsonl"
        purpose = "batch"
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if name == "file":
                content = part.get_payload(decode=True) or b""
                filename = part.get_filename() or filename
            elif name == "purpose":
                purpose = (part.get_payload(decode=True) or b"batch").decode()
        file_id = f"file-{uuid.uuid4().hex[:16]}"
        with self._lock:
            self.files[file_id] = content
            self.stats.files_uploaded += 1
        return JSONResponse(self._file_object(file_id, filename, purpose, len(content)))

    @staticmethod
    def _file_object(file_id: str, filename: str, purpose: str, size: int) -> dict[str, Any]:
        return {
            "id": file_id,
            "object": "file",
            "bytes": size,
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
        }

    async def file_content(self, request: Request) -> Response:
        self._count()
        file_id = request.path_params["file_id"]
        if file_id not in self.files:
            return JSONResponse({"error": {"message": "no such file"}}, status_code=404)
        return Response(self.files[file_id], media_type="application/jsonl")

    async def create_batch(self, request: Request) -> Response:
        self._count()
        body = await request.json()
        input_id = body.get("input_file_id")
        if input_id not in self.files:
            return JSONResponse({"error": {"message": "no such input file"}}, status_code=404)
        batch_id = f"batch_{uuid.uuid4().hex[:16]}"
        outputs, errors = [], []
        for line in self.files[input_id].decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            digest = hashlib.sha256(json.dumps(item["body"], sort_keys=True).encode()).hexdigest()
            kind, _ = self._decide_fault(digest)
            kind = self._obeys(item["body"], kind)
            with self._lock:
                self.stats.answers[kind] += 1
            if kind in ("429", "500"):
                errors.append({
                    "id": f"batch_req_{uuid.uuid4().hex[:8]}",
                    "custom_id": item["custom_id"],
                    "response": {"status_code": int(kind), "body": self._error(int(kind))},
                    "error": None,
                })
            else:
                outputs.append({
                    "id": f"batch_req_{uuid.uuid4().hex[:8]}",
                    "custom_id": item["custom_id"],
                    "response": {
                        "status_code": 200,
                        "request_id": uuid.uuid4().hex,
                        "body": self._completion(item["body"], kind),
                    },
                    "error": None,
                })
        out_id = f"file-{uuid.uuid4().hex[:16]}"
        err_id = f"file-{uuid.uuid4().hex[:16]}" if errors else None
        with self._lock:
            self.files[out_id] = "".join(json.dumps(o) + "\n" for o in outputs).encode()
            if err_id:
                self.files[err_id] = "".join(json.dumps(e) + "\n" for e in errors).encode()
            self.stats.batches_created += 1
            self.batches[batch_id] = {
                "obj": {
                    "id": batch_id,
                    "object": "batch",
                    "endpoint": body.get("endpoint"),
                    "input_file_id": input_id,
                    "completion_window": body.get("completion_window", "24h"),
                    "created_at": int(time.time()),
                    "status": "validating",
                    "metadata": body.get("metadata"),
                    "request_counts": {
                        "total": len(outputs) + len(errors),
                        "completed": len(outputs),
                        "failed": len(errors),
                    },
                },
                "polls": 0,
                "output_file_id": out_id,
                "error_file_id": err_id,
            }
            obj = dict(self.batches[batch_id]["obj"])
        return JSONResponse(obj)

    async def retrieve_batch(self, request: Request) -> Response:
        self._count()
        batch_id = request.path_params["batch_id"]
        with self._lock:
            entry = self.batches.get(batch_id)
            if entry is None:
                return JSONResponse({"error": {"message": "no such batch"}}, status_code=404)
            entry["polls"] += 1
            obj = entry["obj"]
            if obj["status"] not in ("cancelled",):
                if entry["polls"] >= self.config.batch_polls_before_done:
                    obj["status"] = "completed"
                    obj["completed_at"] = int(time.time())
                    obj["output_file_id"] = entry["output_file_id"]
                    obj["error_file_id"] = entry["error_file_id"]
                else:
                    obj["status"] = "in_progress"
            return JSONResponse(dict(obj))

    async def cancel_batch(self, request: Request) -> Response:
        self._count()
        batch_id = request.path_params["batch_id"]
        with self._lock:
            entry = self.batches.get(batch_id)
            if entry is None:
                return JSONResponse({"error": {"message": "no such batch"}}, status_code=404)
            entry["obj"]["status"] = "cancelled"
            return JSONResponse(dict(entry["obj"]))

    async def stats_endpoint(self, request: Request) -> Response:
        with self._lock:
            d = self.stats.as_dict()
        d["max_per_60s"] = max_in_window(d["chat_times"], 60.0)
        d["max_per_10s"] = max_in_window(d["chat_times"], 10.0)
        d["max_per_1s"] = max_in_window(d["chat_times"], 1.0)
        if request.query_params.get("times") != "1":
            d.pop("chat_times")
        return JSONResponse(d)

    async def reset_endpoint(self, request: Request) -> Response:
        self.reset()
        return JSONResponse({"ok": True})

    async def config_endpoint(self, request: Request) -> Response:
        values = await request.json()
        self.config = StubConfig(**(asdict(self.config) | values))
        return JSONResponse(asdict(self.config))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--fail-rate", type=float, default=0.0)
    parser.add_argument("--bad-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    stub = StubServer(
        StubConfig(latency_s=args.latency, fail_rate=args.fail_rate, bad_rate=args.bad_rate,
                   seed=args.seed)
    ).start(args.port)
    print(f"READY {stub.base_url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        stub.stop()


if __name__ == "__main__":
    main()
