"""SQL is built only through the ORM/Core or with bound parameters: a static scan of the source (ast).

Every call that takes SQL text (``sqlalchemy.text``/``literal_column``, ``exec_driver_sql``, a DB-API
``execute``/``executemany``/``executescript`` and psycopg's ``copy``) must get a constant string, or a name
bound to one. SQL put together at run time (an f-string with a value in it, ``%`` or ``.format``, ``+``,
``join``) is allowed only where :data:`ALLOWED` says why: identifiers taken from the tables' metadata or from
constants, never a value. Values always travel as bound parameters (``:name``) or through COPY.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The packages the platform ships (pyproject's packages): bench/ is left out, its benchmarks create and drop
# throwaway databases by generated names and never run in the platform; tests/ too (their own fixtures).
PACKAGES = ("models", "rules", "store", "connectors", "tasks", "flows", "reports", "web", "sandbox", "cli")
SQL_METHODS = frozenset({"exec_driver_sql", "execute", "executemany", "executescript", "copy"})
SQL_FUNCTIONS = frozenset({"text", "literal_column"})
SQL_MODULES = frozenset({"sqlalchemy", "sqlmodel", "sqlalchemy.sql", "sqlalchemy.sql.expression"})

# (file, function) -> why the SQL text built there is safe. A stale entry fails the test.
ALLOWED: dict[tuple[str, str], str] = {
    ("store/common.py", "insert_many"): (
        "a plain INSERT for executemany: table and column names come from the Table's metadata, quoted by the "
        "dialect's identifier preparer; every value is a ? parameter"
    ),
    ("store/treasury.py", "_insert_new_copy"): (
        "COPY into a staging table: table and column names come from the Table's metadata, quoted by the "
        "dialect's identifier preparer; the rows travel through COPY, never in the SQL text"
    ),
    ("store/reconciliation.py", "_analyze"): "the table name comes from the temporary Table's metadata",
    ("store/reconciliation.py", "_fresh_statistics"): "ANALYZE of a Table passed in: its metadata name",
}


@dataclass(frozen=True)
class Finding:
    """A call whose SQL text is built at run time."""

    file: str
    function: str
    line: int
    call: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} in {self.function}(): {self.call} gets SQL built at run time"


def _constant(node: ast.expr, names: dict[str, ast.expr], depth: int = 0) -> bool:
    """Whether an expression is a string known when the code is written (a literal, or a literal's name)."""
    if depth > 8:
        return False
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.JoinedStr):
        return not any(isinstance(v, ast.FormattedValue) for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _constant(node.left, names, depth + 1) and _constant(node.right, names, depth + 1)
    if isinstance(node, ast.Name) and node.id in names:
        return _constant(names[node.id], names, depth + 1)
    return False


def _dynamic(node: ast.expr, names: dict[str, ast.expr], depth: int = 0) -> bool:
    """Whether an expression is SQL text put together at run time (values or names formatted into it)."""
    if depth > 8 or _constant(node, names):
        return False
    if isinstance(node, ast.JoinedStr):
        return True  # an f-string with a value in it
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mod):
        return True  # concatenation or %-formatting with something not a literal
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("format", "join")
    ):
        return True
    if isinstance(node, ast.Name) and node.id in names:
        return _dynamic(names[node.id], names, depth + 1)
    return False  # an ORM/Core statement, or a value the scan cannot see into


def _sql_text_imports(tree: ast.Module) -> set[str]:
    """Local names bound to sqlalchemy's text()/literal_column() in a module."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in SQL_MODULES:
            for alias in node.names:
                if alias.name in SQL_FUNCTIONS:
                    found.add(alias.asname or alias.name)
    return found


def scan(source: str, *, file: str) -> list[Finding]:
    """Calls of ``source`` that pass SQL built at run time."""
    tree = ast.parse(source)
    functions = _sql_text_imports(tree)
    findings: list[Finding] = []

    def visit(scope: ast.AST, name: str, outer: dict[str, ast.expr]) -> None:
        names = dict(outer)
        for node in ast.walk(scope):
            if (
                isinstance(node, ast.Assign)
                and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
            ):
                names[node.targets[0].id] = node.value
        for node in ast.iter_child_nodes(scope):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                visit(node, node.name, names)
            elif isinstance(node, ast.ClassDef):
                visit(node, name, names)
            else:
                check(node, name, names)

    def check(tree_node: ast.AST, name: str, names: dict[str, ast.expr]) -> None:
        for node in ast.walk(tree_node):
            if (
                isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
                and node is not tree_node
            ):
                continue
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            if isinstance(func, ast.Attribute):
                called = func.attr
                is_sql = called in SQL_METHODS or (
                    called in SQL_FUNCTIONS
                    and isinstance(func.value, ast.Name)
                    and func.value.id in ("sa", "sqlalchemy", "sqlmodel")
                )
            else:
                called = func.id if isinstance(func, ast.Name) else ""
                is_sql = called in functions
            if is_sql and _dynamic(node.args[0], names):
                findings.append(Finding(file, name, node.lineno, called))

    visit(tree, "<module>", {})
    # a nested function's calls are checked once, under its own name
    return sorted(set(findings), key=lambda f: (f.file, f.line))


def source_files() -> list[Path]:
    return sorted(
        p for package in PACKAGES for p in (ROOT / package).rglob("*.py") if "migrations" not in p.parts
    )


def test_sql_is_built_only_from_constants_or_with_bound_parameters() -> None:
    findings = [
        f for path in source_files() for f in scan(path.read_text(), file=str(path.relative_to(ROOT)))
    ]
    unexplained = [str(f) for f in findings if (f.file, f.function) not in ALLOWED]
    assert unexplained == [], "SQL built at run time: bind the values, or explain the identifiers in ALLOWED"
    stale = set(ALLOWED) - {(f.file, f.function) for f in findings}
    assert stale == set(), "ALLOWED names places that build no SQL any more"


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ('from sqlalchemy import text\ndef f(s, x):\n    s.execute(text(f"SELECT * FROM t WHERE a={x}"))', 1),
        (
            'from sqlmodel import text\ndef f(s, x):\n    q = "SELECT * FROM t WHERE a = %s" % x\n'
            "    s.execute(text(q))",
            1,
        ),
        ('def f(c, x):\n    c.exec_driver_sql("DELETE FROM t WHERE a = \'" + x + "\'")', 1),
        ('def f(cur, x):\n    cur.execute("SELECT {}".format(x))', 1),
        ('def f(cur, cols):\n    cur.execute(" ".join(cols))', 1),
        (
            'from sqlalchemy import text\ndef f(s, x):\n    s.execute(text("SELECT * FROM t WHERE a = :a"), '
            '{"a": x})',
            0,
        ),
        ('Q = "SELECT 1"\ndef f(cur):\n    cur.execute(Q)', 0),
        ("def f(s, stmt):\n    s.execute(stmt)", 0),
        ('def f(el):\n    return el.text("x")', 0),  # not sqlalchemy's text()
        ("from sqlalchemy import literal_column as lc\ndef f(x):\n    return lc(f'a{x}')", 1),
    ],
    ids=[
        "f-string",
        "percent",
        "concatenation",
        "format",
        "join",
        "bound",
        "constant name",
        "ORM statement",
        "another text()",
        "aliased literal_column",
    ],
)
def test_the_scan_tells_built_sql_from_bound_parameters(snippet: str, expected: int) -> None:
    assert len(scan(snippet, file="snippet.py")) == expected
