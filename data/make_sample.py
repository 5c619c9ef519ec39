"""Generate the embedded sample corpus: short math word problems with R1-style traces.

    python data/make_sample.py            # writes segsft/data/sample_traces.jsonl (seed 0, 36 rows)

Each trace works the problem, then reflects in segments that open with the design's
keywords ("\\n\\nWait", "\\n\\nAlternatively", "\\n\\nHowever", "\\n\\nGoing back", ...):
re-checks, a second method, a dead end that is abandoned, and a final \\boxed{} answer.
Answers are computed, so they are right. Deterministic from the seed.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Callable

OUT = Path(__file__).resolve().parent.parent / "segsft" / "data" / "sample_traces.jsonl"  # shipped in the package

Problem = tuple[str, list[str], str, list[str], list[str]]  # question, work, answer, checks, dead ends


def _apples(r: random.Random) -> Problem:
    boxes, per, eaten = r.randint(3, 9), r.randint(6, 15), r.randint(2, 9)
    total = boxes * per - eaten
    q = f"A grocer has {boxes} boxes with {per} apples in each box. Customers eat {eaten} apples as samples. How many apples are left?"
    work = [f"First, count all the apples: {boxes} boxes times {per} apples per box is {boxes * per} apples.",
            f"Then remove the {eaten} apples that were eaten: {boxes * per} - {eaten} = {total}."]
    checks = [f"{boxes} x {per}: {per} + {per} repeated {boxes} times gives {boxes * per}, so the product is right.",
              f"Adding back: {total} + {eaten} = {boxes * per}, which matches the total."]
    dead = [f"maybe the samples come from each box, so {boxes} x {eaten} = {boxes * eaten} apples are gone? "
            "No, the problem says the customers eat that many apples in all, not per box."]
    return q, work, str(total), checks, dead


def _train(r: random.Random) -> Problem:
    # Speeds divisible by 4 keep every quarter-hour distance a whole number.
    speed, hours, extra = r.choice([40, 48, 60, 72, 80]), r.randint(2, 6), r.choice([15, 30, 45])
    dist = speed * hours + speed * extra // 60
    q = f"A train travels at {speed} km/h for {hours} hours and {extra} minutes. How many kilometres does it travel?"
    work = [f"Distance is speed times time. {hours} hours and {extra} minutes is {hours} + {extra}/60 hours.",
            f"In {hours} hours the train covers {speed} x {hours} = {speed * hours} km.",
            f"In {extra} minutes it covers {speed} x {extra}/60 = {speed * extra // 60} km.",
            f"Together: {speed * hours} + {speed * extra // 60} = {dist} km."]
    checks = [f"{extra} minutes is {extra / 60:g} of an hour, and {speed} x {extra / 60:g} = {speed * extra / 60:g}. Good.",
              f"Total time {hours + extra / 60:g} h times {speed} km/h is {speed * (hours + extra / 60):g} km."]
    dead = [f"should I read {hours}.{extra} as a decimal number of hours? That would give {speed} x {hours}.{extra} = "
            f"{speed * float(f'{hours}.{extra}'):g}, but minutes are sixtieths of an hour, not hundredths, so that is wrong."]
    return q, work, str(dist), checks, dead


def _rectangle(r: random.Random) -> Problem:
    w, extra = r.randint(3, 12), r.randint(2, 9)
    length = w + extra
    per = 2 * (w + length)
    q = f"A rectangle is {extra} cm longer than it is wide, and its width is {w} cm. What is its perimeter in cm?"
    work = [f"The length is {w} + {extra} = {length} cm.",
            f"The perimeter is 2 x (width + length) = 2 x ({w} + {length}) = 2 x {w + length} = {per} cm."]
    checks = [f"Adding the four sides one by one: {w} + {length} + {w} + {length} = {per}.",
              f"The area would be {w} x {length} = {w * length}, but the question asks for the perimeter, so {per} stands."]
    dead = [f"is the answer the area, {w * length}? No: the perimeter is the distance around, not the surface."]
    return q, work, str(per), checks, dead


def _percent(r: random.Random) -> Problem:
    # Prices divisible by 20 keep every discount a whole number of dollars.
    price, pct = r.choice([40, 60, 80, 120, 160, 200, 240]), r.choice([10, 15, 20, 25, 30])
    off = price * pct // 100
    q = f"A jacket costs {price} dollars. It is on sale for {pct}% off. What is the sale price in dollars?"
    work = [f"The discount is {pct}% of {price}, which is {price} x {pct}/100 = {off} dollars.",
            f"The sale price is {price} - {off} = {price - off} dollars."]
    checks = [f"{100 - pct}% of {price} is {price} x {100 - pct}/100 = {price * (100 - pct) // 100}. Same answer.",
              f"{off} is {pct}% of {price} because {off}/{price} = {off / price:g}."]
    dead = [f"maybe the {pct}% is added as tax, giving {price + off}? No, 'off' means it is taken away."]
    return q, work, str(price - off), checks, dead


def _consecutive(r: random.Random) -> Problem:
    n, start = r.randint(3, 7), r.randint(4, 30)
    nums = list(range(start, start + n))
    s = sum(nums)
    q = f"The sum of {n} consecutive integers is {s}. What is the largest of them?"
    mid = s / n
    work = [f"Call the smallest x. The integers are x, x+1, ..., x+{n - 1}, and their sum is {n}x + {n * (n - 1) // 2}.",
            f"So {n}x + {n * (n - 1) // 2} = {s}, which gives {n}x = {s - n * (n - 1) // 2} and x = {start}.",
            f"The largest is x + {n - 1} = {start + n - 1}."]
    checks = [f"Listing them: {', '.join(map(str, nums))}. Their sum is {s}.",
              f"The average is {s}/{n} = {mid:g}, the middle of the run, which fits."]
    dead = [f"maybe divide {s} by {n} and take that as the largest, {mid:g}? No, that is the average, the middle value."]
    return q, work, str(start + n - 1), checks, dead


def _ages(r: random.Random) -> Problem:
    child, mult, years = r.randint(4, 12), r.choice([2, 3, 4]), r.randint(3, 10)
    parent = child * mult
    q = (f"A mother is {mult} times as old as her son. The son is {child} years old. "
         f"How old will the mother be in {years} years?")
    work = [f"The mother is now {mult} x {child} = {parent} years old.",
            f"In {years} years she will be {parent} + {years} = {parent + years}."]
    checks = [f"In {years} years the son will be {child + years}; the mother {parent + years}; the difference stays {parent - child}.",
              f"{parent} / {child} = {mult}, so the present ages are right."]
    dead = [f"should I multiply the future age of the son, {child + years} x {mult} = {(child + years) * mult}? "
            "No, the ratio holds now, not in the future."]
    return q, work, str(parent + years), checks, dead


def _work(r: random.Random) -> Problem:
    a, b = r.choice([(3, 6), (4, 12), (6, 12), (10, 15), (12, 24), (20, 30)])
    t = a * b // (a + b) if a * b % (a + b) == 0 else None
    if t is None:
        a, b = 3, 6
        t = 2
    q = f"One pipe fills a tank in {a} hours and another in {b} hours. Working together, how many hours do they take?"
    work = [f"The first pipe fills 1/{a} of the tank per hour and the second 1/{b}.",
            f"Together they fill 1/{a} + 1/{b} = {b + a}/{a * b} of the tank per hour.",
            f"So the time is {a * b}/{a + b} = {t} hours."]
    checks = [f"In {t} hours the first fills {t}/{a} and the second {t}/{b}; {t}/{a} + {t}/{b} = 1. Full tank.",
              f"The answer is below {a} hours, as it must be when a second pipe helps."]
    dead = [f"average the times, ({a} + {b})/2 = {(a + b) / 2:g}? No, rates add, not times."]
    return q, work, str(t), checks, dead


KINDS: list[Callable[[random.Random], Problem]] = [_apples, _train, _rectangle, _percent, _consecutive, _ages, _work]
OPENERS = ["Okay, let me work through this problem.", "Alright, so I need to figure this out carefully.",
           "Let me start by reading the problem again."]
FILLER = ["Let me write down what is given before computing anything.",
          "I will keep the units in mind as I go.",
          "It helps to name each quantity so nothing gets mixed up.",
          "Nothing in the statement looks like a trick, but I will be careful."]


def trace(r: random.Random, problem: Problem) -> str:
    q, work, answer, checks, dead = problem
    parts = [f"{r.choice(OPENERS)} The question: {q} {r.choice(FILLER)}\n\n" + "\n".join(work)]
    reflections = [
        f"\n\nWait, let me double-check that. {checks[0]} So far the result is {answer}.",
        f"\n\nAlternatively, I can check it another way. {checks[1]}",
        f"\n\nHmm, {dead[0]}",
        f"\n\nGoing back to my first computation, {work[-1]} That still holds.",
        f"\n\nBut wait, did I read the question right? {q} Yes, it asks exactly for what I computed.",
        f"\n\nHowever, I should make sure no step was skipped. {' '.join(work)}",
        f"\n\nAnother way to see it: {checks[r.randrange(len(checks))]} {r.choice(FILLER)}",
    ]
    chosen = r.sample(reflections, k=r.randint(3, len(reflections)))
    parts += chosen
    parts.append(f"\n\nWait, one more time to be sure: {checks[0]} I'm confident the answer is {answer}."
                 f"\n\nSo the final answer is \\boxed{{{answer}}}.")
    return "".join(parts)


def generate(n: int = 36, seed: int = 0) -> list[dict]:
    r = random.Random(seed)
    rows = []
    for i in range(n):
        problem = KINDS[i % len(KINDS)](r)
        assert "." not in problem[2], problem  # answers are whole numbers by construction
        rows.append({"id": f"sample-{i:03d}", "question": problem[0], "solution": trace(r, problem), "answer": problem[2]})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=36)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(OUT))
    a = p.parse_args()
    rows = generate(a.n, a.seed)
    Path(a.out).write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"wrote {len(rows)} traces to {a.out}")


if __name__ == "__main__":
    main()
