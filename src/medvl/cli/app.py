"""The typer applications; command modules register their commands on these.

The CLI holds no logic: each command parses its arguments and calls one library function.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="medvl",
    help="Pretrain, adapt, evaluate and serve medical vision-language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Datasets: read, check, split, de-identify, synthesise, convert, cache.",
                       no_args_is_help=True)
models_app = typer.Typer(help="Model registry: list presets and pretrained encoders.", no_args_is_help=True)
eval_app = typer.Typer(help="Evaluate encoders: zero-shot, retrieval, linear probe, kNN, fine-tune.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")
app.add_typer(eval_app, name="eval")


def _resolve_device(value: str) -> str:
    from medvl.models.encoder import resolve_device

    return resolve_device(value)


def device_option() -> typer.models.OptionInfo:
    """``--device`` for every command that runs a model: ``auto`` (the default) uses the GPU when present."""
    return typer.Option("auto", "--device", callback=_resolve_device,
                        help="auto (the GPU when present, else cpu), cpu, cuda, cuda:1 ...")
