"""Daily coaching briefs: inputs, rules engine, LLM writer, guardrails and store.

Modules, in the order the daily-briefs flow uses them: `inputs` (validated per-athlete
inputs from canonical rows), `rules` (the design's decision rules and the rules brief),
`prompt` (versioned system prompt + few-shot, user message), `llm` / `batch` (OpenAI
chat completions or Batch API under concurrency, rate and budget limits),
`guardrails` (LLM brief vs rules decision), `store` (keyed records, valid 24 h),
`service` (the stages as plain functions) and `cli` (``veloready briefs``).
Nothing is imported here, so importing the package stays cheap.
"""
