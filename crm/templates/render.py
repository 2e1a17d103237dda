"""Template checking and rendering: pure, sandboxed, and strict about variables.

Templates are written by brokers and filled with lead data, so they run in Jinja's
`SandboxedEnvironment` (no attribute tricks, no imports, no includes) and may name only
the variables in `CATALOGUE`. `check_template` is run when a template is saved and lists
every problem at once, each with its line: syntax errors, unknown variables, includes,
unknown filters, channel rules. A saved template can therefore only fail to render for
want of a value, and `render` then names every variable that had none.

Escaping: email bodies are HTML, so they are rendered with autoescape on (a lead called
`Smith & <Co>` cannot break the markup). Every other channel (SMS, WhatsApp, Telegram,
web chat, call scripts) and every email subject is plain text and rendered verbatim:
escaping there would put `&amp;` in front of the reader. Subjects are also folded onto
one line, so no value can smuggle a header into an email.

Undefined values: printing, iterating or computing with a variable that has no value is
an error (Jinja's `StrictUndefined`), but testing it is not: `{% if lead.email %}…` is
how a template says a value is optional, and it renders the else branch.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, UndefinedError, nodes
from jinja2.sandbox import SandboxedEnvironment

from crm.enums import Channel
from crm.errors import field_error

#: Every variable a template may name, with what it holds.
CATALOGUE: dict[str, str] = {
    "lead.first_name": "First word of the lead's name",
    "lead.full_name": "The lead's full name",
    "lead.phone": "The lead's phone number (E.164)",
    "lead.email": "The lead's email address",
    "lead.areas": "Areas the lead is interested in, as one phrase (`A, B y C`)",
    "lead.budget_min": "Lowest budget, formatted with its currency",
    "lead.budget_max": "Highest budget, formatted with its currency",
    "lead.property_type": "Kind of property, in the template's language",
    "lead.bedrooms": "Bedrooms wanted",
    "broker.name": "The brokerage's trading name",
    "broker.legal_name": "The brokerage's legal name (what the law asks a sender to state)",
    "broker.phone": "The brokerage's first phone number",
    "visit.date": "Date of the visit, on the lead's calendar, written out",
    "visit.time": "Time of the visit, on the lead's clock",
    "visit.location": "Where the visit takes place",
    "visit.property_ref": "The broker's reference of the property to visit",
    "visit.duration_minutes": "Length of the visit in minutes",
    "agent.name": "The name the AI agent introduces itself with",
    "optout_text": "How to stop receiving messages, in the template's language",
}

NAMESPACES: dict[str, list[str]] = {}
for _name in CATALOGUE:
    if "." in _name:
        _group, _field = _name.split(".", 1)
        NAMESPACES.setdefault(_group, []).append(_field)

#: Longest rendered body per channel: SMS concatenation and WhatsApp stop at 1600
#: characters, Telegram at 4096; a spoken script longer than 2000 characters is a speech.
BODY_LIMITS: dict[Channel, int] = {
    Channel.sms: 1600,
    Channel.whatsapp: 1600,
    Channel.telegram: 4096,
    Channel.web: 4096,
    Channel.call: 2000,
    Channel.email: 100_000,
}
SUBJECT_LIMIT = 300


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a template or a rendering, where it is and why."""

    field: str
    message: str
    kind: str
    line: int | None = None

    def as_error(self) -> dict[str, Any]:
        where = f"line {self.line}: " if self.line is not None else ""
        return {**field_error(self.field, where + self.message, self.kind), "line": self.line}


class RenderError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(p.message for p in problems))


@dataclass(frozen=True, slots=True)
class Rendered:
    subject: str | None
    body: str


class _Missing(StrictUndefined):
    """Strict everywhere except truth tests; names the variable with its namespace."""

    __slots__ = ()

    def __bool__(self) -> bool:  # type: ignore[override]  # StrictUndefined raises here
        return False

    @property
    def _undefined_message(self) -> str:
        if self._undefined_hint:
            return self._undefined_hint  # the sandbox's reason for refusing an attribute
        obj = self._undefined_obj
        if isinstance(obj, _Namespace):
            return f"{obj._prefix}.{self._undefined_name}"
        return str(self._undefined_name)


class _Namespace:
    """`lead`, `broker`, … inside a template: item access only, no attributes to reach."""

    __slots__ = ("_prefix", "_values")

    def __init__(self, prefix: str, values: Mapping[str, Any]) -> None:
        self._prefix = prefix
        self._values = dict(values)

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __repr__(self) -> str:
        return f"<{self._prefix}>"


@lru_cache(maxsize=2)
def _environment(autoescape: bool) -> SandboxedEnvironment:
    return SandboxedEnvironment(
        autoescape=autoescape,
        undefined=_Missing,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )


def autoescapes(channel: Channel, field: str) -> bool:
    return channel is Channel.email and field == "body"


def _walk(node: nodes.Node, parent: nodes.Node | None = None) -> Iterator[tuple[nodes.Node, Any]]:
    yield node, parent
    for child in node.iter_child_nodes():
        yield from _walk(child, node)


#: Names Jinja itself provides inside a template.
_BUILTINS = frozenset(
    {"loop", "super", "self", "caller", "varargs", "kwargs", "range", "dict", "lipsum"}
    | {"cycler", "joiner", "namespace", "true", "false", "none", "True", "False", "None"}
)


def _references(ast: nodes.Template) -> list[tuple[str, int]]:
    """(variable, line) for every context variable the template reads.

    `lead.first_name` and `lead["first_name"]` both count as `lead.first_name`; a group
    read whole or by a computed key counts as the bare group name, which is refused. A
    name the template binds anywhere (a loop variable, a `set`) is its own, not context.
    """
    bound = {n.name for n in ast.find_all(nodes.Name) if n.ctx in ("store", "param")}
    found: list[tuple[str, int]] = []
    for node, parent in _walk(ast):
        if not isinstance(node, nodes.Name) or node.ctx != "load":
            continue
        if node.name in bound or node.name in _BUILTINS:
            continue
        name = node.name
        if isinstance(parent, nodes.Getattr) and parent.node is node:
            name = f"{node.name}.{parent.attr}"
        elif (
            isinstance(parent, nodes.Getitem)
            and parent.node is node
            and isinstance(parent.arg, nodes.Const)
            and isinstance(parent.arg.value, str)
        ):
            name = f"{node.name}.{parent.arg.value}"
        found.append((name, node.lineno))
    return found


def _unknown_message(name: str) -> str:
    if name in NAMESPACES:
        fields = ", ".join(f"{name}.{f}" for f in NAMESPACES[name])
        return f"{name} is a group of variables; use one of: {fields}"
    message = f"unknown variable {name}"
    close = difflib.get_close_matches(name, CATALOGUE, n=1, cutoff=0.85)
    if close:
        message += f" (did you mean {close[0]}?)"
    return message


def check_source(source: str, *, field: str, autoescape: bool = False) -> list[Problem]:
    """Every problem of one template text: syntax, variables, includes, filters."""
    env = _environment(autoescape)
    try:
        ast = env.parse(source)
    except TemplateSyntaxError as exc:
        return [Problem(field, exc.message or "syntax error", "template_syntax", exc.lineno)]
    problems: list[Problem] = []
    seen: set[tuple[str, int]] = set()
    for name, line in _references(ast):
        if name in CATALOGUE or (name, line) in seen:
            continue
        seen.add((name, line))
        problems.append(Problem(field, _unknown_message(name), "unknown_variable", line))
    for node, _ in _walk(ast):
        if isinstance(node, nodes.Getattr) and node.attr.startswith("_"):
            problems.append(
                Problem(
                    field,
                    f"attribute {node.attr} is private; templates cannot read it",
                    "template_syntax",
                    node.lineno,
                )
            )
        if isinstance(node, nodes.Extends | nodes.Include | nodes.Import | nodes.FromImport):
            problems.append(
                Problem(
                    field,
                    "templates cannot extend, include or import other templates",
                    "template_syntax",
                    node.lineno,
                )
            )
    try:
        env.compile(source)  # unknown filters and tests are found here
    except TemplateSyntaxError as exc:
        problems.append(
            Problem(field, exc.message or "invalid template", "template_syntax", exc.lineno)
        )
    return problems


def variables_used(source: str) -> list[str]:
    """The catalogue variables a (valid) template names, in catalogue order."""
    try:
        ast = _environment(False).parse(source)
    except TemplateSyntaxError:
        return []
    named = {name for name, _ in _references(ast)}
    return [name for name in CATALOGUE if name in named]


def check_template(*, channel: Channel, subject: str | None, body: str) -> list[Problem]:
    """Everything wrong with a template for `channel`, listed together."""
    problems: list[Problem] = []
    has_subject = bool(subject and subject.strip())
    if channel is Channel.email and not has_subject:
        problems.append(Problem("subject", "an email template needs a subject", "channel_rule"))
    if channel is not Channel.email and has_subject:
        problems.append(
            Problem("subject", f"{channel.value} messages have no subject", "channel_rule")
        )
    if not body.strip():
        problems.append(Problem("body", "the body is empty", "channel_rule"))
    if has_subject and subject is not None:
        problems.extend(check_source(subject, field="subject"))
    problems.extend(check_source(body, field="body", autoescape=autoescapes(channel, "body")))
    return problems


def _context(values: Mapping[str, Any]) -> dict[str, Any]:
    """Flat `{"lead.first_name": …}` as the template sees it; None means no value."""
    groups: dict[str, dict[str, Any]] = {group: {} for group in NAMESPACES}
    flat: dict[str, Any] = {}
    for name, value in values.items():
        if value is None:
            continue
        if "." in name:
            group, field = name.split(".", 1)
            groups.setdefault(group, {})[field] = value
        else:
            flat[name] = value
    return {**flat, **{group: _Namespace(group, v) for group, v in groups.items()}}


def _render_one(source: str, *, field: str, autoescape: bool, values: Mapping[str, Any]) -> str:
    """Render, or raise `RenderError` naming every variable without a value.

    Jinja stops at the first missing value; to name them all, each one found is filled
    with an empty placeholder and the render is tried again (at most once per variable).
    """
    template = _environment(autoescape).from_string(source)
    filled = dict(values)
    missing: list[str] = []
    for _ in range(len(CATALOGUE) + 1):
        try:
            text = template.render(_context(filled))
        except UndefinedError as exc:
            name = exc.message or ""
            if name in CATALOGUE and name not in missing:
                missing.append(name)
                filled[name] = ""
                continue
            if missing:
                break
            raise RenderError([Problem(field, f"undefined value: {name}", "render_error")]) from exc
        except (TemplateError, TypeError, ValueError, ArithmeticError) as exc:
            if missing:
                break  # a placeholder broke an expression; report what was missing
            raise RenderError([Problem(field, f"cannot render: {exc}", "render_error")]) from exc
        if not missing:
            return text
        break
    raise RenderError(
        [Problem(name, f"no value for {name}", "missing_variable") for name in missing]
    )


def render(
    *, channel: Channel, subject: str | None, body: str, values: Mapping[str, Any]
) -> Rendered:
    """The message for `values`, checked against the channel's rules."""
    problems: list[Problem] = []
    rendered_subject: str | None = None
    rendered_body = ""
    for field, source in (("subject", subject), ("body", body)):
        if field == "subject" and not (source and source.strip()):
            continue
        assert source is not None
        try:
            text = _render_one(
                source, field=field, autoescape=autoescapes(channel, field), values=values
            )
        except RenderError as exc:
            problems.extend(p for p in exc.problems if p not in problems)
            continue
        if field == "subject":
            rendered_subject = " ".join(text.split())
        else:
            rendered_body = text.strip()
    if problems:
        raise RenderError(problems)
    limit = BODY_LIMITS[channel]
    if len(rendered_body) > limit:
        problems.append(
            Problem(
                "body",
                f"the {channel.value} message is {len(rendered_body)} characters; "
                f"the limit is {limit}",
                "too_long",
            )
        )
    if not rendered_body:
        problems.append(Problem("body", "the message rendered empty", "channel_rule"))
    if channel is Channel.email and not rendered_subject:
        problems.append(Problem("subject", "the subject rendered empty", "channel_rule"))
    if rendered_subject is not None and len(rendered_subject) > SUBJECT_LIMIT:
        problems.append(
            Problem("subject", f"the subject is over {SUBJECT_LIMIT} characters", "too_long")
        )
    if problems:
        raise RenderError(problems)
    return Rendered(subject=rendered_subject, body=rendered_body)
