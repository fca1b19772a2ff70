"""`random-diffusion-webserver`: `dagster-webserver` with all its options, guarded, on the project's instance."""

from __future__ import annotations

import sys

from ..settings import SettingError, allowed_hosts, allowed_origins
from .instance import project_instance
from .ui_guard import WebserverGuard, checked_origins


def project_instance_ref() -> str:
    """The serialized ref of `random-diffusion`'s instance: DAGSTER_HOME, else ./dagster.yaml, history in ./.dagster."""
    from dagster._serdes import serialize_value

    with project_instance() as instance:
        return serialize_value(instance.get_ref())


def main(argv: list[str] | None = None) -> None:
    """`random-diffusion-webserver`: `dagster-webserver` with all its options, guarded, on the project's instance."""
    import dagster_webserver.cli as webserver_cli

    create_app = getattr(webserver_cli, "create_app_from_workspace_process_context", None)
    if create_app is None or not hasattr(webserver_cli, "cli"):
        raise SystemExit(
            "This dagster-webserver no longer builds its app through create_app_from_workspace_process_context; "
            "the guard cannot wrap it. Install dagster-webserver==1.13.27 (pyproject.toml pins it)."
        )
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        origins, hosts = checked_origins(allowed_origins()), allowed_hosts()
        if "--instance-ref" not in args and not any(arg in ("--help", "--version") for arg in args):
            args += ["--instance-ref", project_instance_ref()]  # a broken dagster.yaml fails here, in one line
    except SettingError as error:
        print(f"random-diffusion-webserver: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None

    def create_guarded_app(*args, **kwargs):
        return WebserverGuard(create_app(*args, **kwargs), allowed_origins=origins, allowed_hosts=hosts)

    webserver_cli.create_app_from_workspace_process_context = create_guarded_app
    webserver_cli.cli.main(args=args, prog_name="random-diffusion-webserver", auto_envvar_prefix="DAGSTER_WEBSERVER")


if __name__ == "__main__":
    main()
