"""`wd convert`: the checkpoints people already have (an open-muse or aMUSEd VQGAN, a T5 as published) as our
parts, and a pipeline directory assembled from parts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from wd_cli.errors import one_line_errors
from wd_cli.pipeline import PipelineDefaults

source_argument = click.argument("source", type=click.Path(exists=True, file_okay=False, path_type=Path))
out_argument = click.argument("out", type=click.Path(path_type=Path))
overwrite_option = click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse an OUT that holds something unless --overwrite (the new directory replaces it only when complete)."""
    if out.exists() and not overwrite and not (out.is_dir() and not any(out.iterdir())):
        raise click.UsageError(f"{out} exists; pass --overwrite to replace it")


@click.group()
def convert() -> None:
    """Convert public checkpoints into pipeline parts, and assemble a pipeline directory from parts.

    \b
    Example:
      wd convert tokenizer amused-256/vqvae parts/tokenizer        # or an open-muse VQGAN directory
      wd convert text-encoder t5-v1_1-base parts/text_encoder      # a transformers T5 directory as published
      wd convert pipeline --stpt runs/stpt --tokenizer parts/tokenizer --text-encoder parts/text_encoder \\
          --set steps=12 pipelines/mine
    """


@convert.command()
@source_argument
@out_argument
@click.option("--layout", type=click.Choice(["auto", "open-muse", "diffusers"]), default="auto", show_default=True,
              help="The source's layout; auto tells it from config.json.")
@overwrite_option
def tokenizer(source: Path, out: Path, layout: str, overwrite: bool) -> None:
    """Convert a VQGAN checkpoint in SOURCE into a tokenizer directory OUT (same ids as the source model).

    SOURCE is an open-muse VQGANModel directory (config.json + pytorch_model.bin), a diffusers VQModel directory
    (config.json + diffusion_pytorch_model.safetensors), or a diffusers pipeline holding one in vqvae/ (aMUSEd).

    \b
    Example:
      wd convert tokenizer vqgan-f16-8192-laion parts/tokenizer
    """
    from wd_tokenizer import from_checkpoint

    from wd_cli.atomic import atomic_directory

    check_out(out, overwrite)
    with one_line_errors():
        vqgan = from_checkpoint(source, None if layout == "auto" else layout)
        with atomic_directory(out) as staging:
            vqgan.save_pretrained(staging)
    click.echo(f"{out}: VQGAN with {vqgan.codebook_size} codes, {vqgan.downsample_factor}x downsampling")


@convert.command("text-encoder")
@source_argument
@out_argument
@click.option("--max-length", type=click.IntRange(min=1), default=77, show_default=True,
              help="Tokens kept per prompt (</s> included).")
@overwrite_option
def text_encoder(source: Path, out: Path, max_length: int, overwrite: bool) -> None:
    """Convert a transformers T5 directory in SOURCE into a text encoder directory OUT (a pipeline's text_encoder/).

    SOURCE is a T5 as published: config.json, its weights (the decoder's are dropped) and tokenizer.json or
    spiece.model alone (reading that needs the t5 extra: pip install 'wd-cli[t5]'). OUT keeps the encoder and
    a tokenizer.json, so loading it later needs neither sentencepiece nor protobuf.

    \b
    Example:
      wd convert text-encoder t5-v1_1-base parts/text_encoder --max-length 64
    """
    from wd_cli.atomic import atomic_directory
    from wd_cli.text_encoders import T5TextEncoder

    check_out(out, overwrite)
    with one_line_errors():
        encoder = T5TextEncoder.from_pretrained(source, max_length=max_length)
        with atomic_directory(out) as staging:
            encoder.save_pretrained(staging)
    click.echo(f"{out}: T5 encoder with d_model {encoder.dim} (the STPT's text_dim), max_length {max_length}")


@convert.command()
@out_argument
@click.option("--stpt", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A training run (newest checkpoint, EMA weights if kept), a checkpoint, a pipeline or an STPT "
                   "directory.")
@click.option("--tokenizer", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Tokenizer directory (default: the run's model.tokenizer, or the pipeline's).")
@click.option("--text-encoder", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Text encoder directory (default: the run's model.text_encoder, or the pipeline's).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Set a pipeline default (repeatable), one of: "
                   f"{', '.join(field.name for field in dataclasses.fields(PipelineDefaults))}.")
@overwrite_option
def pipeline(out: Path, stpt: Path, tokenizer: Path | None, text_encoder: Path | None, overrides: tuple[str, ...],
             overwrite: bool) -> None:
    """Assemble a pipeline directory OUT (what wd generate loads) from an STPT, a tokenizer and a text encoder.

    The defaults start from the clip shape a run trained at (or the pipeline's defaults); --set replaces them.
    Parts that do not fit (codebook size, text width, frame size) are refused before anything is written.

    \b
    Example:
      wd convert pipeline --stpt runs/stpt --set steps=12 --set guidance_scale=2 pipelines/mine
      wd convert pipeline --stpt pipelines/mine --set steps=20 pipelines/mine-20-steps
    """
    from wd_cli.train.export import assemble_pipeline

    check_out(out, overwrite)
    with one_line_errors():
        click.echo(assemble_pipeline(out, stpt, tokenizer, text_encoder, overrides))
