"""`poodle` command line. Each subcommand lives in its own module exposing `add_arguments` and `run`.

Modules are imported only when their subcommand runs, so `poodle --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module, one-line description). Order is the order shown by `poodle --help`.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("poodle.cli.demo", "run the main job end to end on SynthDrive (no download, no GPU)"),
    "synth": ("poodle.cli.synth", "generate a SynthDrive dataset in the BDD100K on-disk layout"),
    "flow": ("poodle.cli.flow", "compute and visualise optical flow; report end-point error on SynthDrive"),
    "prepare": ("poodle.cli.prepare", "decode sampled frame pairs and precompute their flow into WebDataset shards"),
    "pretrain": ("poodle.cli.pretrain", "pretrain PooDLe on SynthDrive, BDD100K, Walking Tours or a folder of videos"),
    "eval": (
        "poodle.cli.eval",
        "segmentation (linear, UperNet) or detection (Faster R-CNN C4/FPN) readout of a backbone",
    ),
    "export": ("poodle.cli.export", "export a trained backbone (torchvision, timm or mmseg layout; SDM optional)"),
    "convert": ("poodle.cli.convert", "convert a published checkpoint (authors' PooDLe/FlowE, DINO, PixPro, DenseCL)"),
    "config": ("poodle.cli.config", "print a resolved config (shipped name or YAML, with key=value overrides)"),
    "stats": ("poodle.cli.stats", "class statistics of a labelled dataset (as the paper's Table 10) and its groups"),
    "compare": ("poodle.cli.compare", "print results of several evaluations side by side"),
    "analyze": (
        "poodle.cli.analyze",
        "analyses of a labelled dataset: subcrop-hit probability vs pixel probability (the paper's App. C)",
    ),
    "study": (
        "poodle.cli.study",
        "the SynthDrive study: Table 4/5 variants and baselines x seeds, same readout, claims tested",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    from poodle import __version__

    parser = argparse.ArgumentParser(
        prog="poodle",
        description="PooDLe: pooled and dense self-supervised learning from naturalistic videos.",
    )
    parser.add_argument("--version", action="version", version=f"poodle {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        # Arguments are added lazily in main() for the chosen command only.
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    command = argv[0] if argv and argv[0] in COMMANDS else None
    if command is None:  # --help, --version, no or an unknown command: argparse says what is valid
        args = parser.parse_args(argv)
        parser.print_help()
        return 0
    # The subcommand gets a parser of its own so that `key=value` overrides may stand between options
    # (`poodle pretrain --out r optim.lr=1e-3 --steps 5`): parse_intermixed_args does not work with subparsers.
    module_name, help_text = COMMANDS[command]
    prog, rest = f"poodle {command}", argv[1:]
    if command == "eval" and rest[:1] == ["detection"]:  # the detection readout has options of its own
        module_name, prog, rest = "poodle.cli.detect", "poodle eval detection", rest[1:]
    if command == "flow" and rest[:1] == ["train"]:  # label-free flow training has options of its own
        module_name, prog, rest = "poodle.cli.flow_train", "poodle flow train", rest[1:]
    module = importlib.import_module(module_name)
    sub = argparse.ArgumentParser(prog=prog, description=module.__doc__ or help_text,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    module.add_arguments(sub)
    args = sub.parse_intermixed_args(rest)
    args.command = command
    from poodle.config import ConfigError
    from poodle.output_dir import OutputDirError

    try:
        return int(module.run(args) or 0)
    except ConfigError as e:
        print(f"poodle {args.command}: config error: {e}", file=sys.stderr)
        return 2
    except (UserError, OutputDirError) as e:
        print(f"poodle {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, permissions, a path under a file, ...: one line with the path and the reason
        if os.environ.get("POODLE_DEBUG"):
            raise
        print(f"poodle {args.command}: error: {_os_error_line(e)}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into `head` and closed: not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"poodle {args.command}: interrupted", file=sys.stderr)
        return 130


def _os_error_line(e: OSError) -> str:
    if e.strerror is None:  # an OSError subclass raised with a message of its own
        return str(e)
    paths = " -> ".join(str(p) for p in (e.filename, e.filename2) if p is not None)
    return f"{paths}: {e.strerror}" if paths else e.strerror + " (set POODLE_DEBUG=1 for the traceback)"


def flag_overrides(args: argparse.Namespace, flags: tuple[tuple[str, str], ...]) -> list[str]:
    """`key=value` overrides from the command line, then one per convenience flag that was given (`--data` ->
    `data.root=...`), so a flag wins over the same key typed as an override."""
    overrides = list(args.overrides)
    overrides += [f"{key}={getattr(args, flag)}" for flag, key in flags if getattr(args, flag) is not None]
    return overrides


def add_weights_arguments(p: argparse.ArgumentParser) -> None:
    """--weights / --branch / --arch / --name of the readout commands (segmentation and detection)."""
    p.add_argument(
        "--weights",
        required=True,
        help="poodle run folder / checkpoint, torchvision .pth, a published checkpoint (the authors' "
        "PooDLe/FlowE, DINO, PixPro, DenseCL/MoCo; docs/weights.md), imagenet:PATH or random",
    )
    p.add_argument("--branch", choices=("auto", "online", "ema"), default="auto",
                   help="online or EMA weights of a published checkpoint (auto: the method's convention, DINO's "
                        "teacher, the others' online network)")  # fmt: skip
    p.add_argument("--arch", choices=("resnet18", "resnet34", "resnet50"), help="needed for random; else a check")
    p.add_argument("--name", help="method name shown in the tables (default: the weights' name)")


def add_override_arguments(p: argparse.ArgumentParser, example: str, set_example: str) -> None:
    """Recipe overrides as positional `key=value` anywhere on the line, and the same behind `--set`."""
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help=f"recipe overrides anywhere on the line, e.g. `{example}`")  # fmt: skip
    p.add_argument("--set", dest="set_overrides", nargs="+", action="extend", default=[], metavar="key=value",
                   help=f"the same overrides behind a flag, e.g. --set {set_example}")  # fmt: skip


class UserError(Exception):
    """Bad input from the user (path, size, count): printed as one clear line, exit status 2."""
