"""The run report: RUN/report.html, one page to read a run in a browser, from a file:// URL too.

    from aurl.evaluate.report import write_report
    write_report("outputs")          # -> outputs/report.html

Rewritten after each stage-end evaluation (aurl.train.pipeline) and by `python -m aurl.evaluate --report`.
Self-contained: no network, no script, the style inline; pictures and sounds are the evaluations' own
files, linked by paths relative to the page (the loss-curve PNG is drawn into RUN/report_files/), so the
run folder can be copied or served as it is. Shows the stages and where their checkpoints are, the loss
curves, then per evaluation (RUN/eval/*/eval.json): likelihood, quality bar, music metrics against the
data, every sample's piano roll with an <audio> player and its metrics, the validation excerpts to
compare with, and the configs used.

tracker_media(result) turns an evaluation result into the trackers' media (aurl.train.tracking.Media).
"""

from __future__ import annotations

import html
import json
import os
import re
import time
from pathlib import Path
from urllib.parse import quote

from aurl.console import UserError
from aurl.rundir import RunDir

ASSETS = "report_files"  # what the page draws itself (loss curves), beside it
STYLE = """body{font-family:system-ui,sans-serif;margin:24px;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.yes{color:#176b1e}.no{color:#b00020}
.grid{display:flex;flex-wrap:wrap;gap:16px}.card{border:1px solid #ddd;padding:8px;border-radius:6px}
.card img{max-width:520px;display:block}img.wide{max-width:100%}audio{width:100%;margin-top:4px}
pre{background:#f7f7f7;padding:8px;overflow:auto;font-size:12px}code{font-size:12px}"""


def per_sample(result: dict) -> list[tuple[str, str | None, dict]]:
    """(MIDI path, WAV path or None, metrics) of each sample file an evaluation wrote."""
    files = (result.get("samples") or {}).get("files") or []
    wavs = ((result.get("listening") or {}).get("samples") or []) + [None] * len(files)
    metrics = ((result.get("samples") or {}).get("metrics") or []) + [{}] * len(files)
    return list(zip(files, wavs[: len(files)], metrics[: len(files)], strict=True))


def tracker_media(result: dict):
    """The trackers' media of one evaluation: each sample's sound and piano roll, the reference excerpts'
    sounds, the comparison pictures, a table of samples with their metrics, the quality bar as text."""
    from aurl.evaluate.metrics import METRIC_NAMES
    from aurl.train.tracking import Media

    media = Media()
    rows = []
    for i, (midi, wav, metrics) in enumerate(per_sample(result)):
        roll = Path(midi).with_suffix(".png")
        if wav:
            media.audio[f"eval/audio/sample_{i:03d}"] = Path(wav)
        if roll.is_file():
            media.images[f"eval/piano_roll/sample_{i:03d}"] = roll
        rows.append([i, Path(wav) if wav else None, roll if roll.is_file() else None,
                     *(float("nan") if metrics.get(m) is None else float(metrics[m]) for m in METRIC_NAMES)])
    listening = result.get("listening") or {}
    for i, ref in enumerate(listening.get("reference") or []):
        if ref.get("audio"):
            media.audio[f"eval/audio/reference_{i:03d}"] = Path(ref["audio"])
    for picture in result.get("pictures") or []:
        if Path(picture).is_file() and not Path(picture).name.startswith("sample_"):
            media.images[f"eval/{Path(picture).stem}"] = Path(picture)
    if rows:
        media.tables["eval/samples"] = (["sample", "audio", "piano roll", *METRIC_NAMES], rows)
    bar = result.get("quality_bar") or {}
    if bar:
        media.text["eval/quality_bar"] = "\n".join(
            ["| criterion | met |", "|---|---|"] + [f"| {k} | {'yes' if ok else 'NO'} |" for k, ok in bar.items()])
    return media


# ----------------------------------------------------------------------------------------------------------
# Reading the run
def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _evaluations(run: Path) -> list[tuple[Path, dict]]:
    """(eval folder, report) of every readable RUN/eval/*/eval.json, stages in order."""
    found = [(p.parent, r) for p in run.glob("eval/*/eval.json") if (r := _read_json(p)) is not None]
    # stage2 before stage10; other names after the stages
    return sorted(found, key=lambda item: (not (m := re.fullmatch(r"stage(\d+)", item[0].name)),
                                           int(m.group(1)) if m else 0, item[0].name))


def _loss_curves(run: Path) -> tuple[Path | None, str]:
    """RUN/report_files/loss_curves.png from the run's loss records, or None and why not."""
    import importlib.util

    source = RunDir(run).loss_records()
    if source is None:
        return None, "no loss records (RUN/logs/metrics.jsonl) yet"
    if importlib.util.find_spec("matplotlib") is None:
        return None, "matplotlib is not installed (pip install -e '.[plots]')"
    from aurl.evaluate.plots import load_loss_records, plot_loss_curves

    return plot_loss_curves(load_loss_records(source), run / ASSETS / "loss_curves.png"), ""


# ----------------------------------------------------------------------------------------------------------
# HTML
def _e(x) -> str:
    return html.escape(str(x))


def _num(v, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else _e(v)


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


class _Page:
    """Links relative to the page's folder; a file that is not there is named, not linked."""

    def __init__(self, run: Path):
        self.run = run.resolve()

    def url(self, path: Path) -> str:
        return quote(os.path.relpath(Path(path).resolve(), self.run).replace(os.sep, "/"))

    def img(self, path: Path | None, alt: str, cls: str = "") -> str:
        if path is None or not Path(path).is_file():
            return f"<p><em>{_e(alt)}: no picture</em></p>"
        return f'<img src="{self.url(path)}" alt="{_e(alt)}" class="{cls}">'

    def audio(self, path: Path | None) -> str:
        if path is None or not Path(path).is_file():
            return "<p><em>no audio (no synthesizer when evaluated: see README, Listen and look)</em></p>"
        return f'<audio controls preload="metadata" src="{self.url(path)}"></audio>'


def _beside(folder: Path, recorded: str | None) -> Path | None:
    """A file the report recorded, looked up by name in the evaluation's folder (which may have moved)."""
    return folder / Path(recorded).name if recorded else None


def _run_section(run: Path, state: dict | None, page: _Page, curves: tuple[Path | None, str]) -> str:
    out = ["<h2>Stages and checkpoints</h2>"]
    if state:
        rows = [[_e(n), _e(e.get("status")), f"{e.get('step')}/{e.get('total_steps')}", _num(e.get("best_val_loss"), 4),
                 f"<code>{_e(e.get('best_checkpoint') or '-')}</code>", f"<code>{_e(e.get('last_checkpoint') or '-')}</code>"]
                for n, e in sorted(state.get("stages", {}).items())]
        out.append(_table(["stage", "status", "step", "best val NLL", "best checkpoint", "last checkpoint"], rows))
    best = RunDir(run).best_model
    out.append(f"<p>Production model: <code>{_e(best if best.exists() else '(none yet)')}</code></p>")
    out.append("<h2>Loss curves</h2>")
    out.append(page.img(curves[0], "loss curves", "wide") if curves[0] else f"<p><em>{_e(curves[1])}</em></p>")
    return "\n".join(out)


def _summary(evals: list[tuple[Path, dict]]) -> str:
    """One row per evaluation: stages side by side (likelihood and quality bar)."""
    criteria = list(dict.fromkeys(k for _, r in evals for k in (r.get("quality_bar") or {})))
    rows = []
    for folder, r in evals:
        v, bar = r.get("validation") or {}, r.get("quality_bar") or {}
        # an evaluation without samples (num_samples 0) has no quality bar: a dash under each criterion
        marks = ["-" if c not in bar else '<span class="yes">yes</span>' if bar[c] else '<span class="no">NO</span>'
                 for c in criteria]
        rows.append([f'<a href="#{_e(folder.name)}">{_e(folder.name)}</a>', _e(r.get("step")),
                     _num(v.get("nll_per_token"), 4), _num(v.get("nll_per_note")), *marks])
    return "<h2>Evaluations at a glance</h2>" + _table(
        ["evaluation", "step", "NLL/token", "NLL/note", *criteria], rows)


def _eval_section(folder: Path, r: dict, page: _Page) -> str:
    from aurl.evaluate.metrics import METRIC_NAMES

    v = r.get("validation") or {}
    out = [f'<h2 id="{_e(folder.name)}">Evaluation {_e(folder.name)}</h2>',
           f"<p>checkpoint <code>{_e(r.get('checkpoint'))}</code>, mode {_e(r.get('mode'))}, step {_e(r.get('step'))}; "
           f"files in <code>{_e(folder)}</code></p>",
           _table(["validation", "value"], [
               ["pieces / tokens / notes", f"{v.get('pieces')} / {v.get('tokens')} / {v.get('notes')}"],
               ["NLL per token (nats)" + (" (negative ELBO)" if v.get("kind") == "elbo_bound" else ""),
                _num(v.get("nll_per_token"), 4)],
               ["NLL per note (nats)", _num(v.get("nll_per_note"))],
               ["bits per second", _num(v.get("bits_per_second"), 1)]])]
    bar = r.get("quality_bar") or {}
    if bar:
        out.append("<h3>Quality bar</h3>" + _table(["criterion", "met"], [
            [_e(k), '<span class="yes">yes</span>' if ok else '<span class="no">NO</span>'] for k, ok in bar.items()]))
    metrics = r.get("metrics") or {}
    if metrics:
        out.append(f"<h3>Music metrics against the data ({_e(r.get('data_excerpts'))} validation excerpts)</h3>")
        out.append(_table(["metric", "data", "samples", "overlap"], [
            [_e(m), _num(metrics[m].get("data")), _num(metrics[m].get("samples")), _num(metrics[m].get("overlap"), 2)]
            for m in METRIC_NAMES if m in metrics]))
        out.append(page.img(folder / "metrics.png", "metric distributions", "wide"))
    listening = r.get("listening") or {}
    if per_sample(r):
        out.append(f"<h3>Samples ({_e(listening.get('synthesizer') or 'not rendered')})</h3>")
        out.append(page.img(folder / "rolls_data_vs_samples.png", "validation excerpt vs samples", "wide"))
        cards = []
        for i, (midi, wav, m) in enumerate(per_sample(r)):
            mid = _beside(folder, midi)
            cards.append(f'<div class="card"><b>sample {i}</b> <a href="{page.url(mid)}">MIDI</a>'
                         + page.img(mid.with_suffix(".png"), f"sample {i}") + page.audio(_beside(folder, wav))
                         + _table(["metric", "value"], [[_e(k), _num(m.get(k))] for k in METRIC_NAMES if k in m])
                         + "</div>")
        out.append(f'<div class="grid">{"".join(cards)}</div>')
    reference = listening.get("reference") or []
    if reference:
        out.append("<h3>Validation excerpts, to compare with</h3>")
        cards = []
        for i, ref in enumerate(reference):
            mid = _beside(folder / "reference", ref["midi"])
            cards.append(f'<div class="card"><b>excerpt {i}</b> <a href="{page.url(mid)}">MIDI</a>'
                         + page.img(mid.with_suffix(".png"), f"excerpt {i}")
                         + page.audio(_beside(folder / "reference", ref.get("audio"))) + "</div>")
        out.append(f'<div class="grid">{"".join(cards)}</div>')
    out.append(_config_block(folder, r))
    return "\n".join(out)


def _config_block(folder: Path, r: dict) -> str:
    """The stage config the trainer recorded beside the evaluation, else the model file's own metadata."""
    import yaml

    cfg, what = _read_json(folder / "stage_config.json"), "stage config"
    if cfg is None and r.get("checkpoint"):
        cfg, what = _read_json(Path(r["checkpoint"]).with_suffix(".json")), "model file metadata"
    if cfg is None:
        return "<p><em>no config recorded</em></p>"
    text = yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None, width=110)
    return f"<details><summary>{what} ({_e(folder.name)})</summary><pre>{_e(text)}</pre></details>"


def write_report(run_dir: str | Path) -> Path:
    """Write RUN/report.html from what the run folder holds; its path. UserError if there is nothing."""
    from aurl.atomic import atomic_write_bytes
    from aurl.train import state as st

    run = Path(run_dir)
    state = st.read_state(run) if st.state_path(run).exists() else None
    evals = _evaluations(run)
    if state is None and not evals:
        raise UserError(f"nothing to report in {run}: no {st.STATE_FILE} and no eval/*/eval.json")
    page = _Page(run)
    curves = _loss_curves(run)
    title = f"aurl run {state['run_id'] if state else run.resolve().name}"
    body = [f"<h1>{_e(title)}</h1>",
            f"<p>run folder <code>{_e(run.resolve())}</code>; written {time.strftime('%Y-%m-%d %H:%M:%S %Z')}</p>",
            _run_section(run, state, page, curves)]
    body += [_summary(evals)] if evals else []
    body += [_eval_section(folder, r, page) for folder, r in evals]
    doc = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
           f"<style>{STYLE}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")
    path = RunDir(run).report
    atomic_write_bytes(path, doc.encode("utf-8"))
    return path
