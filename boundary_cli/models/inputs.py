"""Which image sizes an architecture takes, checked before it is built."""

from __future__ import annotations

from boundary_cli.errors import BoundaryError

ANY_SIZE = "small_cnn takes any size >= 4, resnet18 any size >= 8"


def check_size(model: str, image_size: tuple[int, int], *, exact: int | None = None, minimum: int | None = None) -> None:
    """Raise BoundaryError, naming the sizes ``model`` takes, when ``image_size`` (H, W) is not one of them."""
    h, w = image_size
    if exact is not None and (h, w) != (exact, exact):
        raise BoundaryError(f"model {model} takes {exact}x{exact} inputs only; the dataset's images are {h}x{w} "
                            f"(pick a dataset with {exact}x{exact} images or another model: {ANY_SIZE})")
    if minimum is not None and min(h, w) < minimum:
        hint = "" if minimum <= 4 else " (pick another model: small_cnn takes any size >= 4)"
        raise BoundaryError(f"model {model} takes any size >= {minimum}x{minimum}; the dataset's images are "
                            f"{h}x{w}{hint}")
