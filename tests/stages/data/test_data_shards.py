"""How the data stages cut their input into shards: balanced by bytes,
covering every row, the same whatever the worker count."""

from __future__ import annotations

from recipe_runner_stages.data.shards import TARGET_SHARDS, plan_shards


def test_plan_shards_balances_bytes_and_covers_every_row():
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(0)
    lens = np.concatenate([rng.integers(10, 200, 5000), rng.integers(50_000, 400_000, 60)])  # small docs, then big
    table = pa.table({"text": ["x" * int(n) for n in lens]})
    total = int(lens.sum())
    ranges = plan_shards(table, "text", shard_size=1000)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(lens)
    assert all(a < b for a, b in ranges) and all(b == c for (_, b), (c, _) in zip(ranges, ranges[1:], strict=False))
    assert max(b - a for a, b in ranges) <= 1000
    target = max(total / TARGET_SHARDS, 2**20)
    sizes = [int(lens[a:b].sum()) for a, b in ranges]
    # a shard exceeds the byte target only by its last document
    assert all(s - lens[b - 1] < target for s, (a, b) in zip(sizes, ranges, strict=True))
    assert plan_shards(pa.table({"text": pa.array([], pa.string())}), "text", 10) == [(0, 0)]
    small = table.slice(0, 5000)  # under 1 MiB of text: one shard
    assert plan_shards(small, "text", shard_size=10**9) == [(0, 5000)]
