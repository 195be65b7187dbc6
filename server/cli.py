"""`latentserve` command line: subcommands whose flags are generated from typed configs.

`latentserve serve` builds its flags from `ServerConfig` (no default is written here).
Invalid values exit with status 2 and one line naming the flag; a model that cannot be
found or read exits with status 1 and one line, not a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import types
import typing
from typing import Literal

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined

from server.config import ServerConfig

_SUPPRESS = argparse.SUPPRESS


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser, config_cls: type[BaseModel]) -> None:
    """One flag per field; values stay absent unless given, so the model's defaults rule."""
    for name, field in config_cls.model_fields.items():
        annotation = field.annotation
        args = typing.get_args(annotation)
        optional = typing.get_origin(annotation) in (typing.Union, types.UnionType) and (
            type(None) in args
        )
        if optional:
            annotation = next(a for a in args if a is not type(None))
        kwargs: dict = {"default": _SUPPRESS, "dest": name}
        default = field.default
        help_text = field.description or ""
        env = (field.json_schema_extra or {}).get("env") if field.json_schema_extra else None
        if default not in (None, PydanticUndefined) and not isinstance(default, bool):
            help_text += f" (default: {default})"
        if typing.get_origin(annotation) is Literal:
            kwargs["choices"] = list(typing.get_args(annotation))
        elif annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
            help_text += f" (default: {default})"
        elif typing.get_origin(annotation) is list:
            kwargs["nargs"] = "*"
            kwargs["type"] = typing.get_args(annotation)[0]
        elif annotation in (int, float):
            kwargs["type"] = annotation
        elif env:
            kwargs["metavar"] = name.upper()
        parser.add_argument(_flag(name), help=help_text, **kwargs)


def config_from_args(config_cls: type[BaseModel], ns: argparse.Namespace) -> BaseModel:
    values = {k: v for k, v in vars(ns).items() if k in config_cls.model_fields}
    for name, field in config_cls.model_fields.items():
        env = (field.json_schema_extra or {}).get("env") if field.json_schema_extra else None
        if name not in values and env and os.environ.get(env):
            values[name] = os.environ[env]
    return config_cls(**values)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentserve",
        description="OpenAI-compatible inference server with test-time latent refinement",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP server")
    add_config_flags(serve, ServerConfig)
    from server.tools.eval_config import EvalConfig

    evaluate = sub.add_parser("eval", help="accuracy of greedy or LatentSeek on math word problems")
    add_config_flags(evaluate, EvalConfig)
    from latent_ops.train_slr import TrainConfig

    train = sub.add_parser("train-slr", help="train SLR loop adapters (base model frozen)")
    add_config_flags(train, TrainConfig)
    from server.tools import telemetry_plot

    telemetry_plot.add_arguments(
        sub.add_parser("telemetry-plot", help="plot latent trajectories of traced requests")
    )
    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True)
    from server.tools import bench_serve

    bench_serve.add_arguments(bench.add_parser("serve", help="load an OpenAI-compatible server"))
    return parser


def _validation_message(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    return f"{_flag(loc) if loc else 'config'}: {err['msg']} (got {err.get('input')!r})"


def _config(parser, config_cls, ns, prog: str):
    """The typed config from parsed flags, or exit 2 with one line naming the flag."""
    try:
        return config_from_args(config_cls, ns)
    except ValidationError as exc:
        parser.exit(2, f"{prog}: error: {_validation_message(exc)}\n")


def slr_training_data(cfg):
    """`latentserve train-slr`'s inputs from the server's pieces (latent_ops.train_slr imports
    nothing from server/): the model on CPU in float32, the chat prompt `latentserve eval`
    asks, and the training problems (seeded synthetic ones from seed 1000 on, `--varied` ones
    from seed 1000 on, GSM8K rows with `--gsm8k`, less the questions of `--exclude`)."""
    from latent_ops.train_slr import TrainingData
    from server.engine.loader import load_model
    from server.refinement import chat_encoder
    from server.tools.eval import question_text
    from server.tools.problems import load_problems, synthetic_problems

    loaded = load_model(cfg.model, device="cpu", dtype="float32")
    encode = chat_encoder(loaded.tokenizer)
    problems = [p for i in range(cfg.synthetic) for p in synthetic_problems(1, seed=1000 + i)]
    problems += [p for i in range(cfg.varied) for p in load_problems(f"varied:1,seed={1000 + i}")]
    if cfg.gsm8k:
        problems += [p for p in load_problems(cfg.gsm8k) if p.rationale]
    if cfg.exclude:
        held_out = {
            p.question for spec in cfg.exclude.split(";") for p in load_problems(spec.strip())
        }
        problems = [p for p in problems if p.question not in held_out]
    return TrainingData(
        model=loaded.model,
        tokenizer=loaded.tokenizer,
        prompt=lambda p: encode([{"role": "user", "content": question_text(p)}]),
        problems=problems,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.command == "serve":
        from server.app import serve

        return serve(_config(parser, ServerConfig, ns, "latentserve"))
    if ns.command == "eval":
        from server.tools.eval import main as eval_main
        from server.tools.eval_config import EvalConfig

        return eval_main(_config(parser, EvalConfig, ns, "latentserve eval"))
    if ns.command == "train-slr":
        from latent_ops.train_slr import TrainConfig
        from latent_ops.train_slr import main as train_main

        cfg = _config(parser, TrainConfig, ns, "latentserve train-slr")
        return train_main(cfg, slr_training_data)
    if ns.command == "telemetry-plot":
        from server.tools import telemetry_plot

        return telemetry_plot.run(ns)
    if ns.command == "bench":
        from server.tools import bench_serve

        summary = bench_serve.run(ns)
        loads = [summary["plain_only"], summary["mixed"]] if "mixed" in summary else [summary]
        return 0 if all(s["successful_requests"] for s in loads) else 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
