"""The paper's tables as data: every entry against the paper's text, row counts, claims on the paper's own numbers, and
presets that never change what a row means."""
import re
from pathlib import Path

import pytest

from oilwater_jax.core import OilwaterError
from oilwater_jax.experiments import (FIVE_SEED_TABLES, HEADLINE_SEEDS, METHOD_NAMES, METHOD_STAGES, PAPER_TABLE_IDS, PRESETS, SCALING_NOTES, TABLES,
                                      PaperValue, claim_lookup, make_row, paper_values, scaling_summary)

PAPER = Path("/work/shared/paper/paper.txt")
ROW_COUNTS = {"table1": 5, "table2": 15, "figure1": 4, "table3": 12, "table4": 15, "table5": 12, "table6": 21,
              "table7": 6, "table8": 9, "table9": 5, "table10": 9, "table11": 1, "table12": 5}


def test_every_table_parses_with_the_paper_row_counts():
    assert {t: len(TABLES[t].rows) for t in PAPER_TABLE_IDS} == ROW_COUNTS
    for tid in PAPER_TABLE_IDS:
        t = TABLES[tid]
        for r in t.rows:
            assert r.config.method in METHOD_NAMES and r.seeds == (HEADLINE_SEEDS if tid in FIVE_SEED_TABLES else (0, 1, 2))
            if t.kind == "table": assert set(r.paper) == set(t.metrics), (tid, r.label)
            for m, v in r.paper.items():
                assert isinstance(v, PaperValue) and v.source.startswith(f"{t.title}") and v.text in v.source
                assert v.missing == (v.text in ("N/A", "–"))


def test_spot_checks():
    t2 = TABLES["table2"]
    celeba_std = t2.find(make_row("jtt", "celeba", "dlbd", "standard"))
    assert (celeba_std.paper["asr"].mean, celeba_std.paper["asr"].std) == (97.7, 0.1)
    assert celeba_std.paper["acc"].source == "Table 2, JTT, CelebA, DLBD, standard: ACC 82.6 ± 0.2%"
    assert TABLES["table3"].rows[9].label == ("CelebA*", "DLBD", "ideal") and TABLES["table3"].rows[9].paper["wga"].mean == 54.8
    assert TABLES["table3"].rows[9].config.data_fraction == 0.1
    assert TABLES["table6"].rows[12].paper["asr"].text == "56.6 ± 41.9%" and TABLES["table6"].rows[12].config.poison_fraction == 0.02
    assert TABLES["table8"].rows[8].config.arch == "resnet50" and TABLES["table8"].rows[8].paper["asr"].mean == 5.8
    assert TABLES["table9"].rows[0].paper["acc_drop"].mean == -0.2
    assert [r.config.epic_stop for r in TABLES["table12"].rows] == [None, 3, 5, 7, None]
    assert TABLES["table7"].rows[3].config.n_targets == 100
    assert [r.config.id_epochs for r in TABLES["table4"].rows[::3]] == [40, 60, 80, 100, 200]
    assert TABLES["figure1"].axes == ("EPIC iteration", "ELMF (%)") and TABLES["figure1"].kind == "figure"


def _normalise(text: str) -> str:
    return text.replace("$", "").replace("\\pm", "±").replace("\\%", "%")


@pytest.mark.skipif(not PAPER.exists(), reason=f"the paper's text is not at {PAPER}")
def test_every_entry_matches_the_paper_text():
    text = _normalise(PAPER.read_text(encoding="utf-8"))
    heads = [(m.start(), m.group(1)) for m in re.finditer(r"^Table (\d+)\. (.*)$", text, re.M)]
    for i, (start, n) in enumerate(heads):
        t = TABLES[f"table{n}"]
        caption = re.match(r"Table \d+\. (.*)", text[start:].splitlines()[0]).group(1)
        assert t.caption == caption, t.id
        block = text[start:heads[i + 1][0] if i + 1 < len(heads) else len(text)]
        pos = 0
        for r in t.rows:
            line = "\t".join(r.paper[m].text for m in t.metrics)
            found = block.find(line, pos)
            assert found >= 0, f"{t.id} {r.label}: {line!r} not found in order in the paper"
            pos = found + len(line)
    assert sorted(f"table{n}" for _, n in heads) == sorted(t for t in PAPER_TABLE_IDS if t.startswith("table"))


def test_claims_hold_on_the_paper_numbers_and_refer_to_rows_of_their_table():
    n = 0
    for tid in PAPER_TABLE_IDS:
        t = TABLES[tid]
        for r in t.rows:
            for c in r.claims:
                got = c.check(claim_lookup(t, r, paper_values))
                assert got is (None if t.kind == "figure" else True), (tid, r.label, c.describe())
                n += 1
    assert n >= 120


def test_presets_keep_the_meaning_and_notes_cover_every_table():
    for tid in PAPER_TABLE_IDS:
        for r in TABLES[tid].rows:
            for name, preset in PRESETS.items():
                cfg = preset(r.config)
                assert cfg.row == r.config and cfg.preset == name and tuple(cfg.stages) == METHOD_STAGES[r.config.method]
        for p in PRESETS:
            assert SCALING_NOTES[tid][p] and scaling_summary(TABLES[tid], p)
    paper = PRESETS["paper"](TABLES["table2"].rows[1].config)
    assert (paper.image_size, paper.model, paper.init, paper.data_source) == (224, "resnet18", "imagenet", "real")
    assert paper.stage("final").learning_rate == 1e-5 and paper.stage("final").weight_decay == 1.0


def test_impossible_rows_are_refused():
    for bad, msg in [(dict(poison_fraction=1.5), "poison_fraction"), (dict(id_epochs=0), "id_epochs"),
                     (dict(case="best"), "Unknown RowConfig.case"), (dict(data="imagenet"), "Unknown RowConfig.data"),
                     (dict(n_targets=5), "n_targets"), (dict(trim=2), "trim does not apply")]:
        with pytest.raises(OilwaterError, match=msg):
            make_row("jtt", "waterbirds", "dlbd", "standard").replace(**bad)
