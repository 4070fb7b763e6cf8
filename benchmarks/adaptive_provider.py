"""A fake LLM provider that answers by question class, for the adaptive-cache simulation.

Run: ``python -m benchmarks.adaptive_provider PORT CLASS_MAP.json SEED``. ``CLASS_MAP.json`` is
``{"question": class_id, ...}`` (questions as ``adaptive_stream.question_key`` writes them).
``POST .../chat/completions`` answers the last user message with its class's facts in one of
``len(TEMPLATES)`` wordings; ``GET`` answers ``{"status": "ok"}``; a question not in the map
is a 400 naming the problem.

Every class has its own facts (a researcher, a place, a year, a count, two things and an
activity, drawn from ``random.Random(f"{seed}:{class_id}")``): answers of one class agree on
the facts and differ in wording; answers of two classes name different facts. The wording is
chosen by the question's text, so two paraphrases usually get two wordings of the same facts,
the way a model words the same answer differently from one request to the next.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import sys
from pathlib import Path
from typing import Any

import orjson

from benchmarks.adaptive_stream import question_key
from benchmarks.fast_upstream import _Connection, _http

_PLACES = (
    "Lisbon Oslo Nairobi Lima Hanoi Tbilisi Quito Dakar Riga Perth Osaka Tunis Graz Cork Fargo "
    "Bergen Cusco Accra Minsk Lagos Tromso Bilbao Kochi Leeds Hobart Izmir Split Arusha Sapporo "
    "Windhoek Cali Gdansk Nantes Malmo Tartu Cuenca Mendoza Kandy Zadar Kumasi"
).split()
_PEOPLE = (
    "Okafor Lindqvist Moreau Tanaka Haddad Novak Ferreira Kowalski Nguyen Oyelaran Brennan "
    "Castillo Ivanova Sato Mwangi Petrov Alvarez Schultz Rahman Dubois Eriksen Mensah Takahashi "
    "Romano Kaur Lindgren Abebe Horvath Quispe Nakamura Delgado Fischer Osei Varga Ito Moyo"
).split()
_QUALITIES = (
    "amber brittle coastal dense elastic faded granite hollow ivory jagged knotted lunar molten "
    "narrow opaque polar quartz rusty silver tidal velvet woven cedar frosted glazed"
).split()
_THINGS = (
    "valves syrup panels blankets beads lanterns cables gloves bricks barrels scarves hoses cans "
    "poles boots sheets keys tiles candles ropes kettles mirrors ladders sails drums"
).split()
_ACTIVITIES = (
    "calibrating harvesting insulating recycling weaving polishing storing shipping painting "
    "repairing grading sorting curing mapping testing"
).split()

#: one class's facts in different words
TEMPLATES = (
    "{person} showed in {year} that {place} needs {count} {things} for {activity}.",
    "Short answer: {count} {things}. {person} worked this out in {place} in {year}, "
    "while {activity}.",
    "According to {person} ({place}, {year}), {activity} takes {count} {things}.",
    "It comes down to {things}: roughly {count} of them. See {person}'s {year} report from "
    "{place} on {activity}.",
    "In {year}, {person} found that {activity} in {place} uses about {count} {things}.",
)


def class_facts(class_id: int, seed: int) -> dict[str, Any]:
    rng = random.Random(f"{seed}:{class_id}")
    return {
        "person": f"Dr. {rng.choice(_PEOPLE)}-{rng.choice(_PEOPLE)}",
        "place": f"{rng.choice(_PLACES)} near {rng.choice(_PLACES)}",
        "year": rng.randint(1900, 2020),
        "count": rng.randint(2, 999),
        "things": f"{rng.choice(_QUALITIES)} {rng.choice(_THINGS)} and "
        f"{rng.choice(_QUALITIES)} {rng.choice(_THINGS)}",
        "activity": rng.choice(_ACTIVITIES),
    }


def wording_of(question: str) -> int:
    digest = hashlib.sha256(question_key(question).encode()).digest()
    return digest[0] % len(TEMPLATES)


def class_answer(class_id: int, seed: int, wording: int) -> str:
    return TEMPLATES[wording].format(**class_facts(class_id, seed))


def answer_for(question: str, class_map: dict[str, int], seed: int) -> str | None:
    class_id = class_map.get(question_key(question))
    if class_id is None:
        return None
    return class_answer(class_id, seed, wording_of(question))


def completion(text: str, serial: int) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-sim-{serial}",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 20, "total_tokens": 25},
    }


class _ClassProvider(_Connection):
    """``fast_upstream``'s keep-alive protocol with the class answers in place of its echo."""

    class_map: dict[str, int] = {}
    seed = 0
    served = 0

    def answer_post(self, body: bytes) -> bytes:
        try:
            request: Any = orjson.loads(body)
            question = request["messages"][-1]["content"]
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
            return _http(400, b'{"error":{"message":"expected a chat completion request"}}')
        text = (
            answer_for(question, self.class_map, self.seed) if isinstance(question, str) else None
        )
        if text is None:
            return _http(400, b'{"error":{"message":"question not in the class map"}}')
        _ClassProvider.served += 1
        return _http(200, orjson.dumps(completion(text, _ClassProvider.served)))


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_ClassProvider, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m benchmarks.adaptive_provider PORT CLASS_MAP.json SEED")
        return 2
    _ClassProvider.class_map = orjson.loads(Path(argv[1]).read_bytes())
    _ClassProvider.seed = int(argv[2])
    asyncio.run(serve(int(argv[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
