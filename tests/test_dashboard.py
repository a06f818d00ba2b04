"""The dashboard stores one row per checkpoint, marks thresholds in the right direction, and plots."""
from __future__ import annotations

import pytest

from dte_lib import config, dashboard


def test_rows_replace_by_name_and_thresholds_have_direction(tmp_path):
    cfg = config.load("ci")
    dashboard.add(tmp_path, "s01", {"perplexity": 30.0, "identity": 0.4, "diversity": 0.8, "coherence": 0.95,
                                    "identity_floor": 0.27, "identity_ceiling": 0.66, "_answers": ["x"]}, depth=1)
    dashboard.add(tmp_path, "s02", {"perplexity": 12.0, "identity": 0.9, "diversity": 0.5, "coherence": None})
    dashboard.add(tmp_path, "s01", {"perplexity": 25.0, "identity": 0.4, "diversity": 0.8, "coherence": 0.95})
    rows = dashboard.load(tmp_path)
    assert [r["name"] for r in rows] == ["s02", "s01"] and rows[1]["perplexity"] == 25.0
    assert "_answers" not in rows[1]
    df = dashboard.table(rows, cfg)
    assert list(df["ppl<20"]) == ["✓", "✗"] and list(df["id>0.85"]) == ["✓", "✗"]
    assert list(df["div>0.7"]) == ["✗", "✓"] and list(df["coh>0.9"]) == ["—", "✓"]
    md = dashboard.markdown(df)
    assert md.count("\n") == 3 and "s01" in md
    figs = dashboard.figures(rows[0], cfg, "final_")
    assert figs["final_meets_perplexity"] is True and figs["final_meets_coherence"] is None
    fig = dashboard.plot(rows, cfg)
    assert len(fig.axes) == 4


def test_keep_change_follows_the_noise_rule_notebook_10_teaches():
    """A change is kept only beyond the band: 0.028 on one seed with ±0.05 training-seed noise is not a win; a
    row's own sampling interval widens the band further (metrics.choose, plain first)."""
    plain = {"name": "plain", "split": "val", "identity_normalised": 0.10}
    mech = {"name": "mechanisms", "split": "val", "identity_normalised": 0.128}
    choice = dashboard.keep_change(mech, plain, 0.05)
    assert choice["keep"] is False and choice["difference"] == pytest.approx(0.028)
    assert choice["band"] == pytest.approx(0.05) and "kept 'plain'" in choice["reason"]
    assert dashboard.keep_change({**mech, "identity_normalised": 0.16}, plain, 0.05)["keep"] is True
    wide = dashboard.keep_change({**mech, "identity_normalised": 0.16, "identity_normalised_ci": 0.1},
                                 {**plain, "identity_normalised_ci": 0.1}, 0.05)
    assert wide["keep"] is False and wide["band"] == pytest.approx(0.1414, abs=1e-3)
    low = dashboard.keep_change({**mech, "identity_normalised": 0.01}, plain, 0.05)
    assert low["keep"] is False and "chose 'plain'" in low["reason"]
    assert dashboard.keep_change({**mech, "identity_normalised": None}, plain, 0.05)["keep"] is False
    with pytest.raises(ValueError, match="choices read val only"):
        dashboard.keep_change({**mech, "split": "test"}, plain, 0.05)


@pytest.mark.parametrize("preset", ["demo", "long"])
def test_noise_bands_are_the_measured_ones(preset):
    from dte_lib import config
    assert config.load(preset).eval.identity_noise == {"demo": 0.05, "long": 0.15}[preset]
