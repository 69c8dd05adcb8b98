"""The format readers of ``site.explanations`` (render/explanations.py describes the formats):
neuron-explainer JSONL, Neuronpedia exports, delphi run folders and plain YAML/CSV, each read
into ``Explanation`` objects, bad input as one ``SitegenError`` line."""

from __future__ import annotations

import csv
import difflib
import io
import math
from pathlib import Path
from typing import Any

import yaml

from sitegen.errors import SitegenError
from sitegen.render.explanation_types import (
    _LINE,
    DELPHI_NAME,
    FILE_SUFFIXES,
    MODULE_LAYER,
    NEURON_EXPLAINER_SCORE,
    PLAIN_FIELDS,
    PLAIN_REQUIRED,
    Score,
    SiteDictionary,
    _Checks,
    _json_value,
    _line,
    _LineLoader,
)
from sitegen.report import log
from sitegen.text import short_repr


class _Reader(_Checks):
    """Reads one entry of ``site.explanations`` into ``found``."""

    # -- files -----------------------------------------------------------------------------------

    def read(self) -> None:
        path, fmt, where = self.source.path, self.source.format, self.source.where
        if self.source.dictionary is not None and self.source.dictionary not in self.by_name:
            raise SitegenError(
                f"{where}.dictionary: no site dictionary {self.source.dictionary!r} (have: {', '.join(self.by_name)})"
            )
        if path.is_dir():
            if fmt == "delphi" or (fmt is None and (path / "explanations").is_dir()):
                self.file, self.shown = path, self.source.shown
                self.delphi(path)
                self.report_skipped()
                return
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(FILE_SUFFIXES))
            if not files:
                raise SitegenError(
                    f"{where}.path: {path} holds no explanation files ({', '.join(FILE_SUFFIXES)}) "
                    "and no delphi run (explanations/)"
                )
        elif fmt == "delphi":
            raise SitegenError(f"{where}.path: a delphi run is a folder (explanations/, scores/), not {path}")
        else:
            files = [path]
        for file in files:
            self.file = file
            inside = file.relative_to(path).as_posix() if file != path else ""
            self.shown = f"{self.source.shown}/{inside}" if inside else self.source.shown
            self.read_file(file, fmt)
            self.report_skipped()

    def read_file(self, file: Path, fmt: str | None) -> None:
        name = file.name.lower()
        if name.endswith((".yaml", ".yml", ".csv")):
            if fmt not in (None, "plain"):
                raise SitegenError(f"{file}: a {file.suffix} file is plain explanations, not format '{fmt}'")
            text = self.raw_text(file)
            self.plain_csv(text) if name.endswith(".csv") else self.plain_yaml(text)
            return
        text = self.raw_text(file)
        items = self.json_items(text)
        if not items:
            return
        fmt = fmt or self.detect(items)
        if fmt == "neuron-explainer":
            for at, obj in items:
                self.neuron_explainer(obj, at)
        elif fmt == "neuronpedia":
            for at, obj in items:
                self.neuronpedia(obj, at)
        else:
            raise SitegenError(f"{file}: format '{fmt}' is read from YAML or CSV files (or a delphi run folder)")

    def json_items(self, text: str) -> list[tuple[str, Any]]:
        """(where, object) for a JSON array's items, or a JSON-lines file's lines."""
        stripped = text.lstrip()
        if stripped.startswith("["):
            try:
                value = _json_value(text)
            except ValueError as err:
                raise self.fail("", f"JSON syntax error ({err})") from None
            return [(f"item {i}: ", v) for i, v in enumerate(value)]
        items = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                items.append((f"line {n}: ", _json_value(line)))
            except ValueError as err:
                raise self.fail(f"line {n}: ", f"JSON syntax error ({err})") from None
        return items

    def detect(self, items: list[tuple[str, Any]]) -> str:
        obj = items[0][1]
        if isinstance(obj, dict):
            if obj.get("dataclass_name") == "NeuronSimulationResults" or {"neuron_id", "scored_explanations"} <= set(
                obj
            ):
                return "neuron-explainer"
            if {"layer", "index", "description"} <= set(obj):
                return "neuronpedia"
        kinds = "neuron-explainer (neuron_id, scored_explanations) or neuronpedia (layer, index, description)"
        raise SitegenError(
            f"{self.file}: cannot tell the explanation format from its first object (expected {kinds}); "
            f"name it with 'format:' in {self.source.where}"
        )

    # -- neuron-explainer -------------------------------------------------------------------------

    def tagged(self, obj: Any, at: str, name: str, dataclass: str) -> dict:
        """A neuron-explainer object; its ``dataclass_name`` tag, where it has one, must match."""
        if not isinstance(obj, dict):
            raise self.fail(at, f"{name or 'the line'}: expected a {dataclass} object, got {short_repr(obj)}")
        tag = obj.get("dataclass_name", dataclass)
        if tag != dataclass:
            key = f"{name}.dataclass_name" if name else "dataclass_name"
            raise self.fail(at, f"{key}: expected {dataclass!r}, got {short_repr(tag)}")
        return obj

    def neuron_explainer(self, obj: Any, at: str) -> None:
        obj = self.tagged(obj, at, "", "NeuronSimulationResults")
        if "neuron_id" not in obj:
            raise self.fail(at, "neuron_id: missing")
        nid = self.tagged(obj["neuron_id"], at, "neuron_id", "NeuronId")
        for key in ("layer_index", "neuron_index"):
            if key not in nid:
                raise self.fail(at, f"neuron_id.{key}: missing")
        layer = self.index(nid["layer_index"], at, "neuron_id.layer_index")
        neuron = self.index(nid["neuron_index"], at, "neuron_id.neuron_index")
        d = self.by_layer(layer, at, "neuron_id.layer_index", f"neuron {neuron}")
        site_id = d.id_of(layer, neuron)
        if site_id is None:
            per_layer = d.d_sae // len(d.layers)
            raise self.fail(
                at,
                f"neuron_id: layer {layer} neuron {neuron} is not in '{d.name}' (layers "
                f"{', '.join(map(str, d.layers))}, {per_layer:,} per layer)",
            )
        feature = self.feature(d, site_id, at, "neuron_id.neuron_index")
        listed = obj.get("scored_explanations")
        if not isinstance(listed, list):
            raise self.fail(at, f"scored_explanations: expected a list, got {short_repr(listed)}")
        for i, se in enumerate(listed):
            key = f"scored_explanations[{i}]"
            se = self.tagged(se, at, key, "ScoredExplanation")
            if "explanation" not in se:
                raise self.fail(at, f"{key}.explanation: missing")
            text = self.text(se["explanation"], at, f"{key}.explanation")
            sim = se.get("scored_simulation")
            value = None
            if sim is not None:
                sim = self.tagged(sim, at, f"{key}.scored_simulation", "ScoredSimulation")
                value = self.number(
                    sim.get("ev_correlation_score"), at, f"{key}.scored_simulation.ev_correlation_score"
                )
            scores = [] if value is None else [Score(value, "ev_correlation_score", None, NEURON_EXPLAINER_SCORE)]
            self.add(d, feature, text, scores, None, "neuron-explainer", _line(at))

    # -- Neuronpedia ---------------------------------------------------------------------------

    def neuronpedia(self, obj: Any, at: str) -> None:
        if not isinstance(obj, dict):
            raise self.fail(at, f"expected an explanation object, got {short_repr(obj)}")
        for key in ("layer", "index", "description"):
            if key not in obj:
                raise self.fail(at, f"{key}: missing")
        layer = obj["layer"]
        if not isinstance(layer, str) or not layer:
            raise self.fail(at, f"layer: expected Neuronpedia's source id (e.g. '6-res-jb'), got {short_repr(layer)}")
        d = self.foreign(layer, at, "layer", "source")
        feature = self.feature(d, self.index(obj["index"], at, "index"), at, "index")
        text = self.text(obj["description"], at, "description")
        model = self.optional_text(obj.get("explanationModelName"), at, "explanationModelName")
        kind = self.optional_text(obj.get("typeName"), at, "typeName")
        explainer = " ".join(p for p in (model, f"({kind})" if kind else None) if p) or None
        scores = []
        listed = obj.get("scores")
        if listed is not None and not isinstance(listed, list):
            raise self.fail(at, f"scores: expected a list, got {short_repr(listed)}")
        for i, s in enumerate(listed or []):
            key = f"scores[{i}]"
            if not isinstance(s, dict):
                raise self.fail(at, f"{key}: expected a score object, got {short_repr(s)}")
            if "value" not in s:
                raise self.fail(at, f"{key}.value: missing")
            value = self.number(s["value"], at, f"{key}.value")
            scorer = self.optional_text(s.get("explanationScoreTypeName"), at, f"{key}.explanationScoreTypeName")
            by = self.optional_text(s.get("explanationScoreModelName"), at, f"{key}.explanationScoreModelName")
            if value is not None:
                scores.append(Score(value, scorer or "score", by, "a Neuronpedia explanation score"))
        if not scores:
            v2 = self.number(obj.get("scoreV2"), at, "scoreV2")
            v1 = self.number(obj.get("scoreV1"), at, "scoreV1")
            if v2 is not None:
                scores.append(Score(v2, "scoreV2", None, "Neuronpedia's legacy score (v2)"))
            elif v1:  # 0 is its default: not scored
                scores.append(Score(v1, "scoreV1", None, "Neuronpedia's legacy score (v1)"))
        self.add(d, feature, text, scores, explainer, "neuronpedia", _line(at))

    # -- delphi ----------------------------------------------------------------------------------

    def delphi(self, run: Path) -> None:
        folder = run / "explanations"
        if not folder.is_dir():
            raise SitegenError(f"{run}: not a delphi run (no explanations/ folder)")
        explainer = None
        config = run / "run_config.json"
        if config.is_file():
            self.file = config
            try:
                cfg = _json_value(self.raw_text(config))
            except ValueError as err:
                raise self.fail("", f"JSON syntax error ({err})") from None
            if isinstance(cfg, dict) and cfg.get("explainer_model") is not None:
                explainer = self.optional_text(cfg["explainer_model"], "", "explainer_model")
        texts: dict[str, tuple[str, int, str]] = {}  # file stem (score-file form) -> (module, latent, text)
        for file in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
            self.file = file
            if file.suffix != ".txt":
                continue
            m = DELPHI_NAME.match(file.name)
            if not m:
                raise self.fail("", "file name: expected delphi's <module>_latent<N>.txt")
            try:
                value = _json_value(self.raw_text(file))
            except ValueError:
                raise self.fail("", "expected a JSON string (delphi writes each explanation as one)") from None
            if not isinstance(value, str):
                raise self.fail("", f"expected a JSON string (the explanation), got {short_repr(value)}")
            texts[file.stem] = (m["module"], int(m["index"]), self.text(value, "", "explanation"))
        modules = sorted({module for module, _, _ in texts.values()})
        if self.source.dictionary is not None and len([m for m in modules if m not in self.by_name]) > 1:
            self.file = folder
            raise self.fail(
                "",
                f"holds the modules {', '.join(modules)}, and 'dictionary:' of {self.source.where} names one "
                "dictionary: name the site dictionaries after the modules, or give one module a run",
            )
        targets: dict[str, SiteDictionary] = {}
        for module in modules:
            self.file = folder
            if module in self.by_name:
                targets[module] = self.by_name[module]
            elif self.source.dictionary is not None:
                targets[module] = self.by_name[self.source.dictionary]
            else:
                m = MODULE_LAYER.search(module)
                if m is None:
                    raise self.fail(
                        "",
                        f"module {module!r} is no site dictionary (have: {', '.join(self.by_name)}) and names no "
                        f"layer: give {self.source.where} a 'dictionary:'",
                    )
                targets[module] = self.by_layer(int(m[1]), "", f"module {module!r}", "it")
        scores: dict[str, list[Score]] = {stem: [] for stem in texts}
        score_root = run / "scores"
        for scorer_dir in sorted(p for p in score_root.iterdir() if p.is_dir()) if score_root.is_dir() else []:
            self.delphi_scores(scorer_dir, texts, scores, explainer)
        for stem, (module, latent, text) in sorted(texts.items(), key=lambda kv: (kv[1][0], kv[1][1])):
            self.file = folder / f"{stem}.txt"
            d = targets[module]
            feature = self.feature(d, latent, "", "latent")
            self.add(d, feature, text, scores[stem], explainer, "delphi")

    def delphi_scores(
        self, folder: Path, texts: dict[str, tuple[str, int, str]], scores: dict[str, list[Score]], model: str | None
    ) -> None:
        for file in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix == ".txt"):
            self.file = file
            try:
                records = _json_value(self.raw_text(file))
            except ValueError as err:
                raise self.fail("", f"JSON syntax error ({err})") from None
            if not isinstance(records, list):
                raise self.fail("", f"expected a JSON list of scored examples, got {short_repr(records)}")
            if records and (not isinstance(records[0], dict) or "activating" not in records[0]):
                log.info(
                    f"[sitegen] {folder}: not a classifier scorer's output (its examples have no 'activating'); "
                    "its scores are left out"
                )
                return
            if file.stem not in texts:
                raise self.fail("", f"a score without an explanation (no explanations/{file.name})")
            value, n, answered = self.balanced_accuracy(records)
            detail = (
                f"delphi's class-balanced accuracy, (TP/P + TN/N) / 2, over the {answered} of {n} scored examples "
                "the scorer answered"
            )
            scores[file.stem].append(Score(value, folder.name, model, detail))

    def balanced_accuracy(self, records: list[Any]) -> tuple[float, int, int]:
        """delphi's ``compute_confusion`` (threshold 0.5, unanswered examples left out) and
        ``compute_classification_metrics``' accuracy, for one latent's scored examples."""
        tp = tn = pos = neg = 0
        for i, r in enumerate(records):
            at = f"[{i}]."
            if not isinstance(r, dict):
                raise self.fail("", f"[{i}]: expected a scored example, got {short_repr(r)}")
            for key in ("activating", "prediction"):
                if key not in r:
                    raise self.fail("", f"{at}{key}: missing")
            activating, prediction = r["activating"], r["prediction"]
            if activating not in (True, False, 0, 1) or isinstance(activating, float):
                raise self.fail("", f"{at}activating: expected true or false, got {short_repr(activating)}")
            if prediction is None:
                continue
            if isinstance(prediction, bool) or (isinstance(prediction, (int, float)) and math.isfinite(prediction)):
                predicted = prediction >= 0.5
            else:
                raise self.fail("", f"{at}prediction: expected true, false or null, got {short_repr(prediction)}")
            if activating:
                pos += 1
                tp += predicted
            else:
                neg += 1
                tn += not predicted
        value = ((tp / pos if pos else 0.0) + (tn / neg if neg else 0.0)) / 2
        return value, len(records), pos + neg

    # -- plain YAML / CSV ---------------------------------------------------------------------------

    def plain_row(self, row: dict, at: str, line: int | None) -> None:
        for key in row:
            if key not in PLAIN_FIELDS:
                close = difflib.get_close_matches(str(key), PLAIN_FIELDS, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else f" (fields: {', '.join(PLAIN_FIELDS)})"
                raise self.fail(at, f"{key}: unknown field{hint}")
        for key in PLAIN_REQUIRED:
            if row.get(key) is None or row.get(key) == "":
                raise self.fail(at, f"{key}: missing")
        d = self.named(row["dictionary"], at, "dictionary")
        feature = self.feature(d, self.index(row["feature"], at, "feature"), at, "feature")
        text = self.text(row["explanation"], at, "explanation", numbers=True)
        score = row.get("score")
        if isinstance(score, str):
            try:
                score = float(score) if score.strip() else None
            except ValueError:
                raise self.fail(at, f"score: expected a number, got {short_repr(score)}") from None
        value = self.number(score, at, "score")
        scorer = self.optional_text(row.get("scorer"), at, "scorer")
        scores = [] if value is None else [Score(value, scorer or "score", None, "as the file gives it")]
        self.add(d, feature, text, scores, self.optional_text(row.get("source"), at, "source"), "plain", line)

    def plain_yaml(self, text: str) -> None:
        try:
            rows = yaml.load(text, Loader=_LineLoader)  # a SafeLoader that records lines
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            at = f"line {mark.line + 1}: " if mark else ""
            raise self.fail(at, f"YAML syntax error: {getattr(err, 'problem', None) or 'invalid YAML'}") from None
        if rows is None:
            return
        if not isinstance(rows, list):
            raise self.fail("", "expected a list of {dictionary, feature, explanation, score, source} rows")
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise self.fail(
                    f"item {i}: ", f"expected a mapping of {', '.join(PLAIN_FIELDS)}, got {short_repr(row)}"
                )
            line = row.pop(_LINE)
            self.plain_row(row, f"line {line}: ", line)

    def plain_csv(self, text: str) -> None:
        reader = csv.reader(io.StringIO(text, newline=""))
        try:
            header = next(reader, None)
            if header is None:
                return
            header = [h.strip() for h in header]
            for key in header:
                if key not in PLAIN_FIELDS:
                    close = difflib.get_close_matches(key, PLAIN_FIELDS, n=1)
                    hint = f" (did you mean '{close[0]}'?)" if close else f" (fields: {', '.join(PLAIN_FIELDS)})"
                    raise self.fail("line 1: ", f"{key}: unknown column{hint}")
            missing = [k for k in PLAIN_REQUIRED if k not in header]
            if missing:
                raise self.fail(
                    "line 1: ", f"{missing[0]}: missing column (the header names {', '.join(PLAIN_REQUIRED)})"
                )
            start = reader.line_num + 1
            for cells in reader:
                line, start = start, reader.line_num + 1
                if not any(c.strip() for c in cells):
                    continue
                if len(cells) != len(header):
                    raise self.fail(f"line {line}: ", f"expected {len(header)} cells (as the header), got {len(cells)}")
                self.plain_row({k: v.strip() for k, v in zip(header, cells)}, f"line {line}: ", line)
        except csv.Error as err:
            raise self.fail(f"line {reader.line_num}: ", f"CSV syntax error ({err})") from None
