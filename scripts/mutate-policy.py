"""Mutation check of the batching policy: would the property tests notice?

Each mutation below breaks one rule of docs/semantics.md in
csrc/batched/policy.h or keyed_policy.h. For each, this rebuilds the test
module batched._testing with it, puts it into the package installed in .venv,
and runs the property tests (tests/test_policy_properties.py,
test_deadline_properties.py, test_key_properties.py), which must fail. The
original headers are put back and rebuilt at the end, whatever happens.

    bash scripts/test.sh            # once: .venv with the package installed
    .venv/bin/python scripts/mutate-policy.py
    .venv/bin/python scripts/mutate-policy.py budget    # only the mutations whose name has "budget"

Takes a few minutes on 2 cores; prints one line per mutation: caught or MISSED.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "csrc" / "batched" / "policy.h"
KEYED = ROOT / "csrc" / "batched" / "keyed_policy.h"
PROPERTY_TESTS = ["test_policy_properties.py", "test_deadline_properties.py", "test_key_properties.py"]
BUILD = ROOT / "build" / "mutate"
MODULE = "_testing" + sysconfig.get_config_var("EXT_SUFFIX")

# (what it breaks, the text in policy.h, what it becomes[, the header if not policy.h])
MUTATIONS: list[tuple[str, ...]] = [
    ("aging off: no call is ever due",
     "    return e->passed_over_ns != kNever && now - e->passed_over_ns >= aging_ns_;",
     "    return false && now - e->passed_over_ns >= aging_ns_;"),
    ("aging counted from arrival (the rule before passed-over time)",
     "    e->passed_over_ns = kNever;\n    e->service_next = nullptr;",
     "    e->passed_over_ns = e->enqueue_ns;\n    e->service_next = nullptr;"),
    ("served calls keep their place in the service list",
     "      if (e != service_tail_) {\n        service_erase(e);\n        service_push_back(e);",
     "      if (false) {\n        service_erase(e);\n        service_push_back(e);"),
    ("size rule off",
     "    const bool bulk = rule_ != PriorityRule::kArrival && e->count > small_batch_threshold_;",
     "    const bool bulk = false && e->count > small_batch_threshold_;"),
    ("size rule off by one",
     "    const bool bulk = rule_ != PriorityRule::kArrival && e->count > small_batch_threshold_;",
     "    const bool bulk = rule_ != PriorityRule::kArrival && e->count >= small_batch_threshold_;"),
    ("lengths ignored by shortest-first",
     "    return priority << 32 | Rank{bulk} << 31 | std::min<std::uint32_t>(u->length, 0x7FFFFFFFu);",
     "    return priority << 32 | Rank{bulk} << 31;"),
    ("explicit priority ignored",
     "    const Rank priority = static_cast<std::uint32_t>(e->priority) ^ 0x80000000u;",
     "    const Rank priority = 0;"),
    ("only the first due call per batch",
     "      take_call(e, out, fill, limit);\n      if (!finish_if_done(e)) break;",
     "      take_call(e, out, fill, limit);\n      finish_if_done(e);\n      break;"),
    ("the newest passed-over call taken first",
     "service_head_ != nullptr && due(service_head_, now)) {\n      Entry* e = service_head_;",
     "service_tail_ != nullptr && due(service_tail_, now)) {\n      Entry* e = service_tail_;"),
    ("adjacent items of a call merged off by one",
     "        out.spans.back().begin + out.spans.back().count == u.index) {",
     "        out.spans.back().begin + out.spans.back().count + 1 == u.index) {"),
    ("budget off by one",
     "    const bool over = (budget_ != 0 && f.length + l > budget_) ||",
     "    const bool over = (budget_ != 0 && f.length + l > budget_ + 1) ||"),
    ("keep_calls_whole off",
     "    if (keep_calls_whole_ && out.size > 0 && e->taken == 0 && e->count <= limit_ &&",
     "    if (false && out.size > 0 && e->taken == 0 && e->count <= limit_ &&"),
    # issue 14: deadlines, the token budget, the room a due call leaves, keys
    ("expiry ignores the batch-time estimate",
     "    while (!deadlines_.empty() && now > deadlines_.front()->deadline_ns - service_ns_) {",
     "    while (!deadlines_.empty() && now > deadlines_.front()->deadline_ns) {"),
    ("no urgent calls first",
     "!deadlines_.empty() && urgent(deadlines_.front(), now)) {",
     "!deadlines_.empty() && false) {"),
    ("the deadline rule never fires",
     "    if (now >= send_by()) return DispatchReason::kDeadline;",
     "    if (false) return DispatchReason::kDeadline;"),
    ("token budget off by one row",
     "                      (tokens_ != 0 && (size + 1) * longest > tokens_);",
     "                      (tokens_ != 0 && size * longest > tokens_);"),
    ("token budget counts lengths unrounded",
     "    return (static_cast<std::uint64_t>(l) + multiple_ - 1) / multiple_ * multiple_;",
     "    return l;"),
    ("a due call leaves no room for higher priorities",
     "        limit = reserve >= limit ? 1 : limit - reserve;",
     "        limit = limit;"),
    ("a due call leaves all the room (takes nothing)",
     "        limit = reserve >= limit ? 1 : limit - reserve;",
     "        limit = reserve >= limit ? 0 : limit - reserve;"),
    ("keys: no timed-out class",
     "      } else if (now >= p.timeout_deadline()) {",
     "      } else if (false) {", "keyed_policy.h"),
    ("keys: within a class, the key served most recently first",
     "      if (cls < best_class || (cls == best_class && order < best_order)) {",
     "      if (cls < best_class || (cls == best_class && order > best_order)) {", "keyed_policy.h"),
    ("keys: a key's turn not recorded",
     "    s->served = ++served_seq_;",
     "    ++served_seq_;", "keyed_policy.h"),
]


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload, no-any-return]


def installed_module() -> Path:
    p = run([sys.executable, "-c", "import batched._testing as t; print(t.__file__)"], cwd=ROOT / "tests")
    if p.returncode != 0:
        sys.exit("batched is not installed in this interpreter: run bash scripts/test.sh first, then "
                 ".venv/bin/python scripts/mutate-policy.py")
    return Path(p.stdout.strip())


def configure() -> None:
    if run([sys.executable, "-c", "import Cython"]).returncode != 0:
        run([sys.executable, "-m", "pip", "install", "--quiet", "cython>=3"], check=True)
    p = run(["cmake", "-S", str(ROOT), "-B", str(BUILD), "-DBATCHED_BUILD_PYTHON=ON", "-DCMAKE_BUILD_TYPE=Release",
             f"-DPython_EXECUTABLE={sys.executable}"])
    if p.returncode != 0:
        sys.exit(p.stdout[-2000:] + p.stderr[-2000:])


def build_and_test(target: Path) -> tuple[bool, str]:
    """(whether the property tests failed, their last line)."""
    p = run(["cmake", "--build", str(BUILD), "--target", "_testing", "-j", "2"])
    if p.returncode != 0:
        return False, "build failed: " + (p.stdout + p.stderr)[-300:]
    shutil.copy(BUILD / MODULE, target)
    t = run([sys.executable, "-m", "pytest", "-c", "../pyproject.toml", "--rootdir", "..", "-q", "-x",
             "-p", "no:cacheprovider", *PROPERTY_TESTS], cwd=ROOT / "tests", timeout=1800)
    lines = [line for line in t.stdout.splitlines() if line.strip()]
    return t.returncode != 0, lines[-1] if lines else t.stderr[-200:]


def main() -> int:
    target = installed_module()
    configure()
    originals = {POLICY: POLICY.read_text(), KEYED: KEYED.read_text()}
    missed = 0
    try:
        failed, line = build_and_test(target)
        print(f"unmutated: {'FAILS' if failed else 'passes'}  [{line}]", flush=True)
        if failed:
            return 1
        only = sys.argv[1] if len(sys.argv) > 1 else ""
        for name, before, after, *where in MUTATIONS:
            if only not in name:
                continue
            header = KEYED if where == ["keyed_policy.h"] else POLICY
            original = originals[header]
            if original.count(before) != 1:
                print(f"SKIPPED (text not found once; update this script): {name}", flush=True)
                missed += 1
                continue
            header.write_text(original.replace(before, after, 1))
            try:
                caught, line = build_and_test(target)
            finally:
                header.write_text(original)
            missed += not caught
            print(f"{'caught' if caught else 'MISSED'}: {name}  [{line}]", flush=True)
    finally:
        for header, text in originals.items():
            header.write_text(text)
        build_and_test(target)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
