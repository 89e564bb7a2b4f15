"""The listing commands: ``peftbench methods``, ``options``, ``tasks`` and ``plugins``. Each prints a table,
or with ``--json`` the rows it is made from (peftbench.cli.catalog builds them)."""

from __future__ import annotations

from pathlib import Path

import click

from peftbench.cli import catalog
from peftbench.cli.output import print_json


def _table(title: str, columns: tuple[str, ...], overflow: str | None = None):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col, **({"overflow": overflow} if overflow else {}))
    return table


def _print(table) -> None:
    from rich.console import Console

    Console().print(table)


@click.command()
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True)
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]),
              help="check availability for this device")
@click.pass_obj
def methods(host, names, as_json, device):
    """List methods: plugin, capabilities, availability, options (NAMES: only these, with each option's
    default and help)."""
    rows = catalog.describe_methods(host, device)
    if names:
        rows = _named(rows, names)
    if as_json:
        print_json(rows)
        return
    t = _table("methods" + ("" if names else " (peftbench methods NAME: each option's default and help)"),
               ("name", "plugin", "capabilities", "available", "options"))
    for r in rows:
        caps = ", ".join(k for k, v in (r["capabilities"] or {}).items() if v is True)
        if names:
            opts = "\n".join(f"{o['name']}={o['default']}  {o['help']}" for o in r["options"])
        else:  # forty-odd PEFT tuners with their whole help would be thousands of lines
            opts = ", ".join(o["name"] for o in r["options"])
        avail = "yes" if r["available"] else f"no: {r['reason']}"
        t.add_row(r["name"] + (f"\n({', '.join(r['aliases'])})" if r["aliases"] else ""), r["plugin"], caps, avail, opts)
    _print(t)


def _named(rows: list[dict], names: tuple[str, ...]) -> list[dict]:
    """The rows of ``names`` (a method's name or alias), in the order asked; an unknown name is a UsageError."""
    from peftbench.errors import UsageError, did_you_mean

    known = {n: r for r in rows for n in (r["name"], *(r.get("aliases") or []))}
    for name in names:
        if name not in known:
            raise UsageError(f"Unknown method {name!r}.{did_you_mean(name, list(known))} `peftbench methods` lists "
                             "them all.")
    return list({known[n]["name"]: known[n] for n in names}.values())


@click.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--markdown", is_flag=True, help="print a Markdown table (docs/training-options.md)")
def options(as_json, markdown):
    """List the shared training options (--set KEY=VALUE): type, default and help."""
    from peftbench.session.options import describe_options, options_markdown

    rows = [{k: v for k, v in r.items() if k != "group"} for r in describe_options()]
    if as_json:
        print_json(rows)
        return
    if markdown:
        click.echo(options_markdown(), nl=False)
        return
    t = _table("training options (--set KEY=VALUE; METHOD.KEY=VALUE for a method's own: peftbench methods)",
               ("option", "type", "default", "help"))
    for r in rows:
        t.add_row(r["name"], r["type"], str(r["default"]), r["help"])
    _print(t)


@click.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--tasks-dir", "tasks_dirs", multiple=True, type=click.Path(path_type=Path),
              help="extra folder of task definitions (repeatable)")
@click.option("--data-dir", type=click.Path(path_type=Path), help="local data folder [env: PEFTBENCH_DATA_DIR]")
@click.pass_obj
def tasks(host, as_json, tasks_dirs, data_dir):
    """List tasks: what each trains and scores, where its data comes from, sizes, and whether it is here."""
    root, rows = catalog.describe_tasks(host, list(tasks_dirs), data_dir)
    rows = [{**r, "validation": _validation(r)} for r in rows]
    if as_json:
        print_json(rows)
        return
    t = _table("tasks" + (f" (data folder: {root})" if root else " (no --data-dir: hub sources)"),
               ("name", "use", "metric", "data source", "rows", "here", "description"), overflow="fold")
    for r in rows:
        sizes = ", ".join(f"{k} {v:,}" if v else f"{k} empty" for k, v in (r["sizes"] or {}).items()) or "—"
        held = (r["validation"] or {}).get("size") if (r["validation"] or {}).get("from") == "train" else None
        if isinstance(held, int) and held and (r["sizes"] or {}).get("train"):
            sizes = sizes.replace(f"train {r['sizes']['train']:,}",
                                  f"train {r['sizes']['train']:,} ({held:,} held out for validation)", 1)
        use = "broken" if r.get("broken") else "score only" if r["eval_only"] else "train + score"
        t.add_row(r["name"], use, r["metric"], r["source"], sizes, "[green]yes[/]" if r["available"] else "[red]no[/]",
                  r["error"] if r.get("broken") else r["description"].split(". ")[0])
    _print(t)


def _validation(row: dict) -> dict | None:
    """The task's validation split ({from, size, seed}) with its size in rows where the data's are counted:
    a split of the data's own, or the rows ``prepare`` will carve out of train (0: too few to carve any)."""
    from peftbench.tasks.data import validation_size
    from peftbench.tasks.data_spec import ValidationSpec

    found, sizes = row.get("validation"), row.get("sizes") or {}
    if not found:
        return found
    if found["from"] == "dataset":
        return {**found, "size": sizes.get("validation")}
    if sizes.get("train"):
        return {**found, "size": validation_size(sizes["train"], ValidationSpec(found["size"], found["seed"]))}
    return found


@click.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def plugins(host, as_json):
    """List plugins: distribution, version, hooks, methods, load failures."""
    rows = catalog.describe_plugins(host)
    if as_json:
        print_json(rows)
        return
    t = _table("plugins", ("name", "distribution", "status", "hooks", "methods"))
    for r in rows:
        dist = f"{r['distribution']} {r['version']}" if r["distribution"] else "—"
        status = r["status"] + (f": {r['error']}" if r["error"] else "")
        t.add_row(r["name"], dist, status, ", ".join(r["hooks"]), ", ".join(r["methods"]))
    _print(t)
