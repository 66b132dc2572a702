"""Delta_m (survey Eq. 10) reproduces the survey's printed values from their metric columns.

The tables print rounded metrics, so recomputed values match to about 0.15 points
(Eq. 10 on the printed, rounded columns); rows that do not reproduce at all (Table 9's MTL baseline, Table 11c) are
not used.
"""
import pytest

from trainables.delta import delta_m

# Table 3 (NYUD-v2): S (mIoU, up), D (rmse, down)
NYUD = {"S": True, "D": False}
NYUD_SINGLE = {"S": 44.5, "D": 60.1}
# Table 4 (Cityscapes): S (mIoU, up), I (px, down), D (px, down)
CITY = {"S": True, "I": False, "D": False}
CITY_SINGLE = {"S": 65.2, "I": 11.7, "D": 2.57}


@pytest.mark.parametrize("row, printed", [
    ({"S": 44.4, "D": 58.7}, 1.11),   # MTL baseline
    ({"S": 44.5, "D": 58.8}, 1.11),   # MTAN
    ({"S": 44.6, "D": 58.9}, 1.14),   # Cross-stitch
    ({"S": 44.0, "D": 58.5}, 0.80),   # NDDR-CNN
])
def test_table3_nyud(row, printed):
    assert delta_m(row, NYUD_SINGLE, NYUD) == pytest.approx(printed, abs=0.15)


@pytest.mark.parametrize("row, printed", [
    ({"S": 61.5, "I": 11.8, "D": 2.66}, -3.33),  # MTL baseline
    ({"S": 63.1, "I": 11.9, "D": 2.66}, -2.67),  # MTAN
    ({"S": 65.1, "I": 11.6, "D": 2.55}, 0.42),   # Cross-stitch
    ({"S": 65.6, "I": 11.6, "D": 2.54}, 0.89),   # NDDR-CNN
    ({"S": 62.1, "I": 11.7, "D": 2.66}, -2.68),  # Branched-1
    ({"S": 62.7, "I": 11.7, "D": 2.62}, -1.84),  # Branched-2
    ({"S": 64.1, "I": 11.6, "D": 2.62}, -0.96),  # Branched-3
])
def test_table4_cityscapes(row, printed):
    assert delta_m(row, CITY_SINGLE, CITY) == pytest.approx(printed, abs=0.15)


def test_hand_computed_case():
    # (+10% on an up metric) and (-20% error on a down metric): mean of +10 and +20
    assert delta_m({"a": 1.1, "b": 0.8}, {"a": 1.0, "b": 1.0}, {"a": True, "b": False}) == pytest.approx(15.0)


def test_baseline_against_itself_is_zero():
    assert delta_m(CITY_SINGLE, CITY_SINGLE, CITY) == 0.0


def test_missing_metric_is_named():
    with pytest.raises(KeyError, match="model metrics lack 'D'"):
        delta_m({"S": 44.0}, NYUD_SINGLE, NYUD)


def test_zero_baseline_is_rejected():
    with pytest.raises(ZeroDivisionError, match="baseline 'S' is 0"):
        delta_m({"S": 1.0}, {"S": 0.0}, {"S": True})
