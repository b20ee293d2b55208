"""A small mutation tester: do the tests notice a wrong line?

Each mutant changes one thing in one module (a flipped comparison, ``and``/``or`` swapped,
an integer off by one, ``True``/``False`` swapped, ``not`` removed, ``+``/``-`` swapped, a
statement deleted), then the given tests run against it in a scratch copy of the
repository. A mutant the tests fail on is *killed*; one they pass on *survived*: either
a behaviour nothing checks, or an equivalent mutant (same behaviour), which a person
judges. The score the project targets (issue #22) is over non-equivalent mutants.

    python -m tests.mutation enso_tracker/_schedule.py -- tests/unit/test_schedule.py
    python -m tests.mutation enso_tracker/_wire/response.py --function reconcile -- tests/unit

Mutants are produced from the module's AST and written back with ``ast.unparse``
(comments are lost in the mutant, which does not matter to its behaviour). Docstrings,
annotations, ``__all__`` and log/exception message text are not mutated. A test run past
``--timeout`` counts as killed (a mutant that loops forever is caught). Nothing in the
working tree is modified: every mutant runs in its own copy under a temporary directory.
"""

from __future__ import annotations

import argparse
import ast
import copy
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

_SWAP_CMP: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
_SWAP_BIN: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.FloorDiv,
    ast.FloorDiv: ast.Mult,
    ast.BitOr: ast.BitAnd,
    ast.BitAnd: ast.BitOr,
}


@dataclass(frozen=True)
class Mutant:
    index: int  # position in the module's walk order (stable for one source)
    line: int
    what: str


def _skipped_ranges(tree: ast.Module) -> list[tuple[int, int]]:
    """Line ranges not mutated: docstrings, ``__all__``, TYPE_CHECKING blocks."""
    ranges: list[tuple[int, int]] = []
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body:
            first = body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ranges.append((first.lineno, first.end_lineno or first.lineno))
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            ranges.append((node.lineno, node.end_lineno or node.lineno))
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            ranges.append((node.lineno, node.end_lineno or node.lineno))
    return ranges


def _annotation_ids(tree: ast.Module) -> set[int]:
    """ids of every node inside an annotation or a message (raise/log text)."""
    roots: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.AnnAssign, ast.arg)) and node.annotation is not None:
            roots.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns:
            roots.append(node.returns)
        elif isinstance(node, ast.JoinedStr):
            roots.append(node)
    return {id(sub) for root in roots for sub in ast.walk(root)}


def _candidates(tree: ast.Module, functions: set[str]) -> Iterator[tuple[ast.AST, str]]:
    """(node, description) for every mutation point, in a stable order."""
    skipped = _skipped_ranges(tree)
    ignored = _annotation_ids(tree)
    scopes: list[tuple[int, int]] = []
    if functions:
        for node in ast.walk(tree):
            if (
                isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                and node.name in functions
            ):
                scopes.append((node.lineno, node.end_lineno or node.lineno))
    for node in ast.walk(tree):
        line = getattr(node, "lineno", None)
        if line is None or id(node) in ignored:
            continue
        if any(a <= line <= b for a, b in skipped):
            continue
        if functions and not any(a <= line <= b for a, b in scopes):
            continue
        if isinstance(node, ast.Compare):
            for k, op in enumerate(node.ops):
                if type(op) in _SWAP_CMP:
                    new = _SWAP_CMP[type(op)].__name__
                    yield node, f"compare {k}: {type(op).__name__} -> {new}"
        elif isinstance(node, ast.BoolOp):
            yield node, "and <-> or"
        elif isinstance(node, ast.BinOp) and type(node.op) in _SWAP_BIN:
            yield node, f"{type(node.op).__name__} -> {_SWAP_BIN[type(node.op)].__name__}"
        elif isinstance(node, ast.AugAssign) and type(node.op) in _SWAP_BIN:
            yield node, f"augmented {type(node.op).__name__} -> swapped"
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            yield node, "not removed"
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, bool):
                yield node, f"{node.value} -> {not node.value}"
            elif isinstance(node.value, int):
                yield node, f"{node.value} -> {node.value + 1}"
        statement = isinstance(node, (ast.Expr, ast.Assign, ast.AugAssign, ast.Return, ast.Raise))
        if statement and not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
            yield node, f"statement deleted ({type(node).__name__})"


def _apply(node: ast.AST, what: str) -> None:
    if what.startswith("statement deleted"):
        return  # handled by the transformer below
    if isinstance(node, ast.Compare):
        k = int(what.split()[1].rstrip(":"))
        node.ops[k] = _SWAP_CMP[type(node.ops[k])]()
    elif isinstance(node, ast.BoolOp):
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    elif isinstance(node, (ast.BinOp, ast.AugAssign)):
        node.op = _SWAP_BIN[type(node.op)]()
    elif isinstance(node, ast.Constant) and isinstance(node.value, int):
        node.value = (not node.value) if isinstance(node.value, bool) else node.value + 1


class _Delete(ast.NodeTransformer):
    def __init__(self, target: ast.AST) -> None:
        self.target = target

    def generic_visit(self, node: ast.AST) -> ast.AST:
        for field, value in ast.iter_fields(node):
            if isinstance(value, list):
                kept = [v for v in value if v is not self.target]
                if len(kept) != len(value):
                    setattr(node, field, kept or [ast.Pass()])
        return super().generic_visit(node)


class _Unnot(ast.NodeTransformer):
    def __init__(self, target: ast.AST) -> None:
        self.target = target

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        self.generic_visit(node)
        return node.operand if node is self.target else node


def mutants(source: str, functions: set[str]) -> list[Mutant]:
    tree = ast.parse(source)
    return [
        Mutant(k, getattr(node, "lineno", 0), what)
        for k, (node, what) in enumerate(_candidates(tree, functions))
    ]


def mutated_source(source: str, functions: set[str], mutant: Mutant) -> str:
    tree = ast.parse(source)
    node, what = list(_candidates(tree, functions))[mutant.index]
    assert what == mutant.what
    if what.startswith("statement deleted"):
        tree = _Delete(node).visit(tree)
    elif what == "not removed":
        tree = _Unnot(node).visit(tree)
    else:
        _apply(node, what)
    return ast.unparse(ast.fix_missing_locations(copy.deepcopy(tree)))


def _scratch(root: Path, into: Path) -> Path:
    """A copy of the package and the tests (what a test run reads)."""
    for name in ("enso_tracker", "tests"):
        shutil.copytree(
            root / name, into / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    for name in ("pyproject.toml",):
        shutil.copy2(root / name, into / name)
    return into


def _run(copy_root: Path, tests: list[str], timeout: float) -> tuple[bool, float]:
    """(killed, seconds): the tests failed, errored or timed out."""
    env = dict(os.environ, PYTHONPATH=str(copy_root), PYTHONDONTWRITEBYTECODE="1")
    started = time.monotonic()
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        done = subprocess.run(
            command, cwd=copy_root, env=env, capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return True, time.monotonic() - started
    # 5: no test collected, which proves nothing: count it as survived.
    return done.returncode not in (0, 5), time.monotonic() - started


def _index(m: Mutant) -> int:
    return m.index


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    tests = args[args.index("--") + 1 :] if "--" in args else []
    args = args[: args.index("--")] if "--" in args else args
    parser = argparse.ArgumentParser(prog="python -m tests.mutation", description=__doc__)
    parser.add_argument(
        "module", help="path of the module to mutate, e.g. enso_tracker/_schedule.py"
    )
    parser.add_argument("--function", action="append", default=[], help="only in this def/class")
    parser.add_argument("--sample", type=int, default=0, help="at most this many, at random")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per mutant")
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    options = parser.parse_args(args)
    if not tests and not options.list:
        parser.error("give the tests to run after --")
    root = Path.cwd()
    module = Path(options.module)
    source = (root / module).read_text()
    functions = set(options.function)
    found = mutants(source, functions)
    if options.sample and options.sample < len(found):
        found = sorted(random.Random(options.seed).sample(found, options.sample), key=_index)
    if options.list:
        for m in found:
            print(f"{module}:{m.line}: {m.what}")
        return 0
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        base = _scratch(root, Path(tmp) / "base")
        killed, baseline_seconds = _run(base, tests, options.timeout)
        if killed:
            print("the tests fail without any mutant: fix them first", file=sys.stderr)
            return 2
        timeout = min(options.timeout, max(10.0, 5 * baseline_seconds))
        copies = [base] + [
            _scratch(root, Path(tmp) / f"job{j}") for j in range(1, max(1, options.jobs))
        ]
        free = list(copies)

        def one(m: Mutant) -> tuple[Mutant, bool]:
            where = free.pop()
            try:
                target = where / module
                target.write_text(mutated_source(source, functions, m))
                return m, _run(where, tests, timeout)[0]
            finally:
                (where / module).write_text(source)
                free.append(where)

        survivors: list[Mutant] = []
        with ThreadPoolExecutor(max_workers=len(copies)) as pool:
            for m, dead in pool.map(one, found):
                if not dead:
                    survivors.append(m)
                    print(f"SURVIVED {module}:{m.line}: {m.what}", flush=True)
    lines = source.splitlines()
    for m in survivors:
        print(f"  {m.line}: {lines[m.line - 1].strip()[:100]}  [{m.what}]")
    total = len(found)
    print(f"{module}: {total - len(survivors)} of {total} killed, {len(survivors)} survived")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
