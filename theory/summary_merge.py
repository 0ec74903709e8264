"""One study merged into the shared `summary.json` / `summary.md` that `theory.plots` writes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from uniroute_jax._src.filelock import locked
from uniroute_jax._src.persistence import write_atomic


def splice(md: str, section: list[str]) -> str:
    """`md` with the section headed `section[0]` replaced by `section` (placed before `## Verdicts`,
    or last)."""
    lines = md.rstrip("\n").split("\n")
    head = section[0]
    if head in lines:  # drop the old section: up to the next heading of the same level
        i = lines.index(head)
        j = next((k for k in range(i + 1, len(lines)) if lines[k].startswith("## ")), len(lines))
        del lines[i:j]
    at = lines.index("## Verdicts") if "## Verdicts" in lines else len(lines)
    return "\n".join(lines[:at] + section + lines[at:]) + "\n"


def merge_study(out_dir: str | Path, key: str, p: dict[str, Any], *, verdicts: Callable[[dict], list],
                summary_lines: Callable[[dict], list[str]], check_prefix: str, name: str) -> dict[str, Any]:
    """Puts study `p` under `key` of `out_dir/summary.json` and into `summary.md`; the other
    studies' numbers are kept as they are.

    The verdicts and `summary.md` are rendered anew (`plots.verdicts`, `plots.summary_markdown`)
    when the summary holds every field the current checks read. A summary written by an older
    `theory.plots` does not: then only this study's verdicts (those whose check starts with
    `check_prefix`) are renewed, and its section (with its verdicts) is spliced into `summary.md`.
    """
    from theory import plots  # noqa: PLC0415  (plots imports the studies that call this)

    out_dir = Path(out_dir)
    path = out_dir / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `python -m theory.plots --out {out_dir}` first")
    with locked(path):
        s = json.loads(path.read_text())
        s[key] = p
        try:
            s["verdicts"] = plots.verdicts(s)
            md = plots.summary_markdown(s)
        except KeyError as err:
            print(f"theory.{name}: {path} predates the check reading {err}; only the {check_prefix} verdicts are "
                  f"renewed (a full `python -m theory.plots --out {out_dir}` renews the rest)", file=sys.stderr)
            ours = verdicts(p)
            s["verdicts"] = [v for v in s.get("verdicts", []) if not v["check"].startswith(check_prefix)] + ours
            md_path = out_dir / "summary.md"
            cell = lambda text: text.replace("|", "\\|")  # noqa: E731
            table = ["Verdicts of this study (margin: slack when positive, size of the violation when negative):",
                     "", "| check | theorem | verdict | margin | detail |", "|---|---|---|---|---|"]
            table += [f"| {cell(v['check'])} | {'yes' if v['theorem'] else 'no (reported)'} | "
                      f"{'holds' if v['holds'] else 'FAILS'} | {v['margin']:+.3g} | {cell(v['detail'])} |"
                      for v in ours]
            md = splice(md_path.read_text() if md_path.is_file() else "", summary_lines(p) + table + [""])
        with write_atomic(path, "w") as f:
            json.dump(s, f, indent=1, default=float)
        with write_atomic(out_dir / "summary.md", "w") as f:
            f.write(md)
    return s


def study_main(argv, *, description: str, quick_help: str, run: Callable[[bool, int], dict[str, Any]],
               plot: Callable[[dict, Path], None], figure: str, merge_into: Callable[..., dict[str, Any]],
               summary_lines: Callable[[dict], list[str]]) -> int:
    """The command of one study (`python -m theory.pacing`, `theory.online`): runs it (`run(quick,
    seed)`), draws `figure`, merges it into the shared summary, prints its section; exits 1 when a
    check stated as a theorem fails."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", required=True, help="folder holding summary.json from `python -m theory.plots`")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    p = run(args.quick, args.seed)
    plot(p, Path(args.out) / figure)
    s = merge_into(args.out, p)
    print("\n".join(summary_lines(p)))
    failed = [v for v in s["verdicts"] if v["theorem"] and not v["holds"]]
    for v in failed:
        print(f"theory: FAILS: {v['check']} (margin {v['margin']:+.3g}; {v['detail']})", file=sys.stderr)
    return 1 if failed else 0
