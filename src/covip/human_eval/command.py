"""`covip human-eval ...`: serve the rating page, and manage rater links.

    covip human-eval serve --configfile config/config.yaml [--policies A B ...] [--rater-links N]
    covip human-eval raters add NAME --configfile config/config.yaml
    covip human-eval raters list --configfile config/config.yaml
    covip human-eval raters relink NAME --configfile config/config.yaml

The run's folder, seed and policies come from the same config files Snakemake reads (later files
override earlier ones, as with `snakemake --configfile A B`).
"""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from covip.human_eval.settings import HumanEvalSettings
from covip.human_eval.store import StoreError, VoteStore
from covip.core.settings import settings_from


class CommandError(RuntimeError):
    """A mistake in the command line or config; printed without a traceback."""


@dataclass
class StudyConfig:
    outdir: str
    seed: int
    policies: list[str]
    settings: HumanEvalSettings
    votes: Path


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def load_config(paths: list[str], policies: list[str] | None = None, votes: str | None = None) -> StudyConfig:
    config: dict = {}
    for path in paths:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as error:
            raise CommandError(f"{path}: cannot read the config file ({error.strerror})") from error
        config = _merge(config, loaded)
    if "seed" not in config:
        raise CommandError(f"config {paths}: no 'seed' (the plan is drawn from it)")
    try:
        settings = settings_from(HumanEvalSettings, config.get("human_eval"), "config 'human_eval'")
    except (ValueError, TypeError) as error:
        raise CommandError(str(error)) from error
    chosen = policies or settings.policies or (config.get("evaluation") or {}).get("policies") or []
    votes_path = votes or settings.votes
    if not votes_path:
        raise CommandError("no votes database: set human_eval.votes in the config or pass --votes PATH")
    return StudyConfig(str(config.get("outdir", "results")), int(config["seed"]), list(chosen), settings,
                       Path(votes_path))


def _link(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/r/{token}"


def _add_anonymous_raters(store: VoteStore, count: int, base_url: str) -> None:
    existing = {row["name"] for row in store.raters()}
    for k in range(1, count + 1):
        name = f"rater-{k}"
        if name in existing:
            print(f"  {name}: link shown when it was created (`covip human-eval raters relink {name}` for a new one)")
        else:
            print(f"  {name}: {_link(base_url, store.add_rater(name))}")


def _stop(signum, frame):
    raise KeyboardInterrupt


def serve(args) -> int:
    from waitress import create_server
    from werkzeug.middleware.proxy_fix import ProxyFix

    from covip.human_eval.app import create_app
    from covip.human_eval.secret import session_secret
    from covip.human_eval.study import load_study

    config = load_config(args.configfile, args.policies, args.votes)
    study = load_study(config.outdir, config.policies, config.settings, config.seed)
    plan = study.plan
    store = VoteStore(config.votes)
    app = create_app(study, store, session_secret(config.votes), secure_cookies=args.secure_cookies)
    if args.proxy_fix:
        # Trust X-Forwarded-For/-Proto/-Host/-Prefix from exactly this many proxies in front.
        n = args.proxy_fix
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n, x_prefix=n)
    server = create_server(app, host=args.host, port=args.port, threads=args.threads, ident="covip-human-eval")
    base_url = args.public_url or f"http://{args.host}:{server.effective_port}"
    print(f"plan {plan.version}: {len(plan.comparisons)} comparisons of {plan.policies}, up to "
          f"{min(config.settings.items_per_rater, len(plan.comparisons))} per rater; {plan.excluded_text()}")
    print(f"votes: {config.votes}")
    if args.rater_links:
        print("rater links:")
        _add_anonymous_raters(store, args.rater_links, base_url)
    print(f"serving on http://{args.host}:{server.effective_port}/ (Ctrl-C stops)", flush=True)
    # SIGTERM ends the loop like Ctrl-C, so the write-ahead log is folded in before exit.
    signal.signal(signal.SIGTERM, _stop)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        store.checkpoint()
        print(f"stopped; {len(store.votes())} votes in {config.votes}", flush=True)
    return 0


def raters(args) -> int:
    config = load_config(args.configfile, votes=args.votes)
    store = VoteStore(config.votes)
    if args.action == "list":
        for row in store.raters():
            print(f"{row['name']}\t{row['votes']} votes\tsince {row['created_at']}")
        return 0
    if not args.name:
        raise CommandError(f"`raters {args.action}` needs a NAME")
    token = store.add_rater(args.name) if args.action == "add" else store.relink(args.name)
    print(_link(args.public_url or "http://127.0.0.1:8000", token))
    return 0


def add_parser(subparsers) -> None:
    """Register `human-eval` on the covip command line."""
    parser = subparsers.add_parser("human-eval", help="pairwise caption-preference study: serve the page, manage raters")
    commands = parser.add_subparsers(dest="human_eval_command", required=True)

    def common(p):
        p.add_argument("--configfile", nargs="+", required=True, help="the run's config file(s), later ones override")
        p.add_argument("--votes", help="votes database (default: human_eval.votes of the config)")
        p.add_argument("--public-url", help="base URL raters reach the page at, for printed links "
                                            "(default: http://HOST:PORT)")

    p = commands.add_parser("serve", help="serve the rating page")
    common(p)
    p.add_argument("--policies", nargs="+", help="policies to compare (default: human_eval.policies, else "
                                                   "evaluation.policies)")
    p.add_argument("--rater-links", type=int, default=0, metavar="N",
                   help="make sure raters rater-1..rater-N exist; print the links of those created now")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    p.add_argument("--threads", type=int, default=8, help="request threads")
    p.add_argument("--proxy-fix", type=int, default=0, metavar="N",
                   help="behind N reverse proxies: trust their X-Forwarded-* headers (incl. -Prefix)")
    p.add_argument("--secure-cookies", action="store_true", help="send the session cookie over HTTPS only")
    p.set_defaults(func=serve)

    p = commands.add_parser("raters", help="add a rater (prints their link), list raters, or relink one")
    p.add_argument("action", choices=["add", "list", "relink"])
    p.add_argument("name", nargs="?")
    common(p)
    p.set_defaults(func=raters)


def run(args) -> int:
    """Run a parsed `human-eval` command; mistakes in the inputs end with a message, not a traceback."""
    from covip.human_eval.secret import SecretError
    from covip.human_eval.study import StudyError

    try:
        return args.func(args)
    except (CommandError, StudyError, StoreError, SecretError) as error:
        print(f"covip human-eval: {error}", file=sys.stderr)
        return 2

