"""Print every distinct failure of the fuzz test (tests/test_fuzz.py): target, malformed argument, what
happened, how many cases, and one example call.

    PYTHONPATH=. python scripts/fuzz_report.py [--seed N] [--repeats R] [--all] [--messages]

--repeats draws R valid calls per op (the first with every optional argument, the second with none;
the test uses 3); --all prints every failing
case instead of one per group; --messages also prints every distinct message the ops raised on malformed
calls, with one call that produced it (issue 11, item 7: which ones tell a user nothing). Exit status 1
when anything failed, so it can gate a fix.
"""
import argparse
import os
import re
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import fuzzing  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=int(os.environ.get("FASTLSTM_FUZZ_SEED", "0")))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--all", action="store_true")
    p.add_argument("--messages", action="store_true")
    a = p.parse_args()
    cases = fuzzing.all_cases(a.seed, repeats=a.repeats, module_repeats=max(4, a.repeats))
    t0 = time.perf_counter()
    results = fuzzing.run_cases(cases)
    bad = [(c, v) for c, v in results if v.get("fail")]
    print(f"seed {a.seed}: {len(cases)} cases, {len(bad)} failed, {time.perf_counter() - t0:.1f} s")
    if a.messages:
        seen: dict = {}
        for c, v in results:
            if c.target not in fuzzing.MODULES and v.get("raised"):
                # sizes differ from call to call; group by the message's words
                key = re.sub(r"\d+", "N", v["raised"])
                seen.setdefault((c.target.split("_")[0], key), []).append((c, v))
        print(f"\n{len(seen)} distinct op error messages (family | message | cases | one call):\n")
        for (fam, msg), cv in sorted(seen.items(), key=lambda kv: (kv[0][0], -len(kv[1]), kv[0][1])):
            c, v = cv[0]
            print(f"{fam} | {msg[:300]} | x{len(cv)}\n    {c.mutation}: {v['raised'][:200]}\n"
                  f"    {v['call'][:400]}")
        print()
    if a.all:
        print("\n".join(fuzzing.failure_lines(results, a.seed)))
        return 1 if bad else 0
    groups = fuzzing.distinct(results)
    print(f"{len(groups)} distinct failures (target | malformed argument | what happened | cases):\n")
    for target, what, happened, n, case, v in groups:
        print(f"{target} | {what} | {happened} | x{n}")
        print(f"    {v['fail'].splitlines()[0][:400]}")
        print(f"    e.g. {case.label()}: {v['call'][:400]}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
