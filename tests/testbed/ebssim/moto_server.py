"""moto's server (`python -m moto.server`), with one change for scale: a resource's tags
are looked up by its ID instead of by scanning every tag of the account.

moto 5.2 answers `TaggedEC2Resource.get_tags()` with `describe_tags(resource-id=<id>)`,
which walks all tags of all resources, and it calls get_tags for every volume a
DescribeVolumes filters or returns. With 800 volumes of 8 tags each, a DescribeVolumes
filtered by tag walks about five million tags: at 200 pools that was 62% of moto's CPU
(py-spy) and made each simulated EC2 call take seconds, so the provision benchmark
measured moto rather than the operator. EC2 answers these calls in tens of milliseconds.

The answer is the same list, in the same order, as moto's: that resource's tags in their
insertion order (describe_tags walks resources, then each resource's tags in order; an
exact resource-id filter, fnmatch-anchored, selects one resource). `check()` compares the
two on a live backend and runs at start-up, so a moto upgrade that changes either fails
loudly instead of drifting.
"""

import sys

from moto.ec2.models.core import TaggedEC2Resource
from moto.ec2.utils import EC2_PREFIX_TO_RESOURCE, get_prefix

_moto_get_tags = TaggedEC2Resource.get_tags


def _get_tags(self) -> list[dict[str, str]]:
    rid = getattr(self, "id", None)
    if not rid:
        return []
    # .get, not [], on moto's defaultdict: looking must not add an empty entry.
    tags = self.ec2_backend.tags.get(rid)
    if not tags:
        return []
    rtype = EC2_PREFIX_TO_RESOURCE.get(get_prefix(rid), "")
    return [{"resource_id": rid, "key": k, "value": v, "resource_type": rtype} for k, v in list(tags.items())]


def check() -> None:
    """The indexed lookup gives moto's answer for tagged, untagged and unknown resources."""
    from moto.ec2.models import ec2_backends

    backend = ec2_backends["000000000000"]["us-west-2"]
    a = backend.create_volume(size=1, zone_name="us-west-2a")
    b = backend.create_volume(size=1, zone_name="us-west-2a")
    backend.create_tags([a.id], {"k1": "v1", "Name": "x"})
    backend.create_tags([b.id], {"k1": "other"})
    backend.create_tags([a.id], {"k0": "later"})
    c = backend.create_volume(size=1, zone_name="us-west-2a")
    try:
        for v in (a, b, c):
            mine, theirs = _get_tags(v), _moto_get_tags(v)
            if mine != theirs:
                raise SystemExit(f"ebssim.moto_server: tag lookup differs from moto's for {v.id}: {mine} != {theirs}")
    finally:
        for v in (a, b, c):
            backend.delete_volume(v.id)
            backend.tags.pop(v.id, None)


def main() -> None:
    TaggedEC2Resource.get_tags = _get_tags
    check()
    from moto.server import main as moto_main

    moto_main(sys.argv[1:])


if __name__ == "__main__":
    main()
