"""OpenAI Batch API mode: the nightly precompute at half the price.

The same chat requests as `ChatBriefWriter`, written as one JSONL file
(``custom_id`` = the brief's store key), uploaded with ``files.create``, run with
``batches.create`` on ``/v1/chat/completions``, polled until the batch ends, and read
back with ``files.content``. Lines that errored or never came back fall back to the
rules brief with the reason recorded. The budget is applied up front at the batch
price: requests that do not fit are never submitted (reason ``budget``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from veloready_pipeline.briefs.llm import (
    BriefRequest,
    BudgetTracker,
    LLMResult,
    build_client,
    model_price,
)
from veloready_pipeline.config import BriefSettings

CHAT_ENDPOINT = "/v1/chat/completions"
TERMINAL_STATUSES = {"completed", "failed", "expired", "cancelled"}


def build_batch_jsonl(requests: Sequence[BriefRequest], settings: BriefSettings) -> bytes:
    """One JSON line per request, keyed by the store key."""
    lines = [
        json.dumps(
            {
                "custom_id": r.key,
                "method": "POST",
                "url": CHAT_ENDPOINT,
                "body": {
                    "model": settings.model,
                    "messages": r.messages,
                    "temperature": settings.temperature,
                    "max_tokens": settings.max_tokens,
                    "response_format": {"type": "json_object"},
                },
            },
            ensure_ascii=False,
        )
        for r in requests
    ]
    return ("\n".join(lines) + "\n").encode("utf-8")


def parse_batch_output(text: str) -> dict[str, dict[str, Any]]:
    """custom_id -> {status_code, body, error} from an output or error JSONL file."""
    out: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        obj = json.loads(line)
        response = obj.get("response") or {}
        out[str(obj.get("custom_id"))] = {
            "status_code": response.get("status_code"),
            "body": response.get("body") or {},
            "error": obj.get("error"),
        }
    return out


class BatchBriefWriter:
    """Runs one Batch API job for a list of requests.

    Args:
        settings: brief settings (model, poll interval, timeout, retries for the
            file/batch calls, which the SDK retries itself here).
        api_key: the key (None for keyless compatible endpoints).
        budget: the run's budget tracker.
        sleep: the poll wait (injectable so tests do not wait).
    """

    def __init__(
        self,
        settings: BriefSettings,
        api_key: str | None,
        budget: BudgetTracker,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self.api_key = api_key
        self.budget = budget
        self.price = model_price(settings)
        self.sleep = sleep
        self.requests_sent = 0
        self.batch_id: str | None = None

    async def write_all(self, requests: Sequence[BriefRequest]) -> list[LLMResult]:
        s = self.settings
        results = {r.key: LLMResult(key=r.key, model=s.model) for r in requests}
        submit: list[BriefRequest] = []
        reserved: dict[str, float] = {}
        for r in requests:
            worst = self.price.cost(r.estimated_prompt_tokens, s.max_tokens, batch=True)
            if self.budget.reserve(worst):
                submit.append(r)
                reserved[r.key] = worst
            else:
                results[r.key].error = "budget"
        if not submit:
            return [results[r.key] for r in requests]

        client = build_client(s, self.api_key, max_retries=s.max_retries)
        try:
            outputs = await self._run_batch(client, submit)
        except Exception as exc:  # the whole batch failed: every brief falls back
            outputs = {}
            reason = f"batch_error_{type(exc).__name__}"
            for r in submit:
                results[r.key].error = reason
        finally:
            await client.close()

        for r in submit:
            res = results[r.key]
            res.attempts = 1
            got = outputs.get(r.key)
            if got is None:
                res.error = res.error or "batch_missing"
                self.budget.settle(reserved[r.key], 0.0)
                continue
            body = got["body"]
            if got["error"] or (got["status_code"] or 500) >= 400:
                res.error = f"batch_line_{got['status_code'] or 'error'}"
                self.budget.settle(reserved[r.key], 0.0)
                continue
            usage = body.get("usage") or {}
            res.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            res.completion_tokens = int(usage.get("completion_tokens") or 0)
            res.cost_usd = self.price.cost(res.prompt_tokens, res.completion_tokens, batch=True)
            self.budget.settle(reserved[r.key], res.cost_usd)
            choices = body.get("choices") or []
            content = (choices[0].get("message") or {}).get("content") if choices else None
            res.text = (content or "").strip() or None
            res.error = None if res.text else "empty"
            res.model = body.get("model") or s.model
        return [results[r.key] for r in requests]

    async def _run_batch(
        self, client: Any, requests: Sequence[BriefRequest]
    ) -> dict[str, dict[str, Any]]:
        s = self.settings
        payload = build_batch_jsonl(requests, s)
        upload = await client.files.create(
            file=("daily-briefs.jsonl", payload, "application/jsonl"), purpose="batch"
        )
        batch = await client.batches.create(
            input_file_id=upload.id,
            endpoint=CHAT_ENDPOINT,
            completion_window="24h",
            metadata={"flow": "daily-briefs", "prompt_version": s.prompt_version},
        )
        self.requests_sent += 2
        self.batch_id = batch.id
        deadline = time.monotonic() + s.batch_timeout_s
        while batch.status not in TERMINAL_STATUSES:
            if time.monotonic() > deadline:
                await client.batches.cancel(batch.id)
                self.requests_sent += 1
                raise TimeoutError(f"batch {batch.id} not done after {s.batch_timeout_s} s")
            await self.sleep(s.batch_poll_s)
            batch = await client.batches.retrieve(batch.id)
            self.requests_sent += 1
        outputs: dict[str, dict[str, Any]] = {}
        # Expired or cancelled batches may still hold partial output: use what is there.
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                content = await client.files.content(file_id)
                self.requests_sent += 1
                outputs.update(parse_batch_output(content.text))
        return outputs
