"""boundary's Hydra configs. Importing this package (Hydra's first step when it composes them) registers
the resolver their defaults lists use, so it exists before composition starts."""

from omegaconf import OmegaConf


def pick(key: str, table: dict, default: str) -> str:
    """``${boundary_pick:KEY,{k: v, ...},DEFAULT}``: the table's value for KEY, else DEFAULT. In a defaults
    list KEY is a group choice, e.g. experiment=lcr's recipe by ``${model}``."""
    return str(table.get(key, default))


OmegaConf.register_new_resolver("boundary_pick", pick, replace=True)
