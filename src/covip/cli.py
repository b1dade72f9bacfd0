"""`covip`: small command-line helpers around the workflow (prompts, schemas, artifact checks)."""

from __future__ import annotations

import argparse
import sys

from covip import schemas
from covip.io import ArtifactError, read_artifact
from covip.prompts import PromptBook, available_prompts


def _prompts(args) -> int:
    if args.name is None:
        print("\n".join(available_prompts()))
        return 0
    print(PromptBook().source(args.name), end="")
    return 0


def _schema(args) -> int:
    names = [args.artifact] if args.artifact else sorted(schemas.ALL)
    for name in names:
        artifact = schemas.ALL[name]
        print(f"# {artifact.name}: {artifact.description}")
        for field in artifact.schema:
            required = " (required)" if field.name in artifact.required else ""
            print(f"  {field.name}: {field.type}{required}")
        print()
    return 0


def _check(args) -> int:
    try:
        table = read_artifact(args.path, schemas.ALL[args.artifact])
    except ArtifactError as error:
        print(error, file=sys.stderr)
        return 1
    print(f"{args.path}: {table.num_rows} rows, valid '{args.artifact}' artifact")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="covip", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prompts", help="list the prompt templates, or print one (to copy and override)")
    p.add_argument("name", nargs="?", choices=available_prompts())
    p.set_defaults(func=_prompts)
    p = sub.add_parser("schema", help="print the schema of one artifact or of all")
    p.add_argument("artifact", nargs="?", choices=sorted(schemas.ALL))
    p.set_defaults(func=_schema)
    p = sub.add_parser("check", help="validate a Parquet file against an artifact schema")
    p.add_argument("artifact", choices=sorted(schemas.ALL))
    p.add_argument("path")
    p.set_defaults(func=_check)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
