"""Reports that read hourly rollups for whole hours and raw rows for the rest (a mixin of `LakeQuery`).

`LakeQuery.refresh` lists the lake and registers, besides the `usage` view, these sources:
- `_roll_<cube>`: the current rollup files of every rolled-up hour (see analytics_lake.rollup);
- `_raw_unrolled`: the raw files of the hours without a current rollup (the current hour, late or stale hours);
- the raw files of the partial hours at a range's edges, and the hour files of the packed days at its edges, are
  read by name (`LakeQuery._files_source`).

A report over [since, until) takes whole rolled-up hours from the smallest cube that has every dimension it groups
or filters by, and everything else from raw rows, so counts and sums are exact whatever is rolled up; quantiles
come from the merged sketches (analytics_lake.sketch), within ALPHA of exact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import pyarrow as pa

from analytics_lake.errors import LakeInputError
from analytics_lake.report_args import ReportArgumentError, check_range, since_bound, until_bound
from analytics_lake.rollup import CUBES, STATUS_CLASS_SQL, STATUS_CLASSES
from analytics_lake.sketch import bucket_sql, value_sql

# analytics dimension → result column
ANALYTICS_DIMENSIONS: dict[str, str] = {
    "org": "org_id", "key": "key_id", "model": "model", "environment": "environment", "release": "release",
    "status_class": "status_class", "day": "day", "hour": "hour",
}
FILTER_DIMENSIONS = ("org", "key", "model", "environment", "release", "status_class")
_HOUR_US = 3_600_000_000
# how each dimension reads from a rollup cube and from raw rows (`day` is the hive partition: it prunes files)
_ROLL_EXPR = {"org": "org_id", "key": "key_id", "model": "model", "environment": "environment", "release": "release",
              "status_class": "status_class", "day": "day", "hour": "hour_start"}
_RAW_EXPR = {"org": "org_id", "key": "key_id", "model": "model", "environment": "environment", "release": "release",
             "status_class": STATUS_CLASS_SQL, "day": "dt",
             "hour": f"make_timestamptz((epoch_us(ts) // {_HOUR_US}) * {_HOUR_US})"}
_COST_USD = "CAST(sum(cost_micros) AS DECIMAL(38,0)) * CAST(0.000001 AS DECIMAL(7,6))"
MAX_GROUP_BY = 6


def group_by_names(group_by: str | Sequence[str], allowed: Sequence[str] = tuple(ANALYTICS_DIMENSIONS)) -> list[str]:
    """'org,day' or ['org', 'day'] → validated, distinct names (empty: one total row)."""
    if isinstance(group_by, str):
        names = [p.strip() for p in group_by.split(",")] if group_by.strip() else []
    else:
        names = list(group_by)
    if len(names) > MAX_GROUP_BY or len(set(names)) != len(names) or any(n not in allowed for n in names):
        shown = group_by if isinstance(group_by, str) else ",".join(map(str, group_by))
        raise ReportArgumentError("group_by", f"group_by {shown[:64]!r} is invalid: expected up to {MAX_GROUP_BY} "
                                              f"distinct names of {', '.join(allowed)}")
    return names


def _check_filters(filters: Mapping[str, str] | None) -> dict[str, str]:
    out = dict(filters or {})
    for name, value in out.items():
        if name not in FILTER_DIMENSIONS:
            raise ReportArgumentError(name, f"filter {name!r} is invalid: expected one of {', '.join(FILTER_DIMENSIONS)}")
        if not isinstance(value, str) or not value or len(value) > 256:
            raise ReportArgumentError(name, f"filter {name}={str(value)[:64]!r} is invalid: expected a non-empty name")
        if name == "status_class" and value not in STATUS_CLASSES:
            raise ReportArgumentError(name, f"status_class {value[:64]!r} is invalid: expected one of "
                                            f"{', '.join(STATUS_CLASSES)}")
    return out


def _hour_floor(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _hour_ceil(moment: datetime) -> datetime:
    floor = _hour_floor(moment)
    return floor if floor == moment else floor + timedelta(hours=1)


def _bounded(*bounds: tuple[str, list[object]] | None) -> tuple[list[str], list[object]]:
    """The conditions and parameters of the bounds that are set: each bound is (SQL with ?, its values) or None."""
    conds: list[str] = []
    params: list[object] = []
    for bound in bounds:
        if bound:
            conds.append(bound[0])
            params += bound[1]
    return conds, params


@dataclass(frozen=True, slots=True)
class _Part:
    """One source of a report: SQL text selecting from a relation, with its own parameters."""

    sql: str
    params: list[object]
    raw: bool = False  # reads raw rows (else rollup rows)


class RollupReports:
    """The report methods; `LakeQuery` provides `_run`, `org` and the registered sources."""

    org: str | None

    # set by LakeQuery.refresh: the raw files of each rolled-up hour, and each cube's hour files per packed day
    _rolled_raw: dict[tuple[str, int], list[str]]
    _packed_hours: dict[str, dict[str, list[str]]]

    def _run(self, sql: str, params: Sequence[object] = ()) -> pa.Table:  # pragma: no cover - LakeQuery's
        raise NotImplementedError

    def _files_source(self, files: list[str], hive_base: str) -> str:  # pragma: no cover - LakeQuery's
        raise NotImplementedError

    def _fresh(self) -> None:  # pragma: no cover - LakeQuery's
        raise NotImplementedError

    # -- planning -------------------------------------------------------------------------

    def _cube_for(self, names: Sequence[str]) -> str:
        """The smallest cube with every (non-time) dimension needed; an org-scoped session never uses "model"."""
        needed = {ANALYTICS_DIMENSIONS[n] for n in names if n not in ("day", "hour")}
        if self.org is not None:
            needed.add("org_id")
        for cube, dims in CUBES.items():
            if needed <= set(dims):
                return cube
        raise AssertionError(f"no cube has {sorted(needed)}")  # the key cube has every filterable dimension

    def _parts(self, names: Sequence[str], filters: Mapping[str, str], since: datetime | timedelta | str | None,
               until: datetime | timedelta | str | None, org: str | None, *, roll_select: str, raw_select: str,
               raw_group: bool, roll_where: str = "", raw_where: str = "") -> list[_Part]:
        """The rollup part (whole rolled-up hours) and the raw parts (everything else) of one report.

        `roll_select`/`raw_select` are the measure expressions; dimension columns come first, named as in
        ANALYTICS_DIMENSIONS. With `raw_group`, raw parts are grouped by the dimensions (measures are aggregates).
        """
        bound, end = since_bound(since), until_bound(until)
        check_range(bound, end)
        self._fresh()  # plan from the same listing the query reads
        filters = dict(filters)
        if org is not None:
            filters["org"] = org
        roll_dims = ", ".join(f"{_ROLL_EXPR[n]} AS {ANALYTICS_DIMENSIONS[n]}" for n in names)
        raw_dims = ", ".join(f"{_RAW_EXPR[n]} AS {ANALYTICS_DIMENSIONS[n]}" for n in names)
        roll_filter = [f"{_ROLL_EXPR[n]} = ?" for n in filters]
        raw_filter = [f"{_RAW_EXPR[n]} = ?" for n in filters]
        values = list(filters.values())
        range_where, range_params = _bounded(
            bound and ("dt >= CAST(? AS DATE) AND ts >= ?", [bound.date().isoformat(), bound]),
            end and ("dt <= CAST(? AS DATE) AND ts < ?", [end.date().isoformat(), end]))
        first = _hour_ceil(bound) if bound is not None else None  # whole hours: [first, last)
        last = _hour_floor(end) if end is not None else None
        whole, whole_params = _bounded(first and ("{t} >= ?", [first]), last and ("{t} < ?", [last]))
        group = f" GROUP BY {', '.join(str(i + 1) for i in range(len(names)))}" if raw_group and names else ""

        def select(dims: str, measures: str) -> str:
            return f"{dims}, {measures}" if dims else measures

        parts = []
        cube = self._cube_for([*names, *filters])
        extra = roll_filter + ([roll_where] if roll_where else [])
        if first is None or last is None or first < last:
            parts += self._roll_parts(cube, select(roll_dims, roll_select), first, last, extra, values,
                                      packs="hour" not in names)
        raw_conds = range_where + raw_filter + ([raw_where] if raw_where else [])
        where = " WHERE " + " AND ".join(raw_conds) if raw_conds else ""
        parts.append(_Part(f"SELECT {select(raw_dims, raw_select)} FROM _raw_unrolled{where}{group}",
                           [*range_params, *values], raw=True))
        # The partial hours at the edges of the range, of rolled-up hours: at most the hour of an unaligned `since`
        # and that of an unaligned `until`. Naming them (dt, hour) prunes every other raw file unopened.
        edges = sorted({_hour_floor(m) for m, whole_edge in ((bound, first), (end, last))
                        if m is not None and m != whole_edge})
        files = [f for h in edges for f in self._rolled_raw.get((h.date().isoformat(), h.hour), [])]
        if whole and files:  # read by name: a view over every file would match 744 paths a month to prune them
            edge = "NOT (" + " AND ".join(c.format(t="ts") for c in whole) + ")"
            source = self._files_source(files, "usage")
            parts.append(_Part(f"SELECT {select(raw_dims, raw_select)} FROM {source} WHERE "
                               f"{' AND '.join([*raw_conds, edge])}{group}", [*range_params, *values, *whole_params],
                               raw=True))
        return parts

    def _roll_parts(self, cube: str, select: str, first: datetime | None, last: datetime | None, extra: list[str],
                    values: list[object], *, packs: bool) -> list[_Part]:
        """Whole hours [first, last) from rollups: whole days from day packs, other hours from hour files.

        `_roll_<cube>_day` holds the packs, `_roll_<cube>` the hour files of unpacked days and
        `_roll_<cube>_packed` those of packed days (read only for the partial days at the range's edges;
        its `dt` partition column prunes the other days' files unopened). Without `packs` (grouping by hour:
        a pack merges its day's hours) every hour comes from hour files.
        """
        day_first = (first if first.hour == 0 else first.replace(hour=0) + timedelta(days=1)) if first else None
        day_last = last.replace(hour=0) if last else None
        hours, hour_params = _bounded(first and ("hour_start >= ?", [first]), last and ("hour_start < ?", [last]))
        parts = []

        def part(source: str, conds: list[str], params: list[object]) -> _Part:
            where = " WHERE " + " AND ".join([*conds, *extra]) if conds or extra else ""
            return _Part(f"SELECT {select} FROM {source}{where}", [*params, *values])

        whole_days = packs and (day_first is None or day_last is None or day_first < day_last)
        if whole_days:
            days, day_params = _bounded(day_first and ("day >= CAST(? AS DATE)", [day_first.date().isoformat()]),
                                        day_last and ("day < CAST(? AS DATE)", [day_last.date().isoformat()]))
            parts.append(part(f"_roll_{cube}_day", days, day_params))
        parts.append(part(f"_roll_{cube}", hours, hour_params))
        if first is not None or last is not None or not whole_days:  # packed days' hour files outside whole days
            prune, prune_params = _bounded(first and ("dt >= CAST(? AS DATE)", [first.date().isoformat()]),
                                           last and ("dt <= CAST(? AS DATE)", [last.date().isoformat()]))
            if whole_days:  # only the days outside [day_first, day_last)
                outside, outside_params = _bounded(
                    day_first and ("dt < CAST(? AS DATE)", [day_first.date().isoformat()]),
                    day_last and ("dt >= CAST(? AS DATE)", [day_last.date().isoformat()]))
                prune, prune_params = ["(" + " OR ".join(outside) + ")", *prune], [*outside_params, *prune_params]
            if whole_days:  # at most two edge days: name their hour files (see the raw edges in `_parts`)
                packed = self._packed_hours.get(cube, {})
                days = [d for d in packed if (first is not None and first.date().isoformat() <= d
                                              < day_first.date().isoformat())
                        or (last is not None and day_last.date().isoformat() <= d <= last.date().isoformat())]
                files = [f for d in sorted(days) for f in packed[d]]
                if files:
                    parts.append(part(self._files_source(files, f"rollups/{cube}"), [*prune, *hours],
                                      [*prune_params, *hour_params]))
            else:
                parts.append(part(f"_roll_{cube}_packed", [*prune, *hours], [*prune_params, *hour_params]))
        return parts

    @staticmethod
    def _union(parts: list[_Part]) -> tuple[str, list[object]]:
        return " UNION ALL ".join(f"({p.sql})" for p in parts), [v for p in parts for v in p.params]

    # -- reports ------------------------------------------------------------------------------

    def usage(self, group_by: str | Sequence[str] = ("org",), *, since: datetime | timedelta | str | None = None,
              until: datetime | timedelta | str | None = None, org: str | None = None,
              filters: Mapping[str, str] | None = None, limit: int | None = None, offset: int = 0) -> pa.Table:
        """Requests, errors, tokens and exact cost grouped by any of ANALYTICS_DIMENSIONS, ordered by the groups.

        Columns: the group columns, requests, errors (status >= 400), server_errors (5xx), prompt_tokens,
        completion_tokens, cost_micros (BIGINT, exact) and cost_usd (DECIMAL(38,6), exact).
        """
        names = group_by_names(group_by)
        if limit is not None and not 1 <= limit <= 1_000_000:
            raise ReportArgumentError("limit", f"limit {limit} is invalid: expected 1 to 1000000")
        if offset < 0:
            raise ReportArgumentError("offset", f"offset {offset} is invalid: expected 0 or more")
        measures_roll = ("requests, CASE WHEN status_class <> '2xx' THEN requests ELSE 0 END AS errors, "
                         "CASE WHEN status_class = '5xx' THEN requests ELSE 0 END AS server_errors, "
                         "prompt_tokens, completion_tokens, cost_micros")
        measures_raw = ("count(*) AS requests, count(*) FILTER (WHERE status >= 400) AS errors, "
                        "count(*) FILTER (WHERE status >= 500) AS server_errors, sum(prompt_tokens) AS prompt_tokens, "
                        "sum(completion_tokens) AS completion_tokens, sum(cost_micros) AS cost_micros")
        parts = self._parts(names, _check_filters(filters), since, until, org, roll_select=measures_roll,
                            raw_select=measures_raw, raw_group=True)
        body, params = self._union(parts)
        cols = ", ".join(ANALYTICS_DIMENSIONS[n] for n in names)
        page = (f" LIMIT {int(limit)}" if limit is not None else "") + (f" OFFSET {int(offset)}" if offset else "")
        sql = (f"SELECT {cols + ', ' if cols else ''}CAST(coalesce(sum(requests), 0) AS BIGINT) AS requests, "
               "CAST(coalesce(sum(errors), 0) AS BIGINT) AS errors, "
               "CAST(coalesce(sum(server_errors), 0) AS BIGINT) AS server_errors, "
               "CAST(coalesce(sum(prompt_tokens), 0) AS BIGINT) AS prompt_tokens, "
               "CAST(coalesce(sum(completion_tokens), 0) AS BIGINT) AS completion_tokens, "
               "CAST(coalesce(sum(cost_micros), 0) AS BIGINT) AS cost_micros, "
               f"coalesce({_COST_USD}, CAST(0 AS DECIMAL(38,6))) AS cost_usd FROM ({body})"
               + (f" GROUP BY {cols} ORDER BY {cols}{page}" if cols else page))
        return self._run(sql, params)

    def _sketch_sql(self, names: Sequence[str], filters: Mapping[str, str], since, until, org,  # noqa: ANN001
                    metric: str, ok_only: bool, percentiles: Sequence[float]) -> tuple[str, list[object]]:
        """Merged sketch of `metric` (latency or ttft) per group → one column per percentile (bucket values)."""
        column = f"{metric}_ms"
        roll_where = "status_class = '2xx'" if ok_only else ""
        raw_where = " AND ".join(filter(None, ["status < 400" if ok_only else "", f"{column} IS NOT NULL"]))
        parts = self._parts(names, filters, since, until, org,
                            roll_select=f"unnest({metric}_sketch) AS e",
                            raw_select=f"{{'b': {bucket_sql(column)}, 'n': CAST(count(*) AS BIGINT)}} AS e",
                            raw_group=False, roll_where=roll_where, raw_where=raw_where)
        group = ", ".join([*map(str, range(1, len(names) + 1)), bucket_sql(column)])
        parts = [_Part(f"{p.sql} GROUP BY {group}", p.params, raw=True) if p.raw else p for p in parts]
        body, params = self._union(parts)
        cols = [ANALYTICS_DIMENSIONS[n] for n in names]
        dims = "".join(f"{c}, " for c in cols)
        partition = f"PARTITION BY {', '.join(cols)} " if cols else ""
        picks = ", ".join(
            f"{value_sql(f'min(b) FILTER (WHERE cum > floor({float(p)!r} * (tot - 1)))')} AS "
            f"{metric}_p{format(p * 100, 'g').replace('.', '_')}_ms" for p in percentiles)
        sql = (f"WITH m AS (SELECT {dims}e.b AS b, sum(e.n) AS n FROM ({body}) WHERE e.b IS NOT NULL GROUP BY ALL), "
               f"c AS (SELECT *, sum(n) OVER ({partition}ORDER BY b ROWS UNBOUNDED PRECEDING) AS cum, "
               f"sum(n) OVER ({partition.strip()}) AS tot FROM m) "
               f"SELECT {dims}{picks} FROM c" + (f" GROUP BY {', '.join(cols)}" if cols else ""))
        return sql, params

    def _counts_sql(self, names: Sequence[str], filters: Mapping[str, str], since, until, org  # noqa: ANN001
                    ) -> tuple[str, list[object]]:
        """Requests per status class per group, as columns."""
        parts = self._parts(names, filters, since, until, org, roll_select="status_class AS sc, requests AS n",
                            raw_select=f"{STATUS_CLASS_SQL} AS sc, count(*) AS n", raw_group=False)
        parts = [_Part(f"{p.sql} GROUP BY ALL", p.params, raw=True) if p.raw else p for p in parts]
        body, params = self._union(parts)
        cols = [ANALYTICS_DIMENSIONS[n] for n in names]
        per_class = ", ".join(f"CAST(coalesce(sum(n) FILTER (WHERE sc = '{c}'), 0) AS BIGINT) AS n{c}"
                              for c in STATUS_CLASSES)
        sql = (f"SELECT {''.join(f'{c}, ' for c in cols)}CAST(sum(n) AS BIGINT) AS requests, {per_class} "
               f"FROM ({body})" + (f" GROUP BY {', '.join(cols)}" if cols else "") + " HAVING sum(n) > 0")
        return sql, params

    def reliability(self, group_by: str | Sequence[str] = ("model", "environment", "release"), *,
                    since: datetime | timedelta | str | None = None, until: datetime | timedelta | str | None = None,
                    org: str | None = None, filters: Mapping[str, str] | None = None) -> pa.Table:
        """Availability, error rates by class and latency/TTFT p50/p95/p99 (of ok requests) per group.

        availability = 1 − 5xx / eligible, where eligible leaves out 4xx, 429 and 499 (the client's doing);
        NULL when nothing is eligible. Quantiles come from sketches: within 0.5 % of exact.
        """
        names = group_by_names(group_by)
        filters = _check_filters(filters)
        counts, count_params = self._counts_sql(names, filters, since, until, org)
        lat, lat_params = self._sketch_sql(names, filters, since, until, org, "latency", True, (0.5, 0.95, 0.99))
        ttft, ttft_params = self._sketch_sql(names, filters, since, until, org, "ttft", True, (0.5, 0.95, 0.99))
        cols = [ANALYTICS_DIMENSIONS[n] for n in names]
        on = " AND ".join(f"c.{col} IS NOT DISTINCT FROM l.{col}" for col in cols) or "TRUE"
        on_t = " AND ".join(f"c.{col} IS NOT DISTINCT FROM t.{col}" for col in cols) or "TRUE"
        sql = (
            f"WITH c AS ({counts}), l AS ({lat}), t AS ({ttft}) SELECT {''.join(f'c.{col}, ' for col in cols)}"
            "c.requests, c.n2xx AS ok, c.n4xx AS client_errors, c.n429 AS rate_limited, c.n499 AS cancelled, "
            "c.n5xx AS server_errors, c.requests - c.n4xx - c.n429 - c.n499 AS eligible, "
            "CASE WHEN c.requests - c.n4xx - c.n429 - c.n499 > 0 "
            "THEN 1 - c.n5xx / (c.requests - c.n4xx - c.n429 - c.n499) END AS availability, "
            "c.n4xx / c.requests AS error_rate_4xx, c.n429 / c.requests AS error_rate_429, "
            "c.n499 / c.requests AS error_rate_499, c.n5xx / c.requests AS error_rate_5xx, "
            "l.latency_p50_ms, l.latency_p95_ms, l.latency_p99_ms, t.ttft_p50_ms, t.ttft_p95_ms, t.ttft_p99_ms "
            f"FROM c LEFT JOIN l ON {on} LEFT JOIN t ON {on_t}"
            + (f" ORDER BY {', '.join(f'c.{col}' for col in cols)}" if cols else "")
        )
        return self._run(sql, [*count_params, *lat_params, *ttft_params])

    def sli_counts(self, latency_threshold_ms: float, group_by: str | Sequence[str] = ("model", "environment"), *,
                   since: datetime | timedelta | str | None = None, until: datetime | timedelta | str | None = None,
                   org: str | None = None, filters: Mapping[str, str] | None = None) -> pa.Table:
        """What SLOs need per group: requests, eligible, server_errors, ok, and slow (ok requests over the threshold,
        to the sketch's bucket accuracy)."""
        if not isinstance(latency_threshold_ms, int | float) or not 0 < latency_threshold_ms < 1e9:
            raise ReportArgumentError("latency_threshold_ms", f"latency threshold {latency_threshold_ms!r} is invalid: "
                                                              "expected milliseconds above 0")
        names = group_by_names(group_by)
        filters = _check_filters(filters)
        counts, count_params = self._counts_sql(names, filters, since, until, org)
        parts = self._parts(names, filters, since, until, org, roll_select="unnest(latency_sketch) AS e",
                            raw_select=f"{{'b': {bucket_sql('latency_ms')}, 'n': CAST(1 AS BIGINT)}} AS e",
                            raw_group=False, roll_where="status_class = '2xx'", raw_where="status < 400")
        body, slow_params = self._union(parts)
        cols = [ANALYTICS_DIMENSIONS[n] for n in names]
        dims = "".join(f"{c}, " for c in cols)
        slow = (f"SELECT {dims}CAST(coalesce(sum(e.n) FILTER (WHERE {value_sql('e.b')} > ?), 0) AS BIGINT) AS slow "
                f"FROM ({body})" + (f" GROUP BY {', '.join(cols)}" if cols else ""))
        on = " AND ".join(f"c.{col} IS NOT DISTINCT FROM s.{col}" for col in cols) or "TRUE"
        sql = (f"WITH c AS ({counts}), s AS ({slow}) SELECT {''.join(f'c.{col}, ' for col in cols)}c.requests, "
               "c.requests - c.n4xx - c.n429 - c.n499 AS eligible, c.n5xx AS server_errors, c.n2xx AS ok, "
               f"CAST(coalesce(s.slow, 0) AS BIGINT) AS slow FROM c LEFT JOIN s ON {on}"
               + (f" ORDER BY {', '.join(f'c.{col}' for col in cols)}" if cols else ""))
        return self._run(sql, [*count_params, float(latency_threshold_ms), *slow_params])

    def sketch_percentiles(self, group_by: Sequence[str], percentiles: Sequence[float], *, metrics: Sequence[str],
                           since: datetime | timedelta | str | None = None,
                           until: datetime | timedelta | str | None = None, org: str | None = None) -> pa.Table:
        """Requests and percentiles of each metric (latency, ttft) over ALL requests per group, from sketches:
        what `LakeQuery.latency` answers when it may read rollups."""
        names = group_by_names(group_by)
        if not percentiles or any(not 0 < p < 1 for p in percentiles):
            raise LakeInputError(f"percentiles {tuple(percentiles)} are invalid: expected values between 0 and 1")
        counts, params = self._counts_sql(names, {}, since, until, org)
        cols = [ANALYTICS_DIMENSIONS[n] for n in names]
        sql = f"WITH c AS ({counts})"
        joins, picks = "", []
        for i, metric in enumerate(metrics):
            s, p = self._sketch_sql(names, {}, since, until, org, metric, False, percentiles)
            sql += f", s{i} AS ({s})"
            params += p
            on = " AND ".join(f"c.{col} IS NOT DISTINCT FROM s{i}.{col}" for col in cols) or "TRUE"
            joins += f" LEFT JOIN s{i} ON {on}"
            picks += [f"s{i}.{metric}_p{format(q * 100, 'g').replace('.', '_')}_ms" for q in percentiles]
        sql += (f" SELECT {''.join(f'c.{col}, ' for col in cols)}c.requests, {', '.join(picks)} FROM c{joins}"
                + (f" ORDER BY {', '.join(f'c.{col}' for col in cols)}" if cols else ""))
        return self._run(sql, params)
