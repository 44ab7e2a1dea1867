"""boundary's Hydra configs. Importing this package (Hydra's first step when it composes them: the CLI's
``pkg://boundary_cli.conf`` and ``initialize_config_module``) registers the resolvers they use, so they
exist before composition starts. This is the one place resolvers are registered; importing
``boundary_cli`` itself (geometry/ as a library) does not load omegaconf."""

import os

from omegaconf import OmegaConf


def pick(key: str, table: dict, default: str) -> str:
    """``${boundary_pick:KEY,{k: v, ...},DEFAULT}``: the table's value for KEY, else DEFAULT. In a defaults
    list KEY is a group choice, e.g. experiment=lcr's recipe by ``${model}``."""
    return str(table.get(key, default))


def user_cache_dir() -> str:
    """``${boundary_user_cache:}``: the user's cache folder for boundary, ``$XDG_CACHE_HOME/boundary`` or
    ``~/.cache/boundary``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "boundary")


OmegaConf.register_new_resolver("boundary_pick", pick, replace=True)
OmegaConf.register_new_resolver("boundary_user_cache", user_cache_dir, replace=True)
