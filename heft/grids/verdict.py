"""The grid's verdict, in numbers a reader can check: the best cell by validation accuracy, its
margin over the runner-up (points and validation rows), whether that best is a tie, which cells
are constant predictors, and whether a new model version beats the registered champion.

Only validation accuracies choose: choosing on the held-out rows would make the held-out number
reported for the choice optimistic.  A tie is broken by grid order, and said to be one: the
first of equals is not a better model.  A constant predictor gives one answer on every held-out
row; its accuracy is that answer's share of the rows (the majority rate, at best), whatever the
table's ranking says.
"""
from __future__ import annotations

from dataclasses import dataclass

TIE = 1e-6  # accuracies closer than this are equal (the same count of rows right)


def champion(valid: list[float | None]) -> int | None:
    """Index of the best validation accuracy (ties: the first), None when nothing has one.
    The grid report's best row and the registered champion (flows/grid_flow.py) are both
    chosen here, and only from validation accuracies."""
    scored = [i for i, v in enumerate(valid) if v is not None]
    return max(scored, key=lambda i: (valid[i], -i)) if scored else None


def constant_answer(predicted_true_rate: float | None) -> str | None:
    """'true' or 'false' when a model gave that answer on every row (None: it varied, or unknown)."""
    if predicted_true_rate is None:
        return None
    return "true" if predicted_true_rate >= 1 - TIE else "false" if predicted_true_rate <= TIE else None


def _pct(v: float) -> str:
    return f"{v:.2%}"


def _names(rows: list[dict]) -> str:
    labels = [r["title"] for r in rows]
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]


@dataclass(frozen=True)
class Verdict:
    """What a grid's report says first, from its aggregated rows (heft/grids/report.py
    ``aggregate``: ``valid_mean``, ``valid_rows``, ``constant``, ``title``, in grid order)."""
    best: dict | None
    runner_up: dict | None         # the best of the others (tied with the best in a tie)
    tied: tuple[dict, ...]         # every row with the best's validation accuracy, best first
    constant: tuple[dict, ...]     # rows whose every seed gave one answer on every held-out row

    @classmethod
    def of(cls, rows: list[dict]) -> "Verdict":
        best_i = champion([r["valid_mean"] for r in rows])
        constant = tuple(r for r in rows if r.get("constant"))
        if best_i is None:
            return cls(None, None, (), constant)
        best = rows[best_i]
        others = [r for r in rows if r is not best]
        second = champion([r["valid_mean"] for r in others])
        runner_up = None if second is None else others[second]
        tied = (best,) + tuple(r for r in others if r["valid_mean"] is not None
                               and abs(r["valid_mean"] - best["valid_mean"]) < TIE)
        return cls(best, runner_up, tied, constant)

    @property
    def is_tie(self) -> bool:
        return len(self.tied) > 1

    @property
    def margin(self) -> float | None:
        """Validation accuracy of the best minus the runner-up's (0 in a tie)."""
        if self.best is None or self.runner_up is None:
            return None
        return self.best["valid_mean"] - self.runner_up["valid_mean"]

    def margin_rows(self) -> str:
        """The margin as validation rows: '2 of 400 validation rows' (a mean over seeds)."""
        n = self.best.get("valid_rows") or 0
        if not n or self.margin is None:
            return ""
        rows = self.margin * n
        seeds = len(self.best["seeds"])
        count = f"{rows:.0f}" if abs(rows - round(rows)) < 0.05 else f"{rows:.1f}"
        return f"{count} of {n} validation rows" + (f" (mean over {seeds} seeds)" if seeds > 1 else "")

    def pick(self) -> str:
        """One line: the pick, its margin, or that it is a tie and how it was broken."""
        if self.best is None:
            return "no cell has a validation accuracy: nothing was chosen"
        b = self.best
        if self.is_tie:
            return (f"a tie: {_names(list(self.tied))} all have validation {_pct(b['valid_mean'])}; "
                    f"{b['title']} is named only because it comes first in grid order")
        if self.runner_up is None:
            return f"{b['title']}, the only cell with a validation accuracy ({_pct(b['valid_mean'])})"
        rows = self.margin_rows()
        second = self.runner_up
        return (f"{b['title']}, {100 * self.margin:+.2f} points of validation accuracy over the runner-up "
                f"{second['title']} ({_pct(second['valid_mean'])})" + (f": {rows}" if rows else ""))

    def lines(self) -> list[str]:
        """Markdown lines under the report's 'Best cell' line (empty when there is nothing to say)."""
        out = []
        if self.is_tie:
            out.append(f"**A tie, not a winner:** {self.pick().removeprefix('a tie: ')}, not because it is "
                       "better.")
        elif self.best is not None and self.runner_up is not None:
            out.append(f"**Margin:** {self.pick().split(', ', 1)[1]}.")
        if self.constant:
            flagged = ", ".join(f"{r['title']} (always '{r['constant']}')" for r in self.constant)
            out.append(f"**Constant predictors** (one answer on every held-out row: the accuracy is only "
                       f"that answer's share of the rows): {flagged}.")
            if self.best is not None and self.best.get("constant"):
                out.append("The best cell is one of them: it has learnt nothing beyond answering "
                           f"'{self.best['constant']}'.")
        return out


def challenge(valid: float, data_key: str, current: dict | None) -> tuple[str, str]:
    """The alias a new registered version gets, and why: 'champion' when there is no champion
    yet or its validation accuracy beats the champion's on the same data (the same validation
    rows); otherwise 'challenger'.  ``current``: {'version', 'valid', 'data_key'} of the
    version holding 'champion' now, or None."""
    if current is None:
        return "champion", "no champion before it"
    old, theirs = f"champion v{current['version']}", current.get("data_key") or "unknown"
    if theirs[:32] != data_key[:32] or current.get("valid") is None:
        return "challenger", (f"{old} was chosen on other data (data key {theirs}, this one {data_key}): "
                              "validation accuracies of different rows are not compared")
    if valid > current["valid"] + TIE:
        return "champion", f"validation {_pct(valid)} beats {old}'s {_pct(current['valid'])}"
    how = "ties" if abs(valid - current["valid"]) < TIE else "is below"
    return "challenger", f"validation {_pct(valid)} {how} {old}'s {_pct(current['valid'])}: {old} stays"
