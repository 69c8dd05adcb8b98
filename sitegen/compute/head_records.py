"""A head recorder's record slots -> HeadRecords (floats to 4 significant digits), and the
normalisers the page divides by."""

from __future__ import annotations

import torch

from sitegen.cache.head_data import SCALARS, SUMMARIES, HeadRecord, PairScalars
from sitegen.compute.rounding import rounded

NEG = float("-inf")


def scalar(t: torch.Tensor) -> float:
    """A 0-d tensor rounded to 4 significant digits."""
    return float(rounded(t.reshape(1))[0])


def records_of(tokens: torch.Tensor, slots: dict[str, torch.Tensor], n: int) -> list[HeadRecord]:
    """Head ``n``'s filled record slots as HeadRecords."""
    out = []
    for r in range(slots["seq"].shape[1]):
        seq, score = int(slots["seq"][n, r]), float(slots["score"][n, r])
        if seq < 0 or score == NEG:
            continue
        start = int(slots["start"][n, r])
        keys = slots["keys"][n, r]  # [scalar, width, k]
        width = keys.shape[1]
        earlier = sorted({int(k) for k in keys.reshape(-1).tolist() if 0 <= k < start})
        scalars = []
        for s in range(len(SCALARS)):
            valid = (keys[s] >= 0).tolist()
            vals = rounded(slots["values"][n, r, s])
            summ = rounded(slots["summaries"][n, r, s])
            scalars.append(
                PairScalars(
                    keys=[[k for k, ok in zip(row, good) if ok] for row, good in zip(keys[s].tolist(), valid)],
                    values=[[v for v, ok in zip(row, good) if ok] for row, good in zip(vals, valid)],
                    rest=rounded(slots["rest"][n, r, s]),
                    total_in=summ[0],
                    max_in=summ[1],
                    total_out=summ[2],
                    max_out=summ[3],
                )
            )
        out.append(
            HeadRecord(
                seq=seq,
                start=start,
                token_ids=tokens[seq, start : start + width].tolist(),
                earlier=earlier,
                earlier_ids=tokens[seq, earlier].tolist() if earlier else [],
                query=int(slots["query"][n, r]),
                key=int(slots["key"][n, r]),
                score=scalar(torch.tensor(score)),
                pairs=[v for q, row in enumerate(rounded(slots["pairs"][n, r])) for v in row[: q + 1]],
                scalars=scalars,
            )
        )
    return out


def maxima(records: list[HeadRecord]) -> list[list[float]]:
    """Per scalar, [pair max, total_in max, max_in max, total_out max, max_out max] over the
    records' shown values, each floored at 0 (the neuron-viewer's normalisers)."""
    out = []
    for s in range(len(SCALARS)):
        ps = [r.scalars[s] for r in records]
        pair = max((v for p in ps for row in p.values for v in row), default=0.0)
        sums = [max((v for p in ps for v in getattr(p, name)), default=0.0) for name in SUMMARIES]
        out.append([max(pair, 0.0), *(max(x, 0.0) for x in sums)])
    return out
