"""The embedded demo stream: three small classification tasks generated here from templates.

Support-ticket intent, review sentiment and headline topic: three domains with different label sets, the
situation of a deployed model that gains skills one at a time. Texts are built from hand-written templates
and word lists with a seeded RNG, so the stream is identical on every machine and needs no download.
Train and test texts never overlap.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from scalable_lm.data.tasks import Task

_PRODUCTS = ["router", "phone plan", "laptop", "smart watch", "headphones", "subscription", "printer", "camera",
             "coffee machine", "tablet", "gift card", "vacuum cleaner"]
_TIMES = ["yesterday", "last week", "this morning", "two days ago", "on Monday", "last month", "an hour ago"]

_SUPPORT = {
    "billing": [
        "I was charged twice for my {p} {t}, please check my invoice",
        "Why is my bill for the {p} higher than last month?",
        "The payment for my {p} went through twice, can you fix the charge?",
        "My credit card was billed {n} dollars for the {p} but the price was lower",
        "Please explain the extra fee on my latest invoice for the {p}",
        "I need a copy of the receipt for the {p} I paid for {t}",
    ],
    "delivery": [
        "My {p} order has not arrived and it was due {t}",
        "Where is my package? The tracking for the {p} has not updated since {t}",
        "The courier left my {p} at the wrong address",
        "Can you tell me when the {p} will be shipped?",
        "The box with my {p} arrived damaged {t}",
        "I ordered a {p} {t} and the delivery date keeps moving",
    ],
    "login": [
        "I cannot log in to my account since {t}, it says wrong password",
        "The password reset email never arrives, how do I get into my account?",
        "My account got locked after I entered the code for the {p} app",
        "Two-factor authentication is not sending me a code {t}",
        "I forgot my username and can't sign in to manage my {p}",
        "The app keeps logging me out every few minutes since {t}",
    ],
    "cancellation": [
        "Please cancel my {p} contract, I do not want to renew it",
        "How do I close my account and stop the {p} subscription?",
        "I want to end my {p} plan at the end of this month",
        "Cancel the order for the {p} I placed {t}",
        "I would like to terminate my membership, the {p} is no longer needed",
        "Stop my recurring order of the {p} please, I am cancelling",
    ],
}

_PLACES = ["the bistro", "this hotel", "the pizza place", "the sushi bar", "this cafe", "the steakhouse",
           "the bakery", "this guesthouse", "the noodle shop", "the food truck"]
_SENTIMENT = {
    "positive": [
        "{pl} was {a}, the staff were {s} and I will come back",
        "Absolutely {a} experience at {pl}, the food was {f}",
        "We loved {pl}: {f} dishes and {s} service",
        "Five stars for {pl}, everything was {a}",
        "{pl} exceeded our expectations, {f} meals and a {a} atmosphere",
    ],
    "negative": [
        "{pl} was {b}, the staff were {r} and I will not return",
        "Terrible experience at {pl}, the food was {g}",
        "We regret visiting {pl}: {g} dishes and {r} service",
        "One star for {pl}, everything was {b}",
        "{pl} was a letdown, {g} meals and a {b} atmosphere",
    ],
}
_WORDS = {
    "a": ["wonderful", "excellent", "lovely", "fantastic", "great", "superb"],
    "s": ["friendly", "helpful", "attentive", "kind", "welcoming"],
    "f": ["delicious", "fresh", "tasty", "perfectly cooked", "flavourful"],
    "b": ["awful", "disappointing", "dreadful", "horrible", "bad", "poor"],
    "r": ["rude", "slow", "careless", "unfriendly", "dismissive"],
    "g": ["cold", "bland", "greasy", "stale", "overcooked"],
}

_TEAMS = ["Rovers", "United", "City", "Lions", "Eagles", "Wanderers", "Rangers", "Athletic"]
_LEADERS = ["the prime minister", "the senate", "the opposition leader", "parliament", "the president", "the mayor"]
_FIRMS = ["a chip maker", "a startup", "a search giant", "a phone maker", "a cloud provider", "a robotics firm"]
_TOPIC = {
    "sports": [
        "{tm} beat {tm2} {x} to {y} in the cup final",
        "{tm} striker scores twice as {tm2} slip to defeat",
        "Coach of {tm} sacked after losing run against {tm2}",
        "{tm} sign new goalkeeper ahead of derby with {tm2}",
        "Late goal sends {tm} past {tm2} into the semi-finals",
    ],
    "politics": [
        "{ld} unveils new budget plan as election nears",
        "Vote on tax reform delayed after {ld} rejects the bill",
        "{ld} faces pressure over immigration policy",
        "Coalition talks stall as {ld} refuses compromise",
        "{ld} promises reform of public services in speech",
    ],
    "technology": [
        "{fm} launches faster processor for {p}s",
        "{fm} unveils software update with new AI features",
        "Security flaw found in popular {p} software from {fm}",
        "{fm} releases open source tools for developers",
        "{fm} shows prototype {p} with a foldable screen",
    ],
    "health": [
        "New study links daily walking to lower heart disease risk",
        "Hospitals report rise in flu cases as winter begins in {c}",
        "Doctors warn about sugar intake in children after {c} survey",
        "Trial shows new vaccine reduces infections by {x}0 percent",
        "Health officials in {c} urge more sleep to reduce stress",
    ],
}
_CITIES = ["London", "Madrid", "Toronto", "Sydney", "Berlin", "Chicago", "Lagos", "Mumbai"]


def _fill(template: str, rng: random.Random) -> str:
    teams = rng.sample(_TEAMS, 2)
    values = {"p": rng.choice(_PRODUCTS), "t": rng.choice(_TIMES), "n": rng.randint(10, 300),
              "pl": rng.choice(_PLACES), "tm": teams[0], "tm2": teams[1], "x": rng.randint(1, 9),
              "y": rng.randint(0, 3), "ld": rng.choice(_LEADERS), "fm": rng.choice(_FIRMS),
              "c": rng.choice(_CITIES), **{k: rng.choice(v) for k, v in _WORDS.items()}}
    text = template.format(**values)
    return text[0].upper() + text[1:]


def _task(name: str, templates: dict[str, list[str]], n_train: int, n_test: int, rng: random.Random) -> Task:
    labels = list(templates)
    seen: set[str] = set()
    rows: list[tuple[str, int]] = []
    per_class = (n_train + n_test) // len(labels)
    for y, label in enumerate(labels):
        made, tries = 0, 0
        while made < per_class and tries < per_class * 50:
            tries += 1
            text = _fill(rng.choice(templates[label]), rng)
            if text not in seen:
                seen.add(text)
                rows.append((text, y))
                made += 1
    rng.shuffle(rows)
    n_test = len(rows) * n_test // (n_train + n_test)
    return Task(name, labels, train=rows[n_test:], test=rows[:n_test])


def demo_stream(n_train: int = 200, n_test: int = 80, seed: int = 0) -> list[Task]:
    """The demo stream: support-intent → review-sentiment → headline-topic."""
    rng = random.Random(seed)
    return [
        _task("support-intent", _SUPPORT, n_train, n_test, rng),
        _task("review-sentiment", _SENTIMENT, n_train, n_test, rng),
        _task("headline-topic", _TOPIC, n_train, n_test, rng),
    ]


_QUESTIONS = {"support-intent": "What is this support ticket about? Answer with one word.",
              "review-sentiment": "Is this review positive or negative? Answer with one word.",
              "headline-topic": "What is the topic of this headline? Answer with one word."}


def write_demo_data(directory, n_train: int = 200, n_test: int = 80, seed: int = 0,
                    instructions: bool = False) -> list[Path]:
    """Write the demo stream as ``DIR/<task>/train.jsonl`` and ``test.jsonl``, to try the CLI and the server
    on; returns the files written. Rows are ``{"text", "label"}`` (a classifier), or with ``instructions``
    ``{"instruction", "input", "output"}`` (a generative model: the question, the text, the label as answer)."""
    written = []
    for task in demo_stream(n_train, n_test, seed):
        folder = Path(directory) / task.name
        folder.mkdir(parents=True, exist_ok=True)
        for split, rows in (("train", task.train), ("test", task.test)):
            path = folder / f"{split}.jsonl"
            if instructions:
                lines = [{"instruction": _QUESTIONS[task.name], "input": x, "output": task.label_names[y]} for x, y in rows]
            else:
                lines = [{"text": x, "label": task.label_names[y]} for x, y in rows]
            path.write_text("".join(json.dumps(line) + "\n" for line in lines))
            written.append(path)
    return written
