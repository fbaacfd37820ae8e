"""The LLM provider: chat completions through the official ``openai`` client.

Works against OpenAI or any OpenAI-compatible endpoint (``briefs.base_url``). Thousands
of briefs a night need three brakes, all here and all configuration:

* **concurrency** - at most ``briefs.concurrency`` requests in flight (asyncio);
* **rate** - requests are spaced ``60 / requests_per_minute`` seconds apart, and a log
  of send times keeps any 1 s window under ``rpm / 60`` and any 60 s window under
  ``rpm``, retries included;
* **budget** - every request reserves its worst-case cost before it is sent; once the
  per-run budget cannot cover it, no more requests go out and the brief falls back to
  the rules engine with reason ``budget``.

429s, 5xx, timeouts and connection errors are retried with exponential backoff and
jitter (seeded per brief, so a re-run backs off the same way), honouring
``Retry-After``. The client's own retries are off so every HTTP request is counted,
rate-limited and budgeted here.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from veloready_pipeline.config import BriefSettings

# USD per 1M tokens (input, output), standard tier; the Batch API costs half.
MODEL_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
}
DEFAULT_PRICE_MODEL = "gpt-4o-mini"
BATCH_DISCOUNT = 0.5
KEYLESS_PLACEHOLDER = "sk-no-key-configured"  # many local compatible servers need none


@dataclass(frozen=True)
class Price:
    """Token prices for one model and whether they came from the table."""

    input_per_1m: float
    output_per_1m: float
    known: bool

    def cost(self, prompt_tokens: int, completion_tokens: int, batch: bool = False) -> float:
        usd = (prompt_tokens * self.input_per_1m + completion_tokens * self.output_per_1m) / 1e6
        return usd * (BATCH_DISCOUNT if batch else 1.0)


def model_price(settings: BriefSettings) -> Price:
    """The configured price override, else the table, else gpt-4o-mini's (flagged)."""
    table = MODEL_PRICES.get(settings.model)
    base = table or MODEL_PRICES[DEFAULT_PRICE_MODEL]
    return Price(
        input_per_1m=settings.usd_per_1m_input_tokens
        if settings.usd_per_1m_input_tokens is not None
        else base[0],
        output_per_1m=settings.usd_per_1m_output_tokens
        if settings.usd_per_1m_output_tokens is not None
        else base[1],
        known=table is not None or settings.usd_per_1m_input_tokens is not None,
    )


class RequestRateLimiter:
    """Keeps requests under ``rpm`` per minute, smoothly.

    Two layers: slots spaced ``60 / rpm`` seconds apart (a strict leaky bucket, so the
    load is smooth), and a log of actual send times that allows at most ``ceil(rpm/60)``
    sends in any 1 s and ``rpm`` in any 60 s - so a stalled event loop that wakes up
    with many overdue slots still cannot burst past the limit.

    Thread-safe and loop-agnostic: state changes under a `threading.Lock`, waits use
    `asyncio.sleep`, so chunks in different threads or event loops can share one.
    """

    def __init__(self, requests_per_minute: int) -> None:
        self.interval = 60.0 / requests_per_minute
        self.per_second = max(1, math.ceil(requests_per_minute / 60))
        self.per_minute = requests_per_minute
        self._next = 0.0
        self._sent: deque[float] = deque()
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Reserve the next spaced slot; returns how long to wait for it."""
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
            return slot - now

    def try_send(self) -> float:
        """0 (and the send is logged) when the windows allow a send now, else the wait."""
        with self._lock:
            now = time.monotonic()
            while self._sent and self._sent[0] <= now - 60.0:
                self._sent.popleft()
            if len(self._sent) >= self.per_minute:
                return self._sent[0] + 60.0 - now
            recent = 0
            for sent in reversed(self._sent):
                if sent <= now - 1.0:
                    break
                recent += 1
                if recent >= self.per_second:
                    return sent + 1.0 - now
            self._sent.append(now)
            return 0.0

    def recent_sends(self) -> list[float]:
        """`time.monotonic()` of the sends still in the 60 s log (for benches and tests)."""
        with self._lock:
            return list(self._sent)

    async def acquire(self) -> None:
        wait = self.reserve()
        if wait > 0:
            await asyncio.sleep(wait)
        while (wait := self.try_send()) > 0:
            await asyncio.sleep(wait)


_LIMITERS: dict[tuple[str, str, int], RequestRateLimiter] = {}
_LIMITERS_LOCK = threading.Lock()


def shared_limiter(settings: BriefSettings) -> RequestRateLimiter:
    """One limiter per (endpoint, model, rpm) in this process, shared by all chunks."""
    key = (settings.base_url or "openai", settings.model, settings.requests_per_minute)
    with _LIMITERS_LOCK:
        if key not in _LIMITERS:
            _LIMITERS[key] = RequestRateLimiter(settings.requests_per_minute)
        return _LIMITERS[key]


class BudgetTracker:
    """A per-run spending cap: reserve worst-case cost, then settle the actual cost."""

    def __init__(self, budget_usd: float) -> None:
        self.budget_usd = budget_usd
        self.spent_usd = 0.0
        self._reserved = 0.0
        self._lock = threading.Lock()

    def reserve(self, usd: float) -> bool:
        """True (and held) when ``usd`` still fits under the budget."""
        with self._lock:
            if self.spent_usd + self._reserved + usd > self.budget_usd:
                return False
            self._reserved += usd
            return True

    def settle(self, reserved: float, actual: float) -> None:
        with self._lock:
            self._reserved -= reserved
            self.spent_usd += actual

    @property
    def remaining_usd(self) -> float:
        return max(0.0, self.budget_usd - self.spent_usd - self._reserved)


@dataclass(frozen=True)
class BriefRequest:
    """One chat request to make: the store key it belongs to and its messages."""

    key: str
    messages: list[dict[str, str]]
    estimated_prompt_tokens: int


@dataclass
class LLMResult:
    """What came back for one request (text) or why nothing usable did (error)."""

    key: str
    text: str | None = None
    error: str | None = None  # budget | rate_limited | server_error | timeout | ...
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    attempts: int = 0
    model: str | None = None
    latency_s: float = 0.0
    errors_seen: list[str] = field(default_factory=list)


def build_client(
    settings: BriefSettings,
    api_key: str | None,
    max_retries: int = 0,
    on_request: Callable[[Any], Awaitable[None]] | None = None,
) -> Any:
    """An `AsyncOpenAI` client; SDK retries off by default (we retry, count and limit).

    Args:
        on_request: awaited by the HTTP client right before each request goes on the
            wire - where the rate limiter belongs, after the SDK's own (CPU-heavy)
            request building, so a busy event loop cannot bunch requests up.
    """
    import openai

    http_client = None
    if on_request is not None:
        http_client = openai.DefaultAsyncHttpxClient(event_hooks={"request": [on_request]})
    return openai.AsyncOpenAI(
        api_key=api_key or KEYLESS_PLACEHOLDER,
        base_url=settings.base_url,
        max_retries=max_retries,
        timeout=settings.timeout_s,
        http_client=http_client,
    )


def classify_error(exc: BaseException) -> tuple[str, bool, float | None]:
    """(reason, retryable, retry-after seconds) for an exception from the client."""
    import openai

    if isinstance(exc, openai.APITimeoutError | asyncio.TimeoutError):
        return "timeout", True, None
    if isinstance(exc, openai.APIConnectionError):
        return "connection", True, None
    if isinstance(exc, openai.APIStatusError):
        retry_after = None
        header = exc.response.headers.get("retry-after") if exc.response is not None else None
        if header:
            try:
                retry_after = float(header)
            except ValueError:
                retry_after = None
        if exc.status_code == 429:
            return "rate_limited", True, retry_after
        if exc.status_code >= 500:
            return "server_error", True, retry_after
        if exc.status_code == 408:
            return "timeout", True, retry_after
        return f"api_error_{exc.status_code}", False, None
    return f"error_{type(exc).__name__}", False, None


def backoff_delay(
    attempt: int, base_s: float, max_s: float, rng: random.Random, retry_after: float | None
) -> float:
    """Exponential backoff with equal jitter, at least ``Retry-After``, at most ``max_s``."""
    delay = min(max_s, base_s * (2**attempt))
    delay = delay * (0.5 + 0.5 * rng.random())
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, max_s)


class ChatBriefWriter:
    """Sends chat-completion requests under the concurrency, rate and budget limits.

    Args:
        settings: the brief settings (model, limits, retries).
        api_key: the key (None for keyless compatible endpoints).
        seed: the run's seed; each brief's jitter comes from ``(seed, key)``.
        budget: the run's budget tracker (shared across chunks by the caller).
        limiter: request spacing; defaults to the process-wide shared limiter.
    """

    def __init__(
        self,
        settings: BriefSettings,
        api_key: str | None,
        seed: int,
        budget: BudgetTracker,
        limiter: RequestRateLimiter | None = None,
    ) -> None:
        self.settings = settings
        self.api_key = api_key
        self.seed = seed
        self.budget = budget
        self.limiter = limiter or shared_limiter(settings)
        self.price = model_price(settings)
        self.requests_sent = 0

    def worst_case_cost(self, request: BriefRequest) -> float:
        return self.price.cost(request.estimated_prompt_tokens, self.settings.max_tokens)

    async def write_all(self, requests: Sequence[BriefRequest]) -> list[LLMResult]:
        """Results in the order of ``requests``."""
        if not requests:
            return []
        async def on_request(_request: Any) -> None:
            await self.limiter.acquire()
            self.requests_sent += 1

        client = build_client(self.settings, self.api_key, on_request=on_request)
        semaphore = asyncio.Semaphore(self.settings.concurrency)

        async def bounded(req: BriefRequest) -> LLMResult:
            async with semaphore:
                return await self._write_one(client, req)

        try:
            return list(await asyncio.gather(*(bounded(r) for r in requests)))
        finally:
            await client.close()

    async def _write_one(self, client: Any, request: BriefRequest) -> LLMResult:
        s = self.settings
        result = LLMResult(key=request.key, model=s.model)
        rng = random.Random(f"{self.seed}:{request.key}")
        started = time.monotonic()
        for attempt in range(s.max_retries + 1):
            reserve = self.worst_case_cost(request)
            if not self.budget.reserve(reserve):
                result.error = "budget"
                break
            result.attempts += 1
            try:
                response = await client.chat.completions.create(
                    model=s.model,
                    messages=request.messages,
                    temperature=s.temperature,
                    max_tokens=s.max_tokens,
                    response_format={"type": "json_object"},  # a structured brief
                )
            except Exception as exc:  # classified below; unknown errors are not retried
                self.budget.settle(reserve, 0.0)
                reason, retryable, retry_after = classify_error(exc)
                result.errors_seen.append(reason)
                result.error = reason
                if not retryable or attempt == s.max_retries:
                    break
                await asyncio.sleep(
                    backoff_delay(attempt, s.retry_base_s, s.retry_max_s, rng, retry_after)
                )
                continue
            usage = getattr(response, "usage", None)
            prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
            completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
            cost = self.price.cost(prompt_tokens, completion_tokens)
            self.budget.settle(reserve, cost)
            result.prompt_tokens += prompt_tokens
            result.completion_tokens += completion_tokens
            result.cost_usd += cost
            content = response.choices[0].message.content if response.choices else None
            result.text = (content or "").strip() or None
            result.error = None if result.text else "empty"
            result.model = getattr(response, "model", None) or s.model
            break
        result.latency_s = time.monotonic() - started
        return result
