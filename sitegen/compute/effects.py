"""What a feature does to the next-token prediction.

- Logit effects: u = (r' * w) @ W_U, with r the feature's residual direction, r' = r
  mean-centred where the final norm is a LayerNorm (it removes the mean anyway),
  w the final norm's weight; the norm's scale is left out (as sae_vis).
- Hovers, ``direct``: removing the feature at position p changes the final residual
  by -a*r; with the final norm's scale frozen at its clean value s_p the logits move
  by -(a / s_p) * u exactly (before any logit soft-cap, which is then applied).
- Hovers, ``exact``: the model is re-run from the hook's layer with a*decoder[f]
  subtracted at the hook at position p only (the SAE error term is kept), and the final
  norm and unembedding at p are recomputed: the feature removed at that token alone, as
  for ``direct`` hovers (its activations at other positions stay).
Each hover reports log-prob changes (removed - clean) and the next-token loss change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer
from transformer_lens.utilities.activation_functions import apply_softcap, softcap_enabled

from sitegen.compute.activations import start_layer

CHUNK_ELEMENTS = 1 << 23  # [rows, d_vocab] elements per hover chunk (32 MiB of float32) ...
# ... but at least MIN_CHUNK_ROWS rows: the unembedding streams W_U once per chunk, so at Gemma's
# vocabulary 256 rows (256 MiB) run it ~1.6x faster than 32 would
MIN_CHUNK_ROWS = 256
LENGTH_STEP = 16  # exact hovers: re-runs are cut to a multiple of this many positions
# rows whose largest |coef * u| exceeds this take the plain log-sum-exp in ``lse_change``
# (expm1 would grow towards float32 overflow); their changes are large, so ~1e-6 is noise there
LARGE_CHANGE = 30.0


@dataclass
class NormConvention:
    centre: bool  # LayerNorm: mean-centre directions
    weight: torch.Tensor | None  # [d_model] final norm weight, None for none
    rms: bool  # the scale is an RMS (no centring)
    present: bool  # the model has a final norm at all

    def note(self, effects: str, has_directions: bool, post: str | None = None) -> str:
        """How logit effects and hovers treat the final norm (and a post-norm ``post`` between
        the hook's sub-layer and the residual stream), for the pages."""
        if not has_directions:
            logits = "no logit effects: the hook is not linearly tied to the residual stream"
        elif not self.present:
            logits = "logit effects: decoder direction \u00b7 W_U (no final norm)"
        else:
            centred = "mean-centred " if self.centre else ""
            weight = " \u00b7 diag(ln_final.w)" if self.weight is not None else ""
            logits = f"logit effects: {centred}decoder direction{weight} \u00b7 W_U, final-norm scale ignored"
        if post and has_directions:
            logits = logits.replace("decoder direction", f"decoder direction \u00b7 diag({post}.w)", 1)
            logits = logits.replace("final-norm scale", f"{post} and final-norm scales", 1)
        frozen = " and ".join(([f"{post}"] if post else []) + (["final-norm"] if self.present else []))
        hovers = {
            "exact": "hovers: the model re-run with the feature removed at this position only (SAE error "
            "kept, final norm recomputed)",
            "direct": f"hovers: direct path, {frozen} scale{'s' if post and self.present else ''} frozen at "
            "clean values (as sae_vis)"
            if frozen
            else "hovers: direct path",
            "none": "no hovers",
        }[effects]
        return f"{logits}; {hovers}"


def norm_convention(model: HookedTransformer) -> NormConvention:
    kind = model.cfg.normalization_type
    if kind is None:
        return NormConvention(False, None, False, False)
    weight = getattr(model.ln_final, "w", None)
    weight = None if weight is None else weight.detach().float()
    return NormConvention(kind in ("LN", "LNPre"), weight, kind in ("RMS", "RMSPre"), True)


@torch.no_grad()
def logit_directions(model: HookedTransformer, norm: NormConvention, dirs: torch.Tensor) -> torch.Tensor:
    """[B, d_vocab] float32: each residual direction ([B, d_model]) through the unembedding."""
    r = dirs.float().to(model.cfg.device)
    if norm.centre:
        r = r - r.mean(1, keepdim=True)
    if norm.weight is not None:
        r = r * norm.weight
    return (r @ model.W_U.float()).cpu()


def hover_basis(model: HookedTransformer, u: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(ids, values) [B, 2k]: each row of ``u`` at its k lowest (ascending) then k highest
    (descending) tokens, the tokens direct hovers list; None under a logit soft-cap, where
    the log-prob changes are no longer -coef * u - shift."""
    if softcap_enabled(model.cfg.output_logits_soft_cap):
        return None
    k = min(k, u.shape[1])
    low, high = torch.topk(u, k, dim=1, largest=False), torch.topk(u, k, dim=1)
    return torch.cat([low.indices, high.indices], 1), torch.cat([low.values, high.values], 1)


@dataclass
class HoverTable:
    loss: torch.Tensor  # [h] float32: next-token loss change when the feature is removed
    top_ids: torch.Tensor  # [h, k] largest log-prob increases
    top_vals: torch.Tensor  # [h, k]
    bottom_ids: torch.Tensor  # [h, k] largest decreases, most negative first
    bottom_vals: torch.Tensor  # [h, k]
    ok: torch.Tensor  # [h] bool: all finite
    # direct effects without a soft-cap: every log-prob change is -coef * u[t] - shift, with u the
    # feature's logit directions (coef = a / frozen scale, shift = change of the log-sum-exp); else NaN
    coef: torch.Tensor  # [h]
    shift: torch.Tensor  # [h]

    def take(self, index: torch.Tensor) -> HoverTable:
        """The rows ``index`` of every field."""
        return HoverTable(*(getattr(self, f)[index] for f in HoverTable.__dataclass_fields__))


def hover_rows(clean_lp: torch.Tensor, new: torch.Tensor, next_tok: torch.Tensor, k: int) -> HoverTable:
    """Compare clean log-probs with the logits after removal ([h, V] each, soft-cap applied)."""
    delta = (torch.log_softmax(new, 1) - clean_lp).float()  # [h, V]
    k = min(k, delta.shape[1])
    top = torch.topk(delta, k, dim=1)
    bottom = torch.topk(delta, k, dim=1, largest=False)
    loss = -delta.gather(1, next_tok[:, None]).squeeze(1)
    ok = torch.isfinite(loss) & torch.isfinite(top.values).all(1) & torch.isfinite(bottom.values).all(1)
    nan = torch.full(loss.shape, float("nan"))
    return HoverTable(
        loss.cpu(), top.indices.cpu(), top.values.cpu(), bottom.indices.cpu(), bottom.values.cpu(), ok.cpu(), nan, nan
    )


def cat_tables(parts: list[HoverTable], k: int) -> HoverTable:
    if not parts:
        z, i = torch.zeros(0, k), torch.zeros(0, k, dtype=torch.int64)
        return HoverTable(torch.zeros(0), i, z, i, z, torch.zeros(0, dtype=torch.bool), torch.zeros(0), torch.zeros(0))
    return HoverTable(*(torch.cat([getattr(p, f) for p in parts]) for f in HoverTable.__dataclass_fields__))


ROW_BLOCK = 64  # unembeddings run on a multiple of this many rows (zero rows pad a short chunk)


def unembed(model: HookedTransformer, x: torch.Tensor) -> torch.Tensor:
    """[n, V] = x @ W_U + b_U, as model.unembed computes it but without its per-call copy of
    W_U (a d_model x d_vocab transpose, 0.67 GB for Gemma's vocabulary). A chunk of fewer than
    ROW_BLOCK rows is padded: the matrix product takes another kernel for a few rows, whose last
    bits differ, and a row's logits must not depend on which other rows share its chunk."""
    n = len(x)
    if n % ROW_BLOCK:
        x = torch.cat([x, x.new_zeros(ROW_BLOCK - n % ROW_BLOCK, x.shape[1])])
    return torch.addmm(model.b_U, x, model.W_U)[:n]


def row_sums(x: torch.Tensor) -> torch.Tensor:
    """[h] sums of the rows of ``x`` [h, V], each independent of the other rows: torch splits a
    reduction to a single output across threads (another summation order), so one row is summed
    as two equal ones."""
    return torch.cat([x, x]).sum(1)[:1] if len(x) == 1 else x.sum(1)


def final_logits(model: HookedTransformer, resid: torch.Tensor) -> torch.Tensor:
    """[n, V]: the model's own final norm, unembedding and soft-cap on final residuals [n, d_model]."""
    x = model.ln_final(resid) if model.cfg.normalization_type is not None else resid
    return apply_softcap(unembed(model, x), model.cfg.output_logits_soft_cap)


def frozen_scale(norm: NormConvention, resid: torch.Tensor, eps: float) -> torch.Tensor:
    """[n] the final norm's scale at each clean residual (1 without a norm)."""
    if not norm.present:
        return torch.ones(len(resid), device=resid.device)
    x = resid.float()
    if not norm.rms:
        x = x - x.mean(1, keepdim=True)
    return (x.pow(2).mean(1) + eps).sqrt()


def rows_per_chunk(d_vocab: int) -> int:
    return max(MIN_CHUNK_ROWS, CHUNK_ELEMENTS // d_vocab)


def lse_change(
    clean_lp: torch.Tensor,
    probs: torch.Tensor,
    at: torch.Tensor,
    u: torch.Tensor,
    r: torch.Tensor,
    coef: torch.Tensor,
    u_max: torch.Tensor,
) -> torch.Tensor:
    """[h] log sum_v exp(lp_v - c u_v): the change of the log-sum-exp when the logits move by
    -c*u, for rows ``at`` (ascending) of clean log-probs [p, V] and their ``probs`` = exp(log-probs),
    rows ``r`` of ``u`` [R, V], ``coef`` [h, 1] and ``u_max`` [R] = max |u| per row of u. Computed as
    log1p(sum_v p_v expm1(-c u_v)), which keeps its relative precision when the change is tiny: a
    difference of two float32 log-sum-exps of magnitude ~log V is off by ~1e-6, as large as a weak
    feature's whole effect. Rows where that form cancels (most of the probability removed,
    1 + sum < 1/2) or where expm1 could overflow (|c u| > LARGE_CHANGE) take the plain log-sum-exp;
    their changes are large."""
    big = coef.squeeze(1).abs() * u_max[r] > LARGE_CHANGE
    x = u.index_select(0, r).mul_(-coef).expm1_()  # [h, V] fresh copies, worked on in place
    positions, counts = torch.unique_consecutive(at, return_counts=True)
    first = 0
    for p, n in zip(positions.tolist(), counts.tolist()):  # x *= p_v, one position's hovers at a time
        x[first : first + n].mul_(probs[p])
        first += n
    total = row_sums(x)  # [h] sum_v p_v expm1(-c u_v)
    out = total.log1p()
    plain = big | (total < -0.5) | ~torch.isfinite(total)
    if bool(plain.any()):
        rows = plain.nonzero().squeeze(1)
        pick = rows if len(rows) > 1 else rows.repeat(2)  # two rows: see row_sums
        lse = torch.logsumexp(clean_lp.index_select(0, at[pick]) - coef[pick] * u.index_select(0, r[pick]), 1)
        out[rows] = lse[: len(rows)]
    return out


@torch.no_grad()
def direct_hovers(
    model: HookedTransformer,
    *,
    norm: NormConvention,
    final: torch.Tensor,
    u: torch.Tensor,
    u_max: torch.Tensor,
    basis: torch.Tensor | None,
    rows: torch.Tensor,
    flat: torch.Tensor,
    acts: torch.Tensor,
    next_tok: torch.Tensor,
    k: int,
    release: Callable[[], None],
    tick: Callable[[int], None] = lambda n: None,
) -> HoverTable:
    """Hovers for pairs (row of ``u``, flat position, activation), sorted by position.
    ``final``: [n_tok, d_model] clean final residuals; ``u``: [R, V] logit directions (memory or
    a memmap) with ``u_max`` [R] = max |u| per row; ``basis``: [R, 2k] ids of each row's k lowest
    then k highest u (``hover_basis``; None under a soft-cap). Clean logits are computed once per
    position, for chunks of positions, whichever rows hover there; ``release`` hands back the pages
    of memmapped ``final`` and ``u`` after each chunk; ``tick(n)`` reports n more hovers done.
    Every number of a hover depends only on its own position, row and activation, not on which
    other hovers share its chunk (``unembed``, ``row_sums``).

    Without a soft-cap, removal shifts every log-prob by -c*u_v - dLSE (c = a / s_p), so the
    top and bottom tokens are u's extremes and only dLSE needs the whole vocabulary. Under a
    soft-cap the logits are compared in float64, so that small changes keep their digits."""
    device, cap = model.cfg.device, model.cfg.output_logits_soft_cap
    capped = softcap_enabled(cap)
    step = rows_per_chunk(u.shape[1]) // (2 if capped else 1)  # rows at a time (float64 ones are twice as large)
    k = min(k, u.shape[1])
    if not capped:
        assert basis is not None, "direct hovers without a soft-cap list the basis tokens"
    u_max = u_max.to(device)
    where, inv = torch.unique_consecutive(flat, return_inverse=True)
    parts = []
    for p in range(0, len(where), step):
        resid = final[where[p : p + step]].to(device)  # [p, d_model]
        pre = unembed(model, model.ln_final(resid) if norm.present else resid).float()  # [p, V] before any cap
        scale = frozen_scale(norm, resid, model.cfg.eps)
        if capped:
            pre = pre.double()
            clean_lp = torch.log_softmax(apply_softcap(pre, cap), 1)  # [p, V]
        else:
            clean_lp = torch.log_softmax(pre, 1)
            del pre  # [p, V] freed: only the log-probs are needed
            probs = clean_lp.exp()  # [p, V] once per position, for all its hovers
        lo, hi = torch.searchsorted(inv, torch.tensor([p, p + step])).tolist()
        for s in range(lo, hi, step):
            q = slice(s, min(hi, s + step))
            at, r, nxt = inv[q] - p, rows[q], next_tok[q].to(device)
            coef = (acts[q].to(device) / scale[at])[:, None]  # [h, 1]
            gather = capped or str(device) != "cpu"  # this chunk's rows of u, on the device
            ur = u.index_select(0, r).to(device) if gather else u
            rr = torch.arange(len(r), device=device) if gather else r
            if capped:
                new = torch.addcmul(pre[at], coef.double(), ur[rr].double(), value=-1.0)  # [h, V] logits without it
                parts.append(hover_rows(clean_lp[at], apply_softcap(new, cap), nxt, k))
                tick(len(r))
                continue
            assert basis is not None
            b = basis[r].to(device)
            u_low, u_high = b[:, :k], b[:, k:]  # [h, k] ids each
            shift = lse_change(clean_lp, probs, at, ur, rr, coef, u_max[r.to(device)] if gather else u_max)[:, None]
            up = torch.where(coef > 0, u_low, u_high)  # largest log-prob increases first
            down = torch.where(coef > 0, u_high, u_low)
            top = -coef * ur[rr[:, None], up] - shift  # [h, k] (indexing u[r] first would copy [h, V])
            bottom = -coef * ur[rr[:, None], down] - shift
            loss = (coef * ur[rr, nxt][:, None] + shift).squeeze(1)
            ok = torch.isfinite(loss) & torch.isfinite(top).all(1) & torch.isfinite(bottom).all(1)
            parts.append(
                HoverTable(
                    loss.cpu(),
                    up.cpu(),
                    top.cpu(),
                    down.cpu(),
                    bottom.cpu(),
                    ok.cpu(),
                    coef.squeeze(1).cpu(),
                    shift.squeeze(1).cpu(),
                )
            )
            tick(len(r))
        release()
    return cat_tables(parts, k)


@torch.no_grad()
def exact_hovers(
    model: HookedTransformer,
    *,
    hook_name: str,
    start: torch.Tensor | None,
    tokens: torch.Tensor,
    final: torch.Tensor,
    decoder: torch.Tensor,
    rows: torch.Tensor,
    flat: torch.Tensor,
    acts: torch.Tensor,
    next_tok: torch.Tensor,
    k: int,
    batch_size: int,
    release: Callable[[], None],
    tick: Callable[[int], None] = lambda n: None,
) -> HoverTable:
    """Hover h: the model re-run with acts[h] * decoder[rows[h]] subtracted at the hook at flat
    position flat[h] only (``decoder``: [B, d_in]; ``rows``, ``flat``, ``acts``, ``next_tok``: [h]).

    Each hover is one copy of its sequence, run from the hook's layer (``start``: [n_seq, ctx,
    d_model] residual entering it, or None: from ``tokens``) and cut after its own position: a
    causal model's prediction there does not see later ones. Copies are cut to their position
    rounded up to a multiple of LENGTH_STEP, and go into forward passes of copies of one length,
    about ``batch_size`` whole sequences' positions each (a short pass filled up with repeats): a
    hover's numbers then depend on its own copy only, not on which others share its pass.
    ``release`` hands back the pages of memmapped ``start`` and ``final`` after each pass;
    ``tick(n)`` reports n more hovers done."""
    device, n_ctx = model.cfg.device, tokens.shape[1]
    layer = start_layer(hook_name) if start is not None else None
    seq, pos = flat // n_ctx, flat % n_ctx
    bucket = ((pos + LENGTH_STEP) // LENGTH_STEP * LENGTH_STEP).clamp(max=n_ctx)  # [h] length of its pass
    order = torch.argsort(bucket, descending=True, stable=True)
    step = rows_per_chunk(model.cfg.d_vocab) // 2  # log-probs compared in float64: rows twice as large
    parts, b = [], 0
    while b < len(order):
        length = int(bucket[order[b]])
        n = max(1, batch_size * n_ctx // length)  # copies per pass of this length
        run = order[b : b + n]
        run = run[bucket[run] == length]  # [m] hovers of one pass
        b += len(run)
        full = torch.cat([run, run[-1:].expand(n - len(run))])  # [n]: a short pass repeats its last copy
        source = tokens if start is None or layer is None else start
        x = source[seq[full], :length].to(device)  # [n, length(, d_model)]
        at = pos[full].to(device)
        delta = (acts[full, None] * decoder[rows[full]]).to(device)  # [n, d_in]
        new_final = removed_final(model, hook_name=hook_name, x=x, layer=layer, at=at, delta=delta)[: len(run)]
        for c in range(0, len(run), step):
            q = run[c : c + step]
            new = final_logits(model, new_final[c : c + step])
            clean = final_logits(model, final[flat[q]].to(device))
            parts.append(hover_rows(torch.log_softmax(clean.double(), 1), new.double(), next_tok[q].to(device), k))
        release()  # of the memmapped ``start`` and ``final``
        tick(len(run))
    return cat_tables(parts, k).take(torch.argsort(order))


def removed_final(
    model: HookedTransformer,
    *,
    hook_name: str,
    x: torch.Tensor,
    layer: int | None,
    at: torch.Tensor,
    delta: torch.Tensor,
) -> torch.Tensor:
    """[n, d_model] final residual of copy i at position at[i], with delta[i] ([n, d_in])
    subtracted at the hook at that position only; ``x``: [n, length] tokens (``layer`` None)
    or [n, length, d_model] residual entering block ``layer``."""
    copy = torch.arange(len(at), device=at.device)

    def remove(act: torch.Tensor, hook) -> torch.Tensor:
        act = act.clone(memory_format=torch.contiguous_format)
        act.view(len(at), act.shape[1], -1)[copy, at] -= delta.to(act.dtype)
        return act

    with model.hooks(fwd_hooks=[(hook_name, remove)]):
        out = model(x, start_at_layer=layer, stop_at_layer=model.cfg.n_layers)  # [n, length, d_model]
    return out[copy, at]
