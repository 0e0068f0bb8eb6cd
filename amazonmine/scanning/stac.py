"""A STAC Item as a scene: ``amazonmine scan item.json`` (a local file or a URL) scans the item's imagery.

A STAC Item is a GeoJSON Feature whose ``assets`` name its files. Scan takes the ``visual`` asset (8-bit R,G,B,
what a JPEG-trained model wants) and else the ``analytic`` one (Planet's 16-bit B,G,R,NIR); an item with
neither is refused in one line that names the assets it has. A relative asset href is resolved against where
the item was read from, so an item and its COG can be copied together to another folder or bucket.
"""

from __future__ import annotations

from urllib.parse import urlparse

from amazonmine.core.errors import AmazonmineError

ASSET_PREFERENCE = ("visual", "analytic")


def is_stac_item(text: str) -> bool:
    """A scene argument that names a STAC Item: a path or URL of a .json file (a URL may carry a query)."""
    location = urlparse(text).path if "://" in text else text
    return location.lower().endswith(".json")


URL_TIMEOUT_S = 60
MAX_ITEM_BYTES = 16 << 20  # an Item is a few kB; a bigger "item" is something else


def item_scene(href: str) -> str:
    """The absolute path or URL of the imagery a STAC Item points at (its visual asset, else analytic)."""
    import pystac
    from pystac.utils import make_absolute_href

    location = href if "://" in href else make_absolute_href(href)  # relative asset hrefs resolve against it
    document = _read_json(href)
    if not isinstance(document, dict) or document.get("type") != "Feature" or "stac_version" not in document:
        kind = document.get("type") if isinstance(document, dict) else type(document).__name__
        raise AmazonmineError(f"{href}: not a STAC Item (a STAC Item is a GeoJSON Feature with a stac_version; "
                              f"this is {kind!r})")
    try:
        item = pystac.Item.from_dict(document, href=location, migrate=True, preserve_dict=False)
    except (pystac.STACError, pystac.STACTypeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AmazonmineError(f"{href}: not a readable STAC Item ({reason})") from None
    item.set_self_href(location)
    for key in ASSET_PREFERENCE:
        asset = item.assets.get(key)
        if asset is not None:
            target = asset.get_absolute_href()
            if not target:
                raise AmazonmineError(f"{href}: the {key!r} asset of STAC Item {item.id!r} has no href")
            return target
    have = ", ".join(sorted(item.assets)) or "none"
    raise AmazonmineError(f"{href}: STAC Item {item.id!r} has no {' or '.join(map(repr, ASSET_PREFERENCE))} asset "
                          f"to scan (its assets: {have})")


def _read_json(href: str):
    """The parsed JSON of a local file (regular files only) or a URL (with a timeout), or a one-line refusal."""
    import json
    from urllib.error import URLError
    from urllib.request import urlopen

    from amazonmine.scanning.tiling import is_remote, local_container, require_regular_file

    local = local_container(href) if is_remote(href) else href
    if local is not None:  # never opened blind: a FIFO named item.json would wait forever
        require_regular_file(local, "a STAC Item is a JSON file")
    try:
        if is_remote(href):
            with urlopen(href, timeout=URL_TIMEOUT_S) as response:
                data = response.read(MAX_ITEM_BYTES + 1)
        else:
            with open(href, "rb") as fh:
                data = fh.read(MAX_ITEM_BYTES + 1)
    except (OSError, URLError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        raise AmazonmineError(f"{href}: cannot read the STAC Item ({reason})") from None
    if len(data) > MAX_ITEM_BYTES:
        raise AmazonmineError(f"{href}: over {MAX_ITEM_BYTES >> 20} MB: not a STAC Item")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise AmazonmineError(f"{href}: not JSON ({str(exc).splitlines()[0][:200]})") from None
