"""Prompts are data (DESIGN §5): no prompt text in the package's Python.

The package's source (minus covip/local, whose stand-ins write model *outputs*, and covip/content, the
benchmark's content loaders) is parsed with `ast` and two kinds of prompt prose are findings:

(a) a message built from literal words: a string literal, or an f-string whose literal parts hold
    three words or more, as an argument of `Message.user/system/assistant(...)`, `Message(...)`,
    `TextPart(...)`, `ImageRequest(instruction=...)` or the messages of `ChatRequest(...)`;
(b) a string constant of twelve words or more that talks to a model ('you', 'describe', 'answer',
    'reply', ...), unless it is a docstring, sits in a raise / logging / print / warnings / argparse
    call or a dataclass field's help, is SQL, is a markdown row ('|' or '#'), or is report text
    (covip/stages/report/). Text for people passed as a `help`, `description` or `summary` argument
    (an artifact's or a backend's description), a regular expression (the pattern of a `re` call)
    and a word list (a literal that is `.split()`) are not prose either.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import covip

PACKAGE = Path(covip.__file__).resolve().parent
EXCLUDED_FOLDERS = ("local", "content")
REPORT_TEXT = ("stages/report/tables.py", "stages/report/sections.py", "stages/report/plots.py")

MESSAGE_FACTORIES = {"user", "system", "assistant"}
MIN_MESSAGE_WORDS = 3
MIN_PROSE_WORDS = 12
MODEL_ADDRESS = re.compile(
    r"\b(you|your|yours|describe|answer|answers|reply|replies|respond|question|questions|caption|captions|"
    r"explain|choose|pick|imagine|pretend|write)\b",
    re.IGNORECASE,
)
_WORD = re.compile(r"[A-Za-z][A-Za-z'’]*")
_SQL = re.compile(r"^\s*(select|insert|update|delete|create|drop|pragma|with|replace|begin|commit)\b", re.IGNORECASE)
LOGGING_METHODS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "log"}
QUIET_CALLS = {"print", "warn", "add_argument", "add_parser", "add_subparsers", "ArgumentParser", "field"}
DESCRIPTION_PARAMETERS = {"help", "description", "summary", "doc"}
REGEX_FUNCTIONS = {"compile", "match", "fullmatch", "search", "sub", "subn", "findall", "finditer", "split"}


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    kind: str  # 'message' (a) or 'prose' (b)
    text: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.kind}: {self.text[:90]!r}"


def literal_text(node: ast.AST) -> str | None:
    """The literal words of a string constant or of an f-string's constant parts (None for anything else)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return " ".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
    return None


def word_count(text: str) -> int:
    return len(_WORD.findall(text))


def _call_name(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _message_arguments(call: ast.Call) -> list[ast.AST]:
    """The arguments of `call` that become message text, when `call` builds a message or a request."""
    func, name = call.func, _call_name(call)
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "Message" \
            and func.attr in MESSAGE_FACTORIES:
        return [*call.args, *(k.value for k in call.keywords)]
    if name in ("Message", "TextPart"):
        return [*call.args[1:], *(k.value for k in call.keywords if k.arg != "role")] if name == "Message" \
            else [*call.args, *(k.value for k in call.keywords)]
    if name == "ImageRequest":
        return [*call.args[:1], *(k.value for k in call.keywords if k.arg == "instruction")]
    if name == "ChatRequest":
        return [*call.args[:1], *(k.value for k in call.keywords if k.arg == "messages")]
    return []


def _literals_in(node: ast.AST):
    """String literals in an argument expression: itself, or inside tuples, lists, joins and +, but not
    inside the arguments of another call (a template rendered by name is data, not prose)."""
    if literal_text(node) is not None:
        yield node
        return
    if isinstance(node, ast.Call):
        if _message_arguments(node):  # a nested Message(...) / TextPart(...): looked at on its own
            return
        return
    for child in ast.iter_child_nodes(node):
        yield from _literals_in(child)


def _docstring_nodes(tree: ast.AST) -> set[int]:
    """ids of docstrings and of bare string statements (attribute docstrings)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and literal_text(node.value) is not None:
            found.add(id(node.value))
    return found


def _is_quiet_call(call: ast.Call) -> bool:
    name = _call_name(call)
    if name in QUIET_CALLS:
        return True
    func = call.func
    return isinstance(func, ast.Attribute) and func.attr in LOGGING_METHODS and not (
        isinstance(func.value, ast.Name) and func.value.id in ("Message",))


def _parameters(tree: ast.AST) -> dict[str, list[str]]:
    """Module-level functions and dataclasses -> their parameter names in order (to bind positional arguments)."""
    found = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found[node.name] = [a.arg for a in (*node.args.posonlyargs, *node.args.args)]
        elif isinstance(node, ast.ClassDef):
            found[node.name] = [s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)]
    return found


def _not_prose(tree: ast.AST, known: dict[str, list[str]] | None = None) -> set[int]:
    """ids of literals that are text for people or data, by where they stand (see the module docstring).
    `known`: parameters of functions the module imports (e.g. a schema's `description`)."""
    parameters = {**(known or {}), **_parameters(tree)}
    found = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func, name = node.func, _call_name(node)
        for keyword in node.keywords:
            if keyword.arg in DESCRIPTION_PARAMETERS:
                found.add(id(keyword.value))
        for position, argument in enumerate(node.args):
            names = parameters.get(name) if isinstance(func, ast.Name) else None
            if names and position < len(names) and names[position] in DESCRIPTION_PARAMETERS:
                found.add(id(argument))
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "re" \
                and func.attr in REGEX_FUNCTIONS and node.args:
            found.add(id(node.args[0]))
        if isinstance(func, ast.Attribute) and func.attr == "split" and literal_text(func.value) is not None:
            found.add(id(func.value))
    return found


def scan_source(source: str, path: str, known: dict[str, list[str]] | None = None) -> list[Finding]:
    tree = ast.parse(source)
    findings: list[Finding] = []
    # (a) messages built from literal words
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            for argument in _message_arguments(node):
                for literal in _literals_in(argument):
                    text = literal_text(literal)
                    if word_count(text) >= MIN_MESSAGE_WORDS:
                        findings.append(Finding(path, literal.lineno, "message", text))
    if any(path.endswith(report) for report in REPORT_TEXT):
        return findings
    # (b) long literals that address a model, outside the places where prose is for people
    docstrings = _docstring_nodes(tree) | _not_prose(tree, known)
    flagged = {(f.line, f.text) for f in findings}

    def visit(node: ast.AST, quiet: bool) -> None:
        if isinstance(node, ast.Raise) or (isinstance(node, ast.Call) and _is_quiet_call(node)):
            quiet = True
        text = literal_text(node)
        if text is not None:
            if not quiet and id(node) not in docstrings and (node.lineno, text) not in flagged:
                stripped = text.strip()
                if word_count(text) >= MIN_PROSE_WORDS and MODEL_ADDRESS.search(text) and not _SQL.match(text) \
                        and not stripped.startswith(("|", "#")):
                    findings.append(Finding(path, node.lineno, "prose", text))
            return  # an f-string's parts are judged together
        for child in ast.iter_child_nodes(node):
            visit(child, quiet)

    visit(tree, False)
    return findings


def package_sources() -> list[Path]:
    return sorted(
        path for path in PACKAGE.rglob("*.py")
        if path.relative_to(PACKAGE).parts[0] not in EXCLUDED_FOLDERS
    )


def test_the_scan_covers_the_package():
    sources = package_sources()
    names = {path.relative_to(PACKAGE).as_posix() for path in sources}
    # The modules that build requests are all in the scan; the stand-ins and content loaders are not.
    assert {"protocol/requests.py", "protocol/judging.py", "stages/dialogues.py", "stages/mcqa.py",
            "stages/filtering.py", "stages/synthesis.py", "training/records.py", "training/rewards.py"} <= names
    assert not any(name.startswith(("local/", "content/")) for name in names)
    assert len(sources) > 40
    # The package builds its requests in many places; each one is looked at by rule (a).
    builders = sum(1 for path in sources for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                   if isinstance(node, ast.Call) and _message_arguments(node))
    assert builders >= 30


# Findings looked at and left in code, each with the reason; a new finding fails, and so does an entry
# that no longer matches anything (the list cannot go stale).
REVIEWED = {
    ("covip/stages/mcqa.py", "prose", ": answer ' ' marks   options correct; exactly one of A, B, C must be"):
        "validate_questions problem text: stored as the row's failure_reason and sent back as $problem of "
        "the mcqa_repair template (reported to the lead: validation wording that reaches the model)",
    ("covip/stages/mcqa.py", "prose", ": answer is D, but exactly one of A, B, C must be correct"):
        "as above",
}


def package_findings() -> list[Finding]:
    sources = {path: path.read_text(encoding="utf-8") for path in package_sources()}
    # Module-level functions of the whole package, so a description passed positionally to an imported
    # helper (`_schema(name, description, ...)` of covip.core.schemas) is recognised as text for people.
    known = {name: params for source in sources.values() for name, params in _parameters(ast.parse(source)).items()}
    return [finding for path, source in sources.items()
            for finding in scan_source(source, path.relative_to(PACKAGE.parent).as_posix(), known)]


def test_no_prompt_prose_in_the_package():
    findings = package_findings()
    new = [f for f in findings if (f.path, f.kind, f.text) not in REVIEWED]
    assert not new, "prompt text in Python (move it to a template in covip/prompts):\n" + "\n".join(map(str, new))
    stale = set(REVIEWED) - {(f.path, f.kind, f.text) for f in findings}
    assert not stale, f"reviewed findings no longer found (remove them from REVIEWED): {sorted(stale)}"


PLANTED = '''
"""A module docstring that tells you to describe the photo and answer every question you are asked here."""
import logging
from dataclasses import dataclass, field

log = logging.getLogger(__name__)
SYSTEM = "You are a helpful assistant. Describe the photo in detail and answer the question the user asks you."
QUERY = "SELECT text FROM responses WHERE you = 1 AND answer IS NOT NULL AND question IS NULL ORDER BY key"
ROW = "| you | describe | answer | reply | respond | question | caption | more | words | here | too | ok |"
WORDS = """you your describe answer reply respond question caption a an the of to in on at by for with""".split()
PATTERN = re.compile(r"(?:you|your) (?:should|must) (?:answer|reply|respond) (?:to )?(?:the|a) question (?:about|on) (?:the )?caption")
TASK = Backend("judge", summary="answers the question you ask about the caption with one letter, or D when unsure of it")


def describe(name, description):
    return name


ITEM = describe("item", "you will find that this description is for people reading the schema, not a question")


@dataclass
class Settings:
    retries: int = field(default=1, metadata={"help": "How often you want the model to answer again when its reply fails the check."})


def build(name, caption, prompts):
    """Builds the requests; this docstring may say you should answer the question in the caption."""
    if not name:
        raise ValueError("you must give a name so that the model can answer the question about the caption")
    log.info("you asked the model to describe %s and to answer the question about the caption now", name)
    ask = Message.user("Describe the photo in one sentence.")
    wrapped = Message("user", (TextPart(f"Look at {name} and say what you see."), ImagePart(b"x")))
    image = ImageRequest(instruction="Draw two cats playing in a sunny park", references=())
    request = ChatRequest((Message.system(prompts.render("judge", caption=caption)),), seed=1)
    short = Message.user(f"{caption}")
    return [ask, wrapped, image, request, short]
'''


def test_the_scanner_flags_planted_prompt_prose():
    findings = scan_source(PLANTED, "planted.py")
    got = {(f.kind, f.text) for f in findings}
    assert got == {
        ("prose", "You are a helpful assistant. Describe the photo in detail and answer the question the user asks you."),
        ("message", "Describe the photo in one sentence."),
        ("message", "Look at   and say what you see."),  # an f-string's literal parts, joined by spaces
        ("message", "Draw two cats playing in a sunny park"),
    }, "\n".join(map(str, findings))
    assert {f.line for f in findings if f.kind == "message"} == {32, 33, 34}
    # The same text outside the quiet places is prose: the exclusions are about where text stands.
    assert [f.kind for f in scan_source('TEXT = "you will find that this description is for people reading the '
                                        'schema, not a question"', "x.py")] == ["prose"]
