"""`poodle config NAME_OR_YAML [key=value ...]`: print the resolved config as YAML."""

from __future__ import annotations

import argparse

import yaml

from poodle.config import load_config, shipped_configs


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", default="poodle_bdd100k", help="shipped config name or path to a YAML file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides such as optim.lr=1e-3")
    p.add_argument("--list", action="store_true", help="list the shipped configs and exit")


def run(args: argparse.Namespace) -> int:
    if args.list:  # name, method, and the first comment line of the file
        from importlib import resources

        root = resources.files("poodle") / "configs"
        rows = []
        for name in shipped_configs():
            cfg = load_config(name)
            text = (root / f"{name}.yaml").read_text().splitlines()
            about = next((line.lstrip("# ").strip() for line in text if line.startswith("#")), "")
            rows.append((name, cfg.method, about))
        width = max(len(r[0]) for r in rows)
        for name, method, about in rows:
            print(f"{name:<{width}}  {method:<8} {about[:100]}")
        return 0
    cfg = load_config(args.config, args.overrides)
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0
