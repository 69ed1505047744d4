"""Opt-in mutation testing of `webui/engine` and `webui/services` with mutmut (never run in CI).

mutmut plants one small change at a time (a flipped comparison, a changed constant, a dropped argument) and runs the
tests that reach the changed function; a mutant the tests do not notice "survives". The configuration (which files,
which fast tests) is `[tool.mutmut]` in pyproject.toml.

The two modules groups hold about 6,400 mutants, and each needs a pytest session that builds tiny checkpoints and runs
real sampling, so a full run takes many hours on 2 cores. By default this script therefore scores a stratified random
sample: `--per-module N` mutants from every module, drawn with a fixed seed, and reports each module's kill rate and
each group's with a 95% Wilson interval. `--all` runs every mutant.

    .venv/bin/pip install -r requirements-mutation.txt
    .venv/bin/python bench/mutation.py --per-module 12 --seed 0 --out bench/results/mutation.json
    .venv/bin/python bench/mutation.py --per-module 12 --seed 0 --rerun-not-killed   # after adding tests

Counting: "killed" and "timeout" are kills (the tests noticed); "survived", "no tests" and "suspicious" are not.
Results go to the JSON file and a Markdown table on stdout; docs/testing.md records them with a reason for every
survivor judged harmless.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTMUT = [sys.executable, "-m", "mutmut"]
ENGINE_MODULES = ("denoise", "samplers", "img2img", "masking", "generation", "loader")
# A mutant that exists in every generation of the tree and runs in seconds: the first run generates all mutants and
# collects which tests reach which function, so the sample can be drawn from the real list of names.
BOOTSTRAP_MUTANT = "webui.engine.masking.x_is_empty__mutmut_1"
KILLED_CODES = {1, 3, 36, 24, -24, 152, 255}  # mutmut's "killed" and "timeout" exit codes
STATUS = {0: "survived", 1: "killed", 3: "killed", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout",
          24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout", None: "not checked"}


def module_group(module: str) -> str | None:
    """`engine` for the six engine modules the goal names, `services` for every service module, else None."""
    package, _, name = module.rpartition(".")
    if package == "webui.engine" and name in ENGINE_MODULES:
        return "engine"
    if package == "webui.services":
        return "services"
    return None


def read_results() -> dict[str, dict[str, int | None]]:
    """{module: {mutant name: exit code}} from mutmut's per-file `.meta` records."""
    results: dict[str, dict[str, int | None]] = {}
    for meta in sorted((ROOT / "mutants" / "webui").rglob("*.py.meta")):
        module = ".".join(meta.relative_to(ROOT / "mutants").with_suffix("").with_suffix("").parts)
        data = json.loads(meta.read_text(encoding="utf-8"))
        if data.get("exit_code_by_key"):
            results[module] = data["exit_code_by_key"]
    return results


def run_mutmut(names: list[str], children: int) -> None:
    command = [*MUTMUT, "run", "--max-children", str(children), *names]
    print(f"$ mutmut run --max-children {children} <{len(names)} mutants>", flush=True)
    completed = subprocess.run(command, cwd=ROOT)
    if completed.returncode != 0:  # e.g. the unmutated tests failed: no score means anything then
        raise SystemExit(f"mutmut exited with {completed.returncode}; see its output above")


def wilson(killed: int, total: int) -> tuple[float, float]:
    """95% Wilson score interval for a kill rate estimated from a sample."""
    if total == 0:
        return (0.0, 1.0)
    z, p = 1.96, killed / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (max(0.0, centre - half), min(1.0, centre + half))


def summarise(results: dict[str, dict[str, int | None]], chosen: set[str] | None) -> dict:
    """Per-module and per-group counts over the chosen mutants (all when None), survivors listed by name."""
    modules: dict[str, dict] = {}
    groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for module, codes in sorted(results.items()):
        group = module_group(module)
        if group is None:
            continue
        picked = {name: code for name, code in codes.items() if chosen is None or name in chosen}
        checked = {name: code for name, code in picked.items() if code is not None and code != 34}
        if not checked:
            continue
        killed = sum(code in KILLED_CODES for code in checked.values())
        modules[module] = {
            "group": group,
            "population": len(codes),
            "checked": len(checked),
            "killed": killed,
            "score": killed / len(checked),
            "not_killed": {name: STATUS.get(code, "suspicious") for name, code in checked.items()
                           if code not in KILLED_CODES},
        }
        groups[group][0] += killed
        groups[group][1] += len(checked)
    return {
        "modules": modules,
        "groups": {g: {"killed": k, "checked": n, "score": k / n, "wilson95": wilson(k, n)}
                   for g, (k, n) in groups.items()},
    }


def markdown(summary: dict) -> str:
    lines = ["| module | mutants | checked | killed | score |", "|---|---:|---:|---:|---:|"]
    for module, row in summary["modules"].items():
        lines.append(f"| `{module}` | {row['population']} | {row['checked']} | {row['killed']} | {row['score']:.0%} |")
    lines += ["", "| group | checked | killed | score | 95% interval |", "|---|---:|---:|---:|---|"]
    for group, row in summary["groups"].items():
        low, high = row["wilson95"]
        lines.append(f"| {group} | {row['checked']} | {row['killed']} | {row['score']:.0%} | {low:.0%}–{high:.0%} |")
    return "\n".join(lines)


def draw_sample(results: dict[str, dict[str, int | None]], per_module: int, seed: int) -> set[str]:
    """The same seed and size always draw the same mutants from the same tree."""
    rng = random.Random(seed)
    chosen: set[str] = set()
    for module, codes in sorted(results.items()):
        if module_group(module) is not None:
            names = sorted(codes)
            chosen.update(rng.sample(names, min(per_module, len(names))))
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-module", type=int, default=12, help="mutants sampled from each module")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (the same seed draws the same mutants)")
    parser.add_argument("--all", action="store_true", help="run every mutant instead of a sample (many hours)")
    parser.add_argument("--rerun-not-killed", action="store_true",
                        help="after adding tests: run again only the sampled mutants that were not killed last time")
    parser.add_argument("--children", type=int, default=2, help="parallel mutmut workers")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "mutation.json")
    args = parser.parse_args()

    if not args.rerun_not_killed:
        run_mutmut([BOOTSTRAP_MUTANT], args.children)
    results = read_results()
    before = {module: dict(codes) for module, codes in results.items()}  # mutmut forgets codes it does not rerun
    chosen: set[str] | None = None
    if not args.all:
        chosen = draw_sample(results, args.per_module, args.seed)
    if args.rerun_not_killed:
        names = _not_killed(results, chosen)
        if names:
            run_mutmut(names, args.children)
    else:
        run_mutmut([] if args.all else sorted(chosen), args.children)
    after = read_results()
    if args.rerun_not_killed:  # keep the kills of the first pass; take the rerun's codes where it has them
        after = {module: {name: after.get(module, {}).get(name) if after.get(module, {}).get(name) is not None
                          else code for name, code in codes.items()} for module, codes in before.items()}
    summary = summarise(after, chosen)
    summary["sample"] = None if args.all else {"per_module": args.per_module, "seed": args.seed}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1, sort_keys=True), encoding="utf-8")
    print(markdown(summary))
    for module, row in summary["modules"].items():
        for name, status in sorted(row["not_killed"].items()):
            print(f"{status}: {name}")


def _not_killed(results: dict[str, dict[str, int | None]], chosen: set[str] | None) -> list[str]:
    return sorted(name for codes in results.values() for name, code in codes.items()
                  if (chosen is None or name in chosen) and code not in KILLED_CODES)


if __name__ == "__main__":
    main()
