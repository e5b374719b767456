#!/usr/bin/env python3
"""Asks a running `lushan serve` every question of a chat JSONL file through the official `openai` client
(`/v1/chat/completions`, greedy) and counts the answers equal to the taught one (whitespace-trimmed).

    lushan serve --model OUT/final --port 8080 &
    venv/bin/python tools/chat_served_exact_match.py http://127.0.0.1:8080/v1 DATA/train.jsonl [--limit N]

For each record, the messages before its last assistant turn are sent; that turn is the reference. Prints
the share of exact answers and a few misses; exits 1 if the server cannot be reached. Some conversations
occur several times in a data set with different answers (the same question taught two ways); the second
figure counts a reply as taught when it equals any answer the file gives to that same conversation.
"""
import argparse
import json
import re
import sys

from openai import BadRequestError, OpenAI

ap = argparse.ArgumentParser()
ap.add_argument("base_url")
ap.add_argument("data")
ap.add_argument("--limit", type=int, default=0)
ap.add_argument("--max-tokens", type=int, default=64)
args = ap.parse_args()

client = OpenAI(base_url=args.base_url, api_key="none")
model = client.models.list().data[0].id
total = exact = taught = skipped = 0
misses = []


def split(messages):
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    key = json.dumps([(m["role"], m["content"]) for m in messages[:last]], ensure_ascii=False)
    return last, key


with open(args.data, encoding="utf-8") as f:
    records = [json.loads(line)["messages"] for line in f if line.strip()]
answers_for = {}
for messages in records:
    last, key = split(messages)
    answers_for.setdefault(key, set()).add(messages[last]["content"].strip())
ambiguous = sum(1 for answers in answers_for.values() if len(answers) > 1)
for messages in records:
    last, key = split(messages)
    try:
        reply = client.chat.completions.create(
            model=model, messages=messages[:last], temperature=0, max_tokens=args.max_tokens
        )
    except BadRequestError as e:
        # A long conversation leaves less room than --max-tokens: ask for what fits the context.
        if "conversation has" in str(e):
            skipped += 1  # longer than the model's context: the server refuses it
            continue
        found = re.search(r"prompt has (\d+) tokens.*context of (\d+)", str(e))
        if not found or int(found[2]) <= int(found[1]):
            raise
        reply = client.chat.completions.create(
            model=model, messages=messages[:last], temperature=0, max_tokens=int(found[2]) - int(found[1])
        )
    answer = (reply.choices[0].message.content or "").strip()
    reference = messages[last]["content"].strip()
    total += 1
    if answer == reference:
        exact += 1
    if answer in answers_for[key]:
        taught += 1
    if answer != reference and len(misses) < 5:
        misses.append((messages[last - 1]["content"], reference, answer))
    if args.limit and total >= args.limit:
        break
for question, reference, answer in misses:
    print(f"miss: {question!r}\n  taught:    {reference!r}\n  answered:  {answer!r}")
print(f"{exact} of {total} answers equal the taught answer ({100.0 * exact / max(total, 1):.1f} %); "
      f"{skipped} conversations longer than the context skipped")
print(f"{taught} of {total} equal one of the answers taught for that conversation "
      f"({100.0 * taught / max(total, 1):.1f} %); {ambiguous} of {len(answers_for)} distinct conversations "
      f"are taught with more than one answer")
