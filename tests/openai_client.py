#!/usr/bin/env python3
"""Drives `lushan serve` with the official `openai` Python package (run by .ci/run).

Usage: python tests/openai_client.py BASE_URL MODEL_ID
Checks completions (plain and streamed), chat (plain and streamed), seeds, stop strings, usage counts,
log-probabilities (completions with echo, chat), concurrent streams (decoded together by the server) giving
the same text as one at a time, and an invalid request (400 naming the parameter). Prints 'N passed, N failed' and exits non-zero on failure.
"""
import math
import sys
from concurrent.futures import ThreadPoolExecutor

import openai
from openai import OpenAI

base, model = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base, api_key="unused")
passed = failed = 0


def check(name, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name} {detail}")


models = client.models.list()
check("models lists the model", [m.id for m in models.data] == [model], [m.id for m in models.data])

r = client.completions.create(model=model, prompt="ROMEO:", max_tokens=24, seed=7, temperature=0.8)
check("completion text", isinstance(r.choices[0].text, str) and len(r.choices[0].text) > 0, r)
check("completion usage", r.usage.completion_tokens == 24 and r.usage.prompt_tokens > 0, r.usage)
check("completion finish_reason length", r.choices[0].finish_reason == "length", r.choices[0].finish_reason)
again = client.completions.create(model=model, prompt="ROMEO:", max_tokens=24, seed=7, temperature=0.8)
check("same seed, same text", again.choices[0].text == r.choices[0].text)

streamed = "".join(
    chunk.choices[0].text
    for chunk in client.completions.create(model=model, prompt="ROMEO:", max_tokens=24, seed=7, temperature=0.8, stream=True)
)
check("streamed text equals the plain one", streamed == r.choices[0].text, (streamed, r.choices[0].text))

greedy = client.completions.create(model=model, prompt="ROMEO:", max_tokens=30, temperature=0).choices[0].text
stop = greedy[5:7] if len(greedy) >= 7 else greedy[:1]
cut = client.completions.create(model=model, prompt="ROMEO:", max_tokens=30, temperature=0, stop=[stop])
check("stop string cuts the text", cut.choices[0].text == greedy[: greedy.find(stop)], (cut.choices[0].text, greedy, stop))
check("stop finish_reason", cut.choices[0].finish_reason == "stop", cut.choices[0].finish_reason)

chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Speak."}], max_tokens=16, seed=3)
check("chat message", chat.choices[0].message.role == "assistant" and isinstance(chat.choices[0].message.content, str), chat)
chunks = list(client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Speak."}], max_tokens=16, seed=3, stream=True))
content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
check("streamed chat equals plain chat", content == chat.choices[0].message.content, (content, chat.choices[0].message.content))

lp = client.completions.create(model=model, prompt="ROMEO:", max_tokens=5, temperature=0, echo=True, logprobs=2)
lps = lp.choices[0].logprobs
check("echo + logprobs score the prompt too",
      "".join(lps.tokens) == lp.choices[0].text and lps.token_logprobs[0] is None
      and all(x <= 0 for x in lps.token_logprobs[1:]) and lps.text_offset[0] == 0, lps)

chat_lp = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Speak."}], max_tokens=6,
                                         temperature=0, logprobs=True, top_logprobs=3)
content_lp = chat_lp.choices[0].logprobs.content
check("chat logprobs: one entry per token with 3 alternatives, greedy picks the first",
      len(content_lp) == chat_lp.usage.completion_tokens
      and all(len(e.top_logprobs) == 3 and e.top_logprobs[0].token == e.token
              and math.isclose(e.top_logprobs[0].logprob, e.logprob, abs_tol=1e-6) for e in content_lp), content_lp)


def stream_text(seed):
    return "".join(chunk.choices[0].text for chunk in client.completions.create(
        model=model, prompt="ROMEO:", max_tokens=40, seed=seed, temperature=1.0, stream=True))


alone = [stream_text(seed) for seed in range(6)]
with ThreadPoolExecutor(max_workers=6) as pool:
    together = list(pool.map(stream_text, range(6)))
check("six concurrent streams equal the same requests one at a time", together == alone, (together, alone))

try:
    client.completions.create(model=model, prompt="ROMEO:", max_tokens=5, temperature=-1)
    check("invalid temperature is refused", False, "no error")
except openai.BadRequestError as e:
    check("invalid temperature is refused naming the param", e.body.get("param") == "temperature", e.body)

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
