"""What a config's errors look like: ``FILE:LINE: path.to.field: message``, at most MAX_ISSUES of them."""

from __future__ import annotations

from dataclasses import dataclass

MAX_ISSUES = 20


@dataclass(frozen=True)
class ConfigIssue:
    line: int | None
    path: str
    message: str


class ConfigError(Exception):
    """A config that cannot be used; ``str()`` is the operator-facing report."""

    def __init__(self, filename: str, issues: list[ConfigIssue], unlisted: int = 0):
        self.filename = filename
        self.issues = issues
        self.unlisted = unlisted  # further errors, only counted: 50,000 bad values are not 50,000 issues
        super().__init__(self.render())

    def render(self) -> str:
        """One line per issue, each of bounded length, at most MAX_ISSUES of them."""
        lines = []
        for issue in self.issues[:MAX_ISSUES]:
            where = f"{_clip(self.filename)}:{issue.line}" if issue.line else _clip(self.filename)
            field = f" {_clip(issue.path, 100)}:" if issue.path else ""
            lines.append(f"{where}:{field} {_clip(issue.message, 300)}")
        more = len(self.issues) + self.unlisted - min(len(self.issues), MAX_ISSUES)
        if more:
            lines.append(f"{_clip(self.filename)}: … and {more} more errors")
        return "\n".join(lines)


def _clip(text: str, limit: int = 200) -> str:
    """Error text quotes user input: keep each quote short, on one line and free of terminal controls
    (a key like ``"x\nFILE:1: ..."`` must not forge a line of the report)."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"
