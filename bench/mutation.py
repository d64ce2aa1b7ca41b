"""Mutation run over the security-critical modules, each against its fast tests only (issue 16).

    bench/mutation                  # every module in MODULES, then bench/MUTATION.md is rewritten
    bench/mutation limits tokens    # only these (their rows are replaced, the others kept)
    bench/mutation --list           # the modules and their tests
    bench/mutation --jobs 1         # mutant workers (default 2: the machine has 2 cores)

A yardstick, not a CI gate. Each module is run by mutmut 3 in a scratch copy of the working tree
(`bench/out/mutation/<name>/`), so the worktree is never mutated. Results (score per module, every
survivor with its diff) go between the markers in bench/MUTATION.md; the text outside the markers,
where survivors are explained, is kept.

To add a module, add one `Module` to MODULES: its file, optionally the functions that count (mutmut
mutant-name globs), and the fast test selection (pytest arguments) it is judged by.
"""

from __future__ import annotations

import argparse
import fcntl
import fnmatch
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "mutation"
REPORT = ROOT / "bench" / "MUTATION.md"
# Every module's last result, committed beside the report, so a run of some modules (here or in a fresh
# clone) keeps the others' rows instead of starting the table afresh.
RESULTS = ROOT / "bench" / "MUTATION.json"
BEGIN, END = "<!-- mutation results: begin (written by bench/mutation) -->", "<!-- mutation results: end -->"


@dataclass(frozen=True)
class Module:
    name: str
    source: str  # path of the mutated file
    tests: tuple[str, ...]  # pytest arguments selecting the fast tests it is judged by
    functions: tuple[str, ...] = ()  # mutant-name globs; empty = every function of the file
    note: str = ""


MODULES: tuple[Module, ...] = (
    Module("auth", "gateway/http/auth.py", ("tests/test_forwarding_trust.py", "tests/test_token_extraction.py")),
    Module("sessions", "gateway/sessions/service.py", ("tests/test_session_rules.py",)),
    Module("tokens", "gateway/tokens/keyring.py", ("tests/test_tokens.py", "tests/test_tokens_refresh.py", "tests/test_tokens_refusals.py")),
    # Limits live in the store since issue 12: the GCRA arithmetic is judged by its pure tests and the
    # SQLite store contract's limit tests (both in-process, a few seconds).
    Module(
        "limits", "gateway/store/__init__.py",
        ("tests/test_gcra.py", "tests/test_store_sqlite.py", "-k", "limit or gcra"),
        functions=("*gcra_*",),
        note="the GCRA arithmetic (gcra_interval, gcra_wait); the SQL that applies it is in each backend",
    ),
    # The header policy moved out of proxy.py into its own pure module (issue 10).
    Module("headers", "gateway/proxy/headers.py", ("tests/test_headers_policy.py",)),
    Module(
        "proxy-headers", "gateway/proxy/forward.py",
        ("tests/test_headers_policy.py", "-k", "response"),
        functions=("*ǁForwarderǁresponse_headers__mutmut_*",),
        note="what is left of the header policy in proxy.py: response_headers (hop-by-hop, Set-Cookie)",
    ),
    # Unit tests only (compile_policy and Policy.decide called in-process).
    Module("policy", "gateway/authz/rules.py", ("tests/test_policy.py",)),
    Module("paths", "gateway/proxy/paths.py", ("tests/test_paths.py",)),
)  # fmt: skip

_COPY_IGNORE = shutil.ignore_patterns(
    ".venv", "mutants", "out", "__pycache__", "*.pyc", ".git", "node_modules", "*.db*"
)


def _workdir(module: Module) -> Path:
    """A fresh copy of what the tests need, with a [tool.mutmut] section for this module."""
    work = OUT / module.name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for name in ("gateway", "upstream_demo", "tests"):
        shutil.copytree(ROOT / name, work / name, ignore=_COPY_IGNORE)
    cfg = {
        "source_paths": ["gateway/"],
        "only_mutate": [module.source],
        "also_copy": ["upstream_demo/"],
        "pytest_add_cli_args_test_selection": list(module.tests),
        # The tests' own gateway processes would run unmutated code; fast tests are in-process.
        "use_git_change_detection": False,
    }
    pyproject = (ROOT / "pyproject.toml").read_text()
    pyproject += "\n[tool.mutmut]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in cfg.items())
    (work / "pyproject.toml").write_text(pyproject)
    return work


def _mutmut(work: Path, *args: str, log: Path | None = None) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("mutmut")
    if log is None:
        return subprocess.run([str(exe), *args], cwd=work, capture_output=True, text=True)
    with log.open("w") as sink:
        return subprocess.run([str(exe), *args], cwd=work, stdout=sink, stderr=subprocess.STDOUT, text=True)


def _status(code: int | None) -> str:
    from mutmut.stats import status_by_exit_code

    return str(status_by_exit_code[code])


def run_module(module: Module, jobs: int, budget: float | None) -> dict[str, object]:
    work = _workdir(module)
    started = time.monotonic()
    exe = Path(sys.executable).with_name("mutmut")
    with (work / "mutmut.log").open("w") as sink:
        proc = subprocess.Popen([str(exe), "run", "--max-children", str(jobs), *module.functions], cwd=work,
                                stdout=sink, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            # mutmut stops its workers and keeps what it judged on SIGINT; the rest is "not run".
            proc.send_signal(signal.SIGINT)
            proc.wait()
    seconds = time.monotonic() - started
    (work / "seconds").write_text(f"{seconds:.0f}\n")
    (work / "selection.txt").write_text(" ".join(module.tests) + "\n")
    return collect_module(module, exit_code=proc.returncode or 0)


def collect_module(module: Module, *, exit_code: int = 0) -> dict[str, object]:
    """The results of a module's last run, read from its scratch copy."""
    work = OUT / module.name
    meta = work / "mutants" / (module.source + ".meta")
    if not meta.exists():
        log = work / "mutmut.log"
        raise SystemExit(f"bench/mutation: {module.name}: mutmut gave no results (exit {exit_code}); see {log}")
    seconds = float((work / "seconds").read_text()) if (work / "seconds").exists() else 0.0
    chosen = work / "selection.txt"
    tests = chosen.read_text().strip() if chosen.exists() else " ".join(module.tests)
    codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
    if module.functions:
        codes = {k: v for k, v in codes.items() if any(fnmatch.fnmatchcase(k, g) for g in module.functions)}
    counts: dict[str, int] = {}
    for code in codes.values():
        counts[_status(code)] = counts.get(_status(code), 0) + 1
    undetected = ("survived", "no tests", "suspicious")
    survivors = sorted((k for k, v in codes.items() if _status(v) in undetected), key=_natural)
    diffs = {name: _diff(work, name) for name in survivors}
    detected = counts.get("killed", 0) + counts.get("timeout", 0) + counts.get("caught by type check", 0)
    total = len(codes)
    return {
        "name": module.name, "source": module.source, "tests": tests, "note": module.note,
        "total": total, "killed": counts.get("killed", 0), "timeout": counts.get("timeout", 0),
        "survived": counts.get("survived", 0), "no_tests": counts.get("no tests", 0),
        "not_run": counts.get("not checked", 0),
        "other": total - detected - sum(counts.get(k, 0) for k in ("survived", "no tests", "not checked")),
        # Over the mutants that were run: a run stopped by --budget leaves some unjudged.
        "score": round(100.0 * detected / (total - counts.get("not checked", 0)), 1) if total else 0.0,
        "seconds": round(seconds),
        "survivors": diffs, "exit": exit_code,
    }  # fmt: skip


def _natural(name: str) -> tuple[str, int]:
    head, _, number = name.rpartition("_")
    return head, int(number) if number.isdigit() else 0


def _diff(work: Path, name: str) -> str:
    """The changed lines of one mutant, from `mutmut show`."""
    out = _mutmut(work, "show", name).stdout
    lines = [ln for ln in out.splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
    return "\n".join(lines)


def _render(results: list[dict[str, object]]) -> str:
    head = ("module", "file", "fast tests", "mutants", "not run", "killed", "timeout", "survived", "no tests", "other",
            "score", "time")  # fmt: skip
    rows = ["| " + " | ".join(head) + " |", "| --- | --- | --- |" + " ---: |" * (len(head) - 3)]
    for r in results:
        cells = [r["name"], f"`{r['source']}`", f"`{r['tests']}`", r["total"], r.get("not_run", 0), r["killed"],
                 r["timeout"], r["survived"], r["no_tests"], r["other"], f"**{r['score']} %**",
                 f"{r['seconds']} s"]  # fmt: skip
        rows.append("| " + " | ".join(str(c) for c in cells) + " |")
    parts = [BEGIN, "", *rows, ""]
    for r in results:
        if r["note"]:
            parts.append(f"- {r['name']}: {r['note']}.")
    parts.append("")
    for r in results:
        survivors = r["survivors"]
        assert isinstance(survivors, dict)
        parts.append(f"### Survivors: {r['name']} ({len(survivors)})")
        parts.append("")
        if not survivors:
            parts.append("None.")
        for name, diff in survivors.items():
            parts.append(f"- `{name}`")
            parts.append("  ```diff")
            parts.extend("  " + line for line in diff.splitlines())
            parts.append("  ```")
        parts.append("")
    parts.append(END)
    return "\n".join(parts)


def _merge_and_report(new: list[dict[str, object]]) -> None:
    """Earlier results of modules not run now are kept (bench/MUTATION.json). Runs of different modules
    may finish at the same moment, so the read-merge-write is done under a lock."""
    with (OUT / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
        by_name = {r["name"]: r for r in old}
        by_name.update({r["name"]: r for r in new})
        order = [m.name for m in MODULES]
        known = [r for r in by_name.values() if r["name"] in order]  # a module dropped from MODULES goes
        merged = sorted(known, key=lambda r: order.index(r["name"]))
        RESULTS.write_text(json.dumps(merged, indent=1, ensure_ascii=False) + "\n")
        _write_report(merged)


def _write_report(results: list[dict[str, object]]) -> None:
    block = _render(results)
    text = REPORT.read_text() if REPORT.exists() else "# Mutation results\n\n" + BEGIN + "\n" + END + "\n"
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text += "\n" + block + "\n"
    REPORT.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/mutation", description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="module names (default: all)")
    parser.add_argument("--jobs", type=int, default=2, help="mutant worker processes (default 2)")
    parser.add_argument("--list", action="store_true", help="print the modules and their fast tests")
    parser.add_argument("--collect", action="store_true", help="only read the last run's results into the report")
    parser.add_argument("--budget", type=float, help="seconds per module; mutants not reached are reported as not run")
    args = parser.parse_args(argv)
    known = {m.name: m for m in MODULES}
    if args.list:
        for m in MODULES:
            print(f"{m.name:15} {m.source:22} {' '.join(m.tests)}")
        return 0
    unknown = [n for n in args.modules if n not in known]
    if unknown:
        parser.error(f"unknown module(s) {', '.join(unknown)}; known: {', '.join(known)}")
    chosen = [known[n] for n in args.modules] if args.modules else list(MODULES)
    OUT.mkdir(parents=True, exist_ok=True)
    results = []
    for module in chosen:
        print(f"bench/mutation: {module.name} ({module.source}) ...", file=sys.stderr, flush=True)
        result = collect_module(module) if args.collect else run_module(module, args.jobs, args.budget)
        print(f"bench/mutation: {module.name}: {result['score']} % of {result['total']} in {result['seconds']} s",
              file=sys.stderr, flush=True)  # fmt: skip
        results.append(result)
        _merge_and_report([result])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
