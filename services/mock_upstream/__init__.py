"""`faregate mock-upstream`: a fake LLM provider for tests and the demo, speaking three wire formats.

- OpenAI (`Authorization: Bearer`): POST /v1/chat/completions (stream or not, `n`, `stop`, limits, tools,
  JSON mode, `reasoning_content` for models named *reasoner*), /v1/embeddings, /v1/images/generations,
  GET /v1/models[/{id}] (openai_api.py).
- Anthropic (`x-api-key` or Bearer, `anthropic-version` required): POST /v1/messages (stream or not, tool use,
  thinking, `output_config.format`), /v1/messages/count_tokens (anthropic_api.py).
- Gemini (`x-goog-api-key` or `?key=`): POST /v1beta/models/{model}:generateContent, :streamGenerateContent
  (`alt=sse`, or a JSON array), :countTokens; GET /v1beta/models (gemini_api.py).

Replies are deterministic and never repeat the prompt; usage is counted the same way every time, with cached
prompt tokens for long prompts (content.py). Faults are chosen per request by the `x-mock-fault` header or a
model suffix such as `gpt-4o-mini@fail500` (faults.py). GET /_mock/stats shows what arrived, POST /_mock/reset
clears it (stats.py).
"""
