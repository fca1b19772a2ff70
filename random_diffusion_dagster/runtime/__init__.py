"""How the project runs Dagster: the CLI, its instance, the guarded UI, the daemon, the remote client, the terminal
log and the instance storages. Nothing here is loaded by Dagster's code location."""
