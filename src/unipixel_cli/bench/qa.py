"""Multiple-choice scoring shared by VideoRefer-Bench-Q, PixelQA and MVBench: the answer-letter
parsing and per-task accuracy table of the authors' `eval_general.py`.

Their parsing: lower-case the response (the text generated after the answer prefix, e.g. after
"Best Option: ("), take what precedes the first space, drop "(", ")" and "."; if more than one
character is left keep the first; a letter outside the options counts as "Failed" (and wrong).
Their table: tasks in name order, `#Samples`, `Failed`, `Acc` = correct / samples, and `all`
pooled over every sample (not a mean of the tasks).

Where they differ from us, on purpose: a response with no first word (empty, starting with a
space, or a first word of only "(", ")" and ".", e.g. "()" or "(. B") makes their `b[0]` raise and
the whole evaluation stop; an item without a response is silently left out of every count. Here
both are counted as samples, scored wrong, added to `Failed`, and listed in summary.json.
"""

from __future__ import annotations

from collections import defaultdict

from .base import Benchmark, Item, ItemResult, Prediction

BEST_OPTION = "\nPlease only give the best option."
ANSWER_PREFIXES = ("Best Option: (", "The best option is (")  # MVBench, VideoRefer-Q / PixelQA


class UnscorableAnswer(ValueError):
    """The authors' evaluator would crash on this answer."""


def first_letter(response: str) -> str:
    b = response.lower().split(" ")[0].replace("(", "").replace(")", "").replace(".", "")
    if len(b) != 1:
        if not b:
            raise UnscorableAnswer(f"answer {response[:40]!r} has no first word (the authors' evaluator "
                                   "crashes on it)")
        b = b[0]
    return b


def check_answer(num_options: int, ans: str, response: str) -> bool | None:
    """True/False, or None when the letter is not one of the options (their "Failed")."""
    b = first_letter(response)
    if b not in [chr(ord("a") + i) for i in range(num_options)]:
        return None
    return ans.lower() == b


def letter_options(options: list[str]) -> str:
    """MVBench style: "\\nOptions:\\n(A) Xxx…" with each option's first letter upper-cased."""
    return "\nOptions:" + "".join(f"\n({chr(ord('A') + i)}) {o[0].upper() + o[1:]}" for i, o in enumerate(options))


def accuracy_summary(results: list[ItemResult]) -> dict:
    """Their table: per task (sorted) and `all`; Acc ×100, unrounded."""
    per_task: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0])
    total = [0, 0, 0]
    for r in results:
        tasks = r.item.info.get("task", "unknown")
        tasks = [tasks] if isinstance(tasks, str) else list(tasks)
        for counts in [per_task[t] for t in tasks] + [total]:
            counts[0] += 1
            counts[1] += int(r.scores.get("failed", 0))
            counts[2] += int(r.scores.get("correct", 0))

    def row(c: list[float]) -> dict:
        return {"#Samples": c[0], "Failed": c[1], "Acc": 100 * c[2] / c[0] if c[0] and c[2] else 0.0}

    return {"tasks": {t: row(per_task[t]) for t in sorted(per_task)}, "all": row(total)}


def response_of(prediction: Prediction) -> str:
    """The generated text after the answer prefix, special tokens kept (their `response`)."""
    if prediction.row is not None and prediction.row.get("raw_answer") is not None:
        return prediction.row["raw_answer"]
    if prediction.answer is None:
        raise UnscorableAnswer("no answer")
    # `answer` repeats the reply's forced start; their response is what follows it
    for prefix in ANSWER_PREFIXES:
        if prediction.answer.startswith(prefix):
            return prediction.answer[len(prefix):]
    return prediction.answer


class QABenchmark(Benchmark):
    """Items carry `gt = {"options": [...], "ans": "B"}` and `info["task"]`."""

    metrics = ("correct", "failed")

    def score(self, item: Item, prediction: Prediction) -> dict[str, float]:
        gt = item.gt
        if gt.get("ans") is None:
            raise UnscorableAnswer(gt.get("error", "no ground-truth answer"))
        ok = check_answer(len(gt["options"]), gt["ans"], response_of(prediction))
        return {"correct": float(ok is True), "failed": float(ok is None)}

    def zero_scores(self, item: Item) -> dict[str, float]:
        return {"correct": 0.0, "failed": 1.0}

    def summarize(self, results: list[ItemResult]) -> dict:
        return accuracy_summary(results)

    def table(self, summary: dict) -> list[tuple[str, dict[str, float]]]:
        rows = [(t, {"Acc": v["Acc"]}) for t, v in summary["tasks"].items()]
        return rows + [("all", {"Acc": summary["all"]["Acc"]})]
