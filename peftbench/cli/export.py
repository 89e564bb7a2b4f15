"""``peftbench export``: kept artifacts as folders that transformers or PEFT load without peftbench."""

from __future__ import annotations

from pathlib import Path

import click

from peftbench.cli.output import stderr_console


@click.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--to", "dest", required=True, type=click.Path(path_type=Path),
              help="new (or empty) folder to write; for a run folder, one sub-folder per cell")
@click.option("--merge", is_flag=True, help="fold a mergeable method (lora, qlora, ...) into the base and save the "
              "merged model as a plain from_pretrained folder")
@click.option("--base", metavar="MODEL", help="the base model (any --model source) instead of the one the artifact "
              "records; needed for artifacts written before peftbench recorded it")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
              help="where to load the model while exporting")
@click.pass_obj
def export(host, source, dest, merge, base, device):
    """Export kept artifacts as folders transformers or PEFT load alone.

    SOURCE is a run folder of `peftbench run --keep-artifacts` or one artifact folder under its artifacts/.
    LoRA and QLoRA become PEFT folders, full fine-tuning a from_pretrained folder, a mergeable method with
    --merge a merged from_pretrained folder; each gets the base model's tokenizer."""
    from peftbench.session.export import export as export_artifacts

    console = stderr_console()
    written = export_artifacts(source, dest, merge=merge, base=base, device=device, host=host,
                               say=lambda text: console.print(text, highlight=False))
    for folder in written:
        click.echo(str(folder))
