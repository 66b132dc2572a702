"""Hyper-parameter spaces and study presets (each preset a small SPEC dict in its own module)."""
from __future__ import annotations

from typing import Dict

from search_spaces import balancing_survey, balancing_synthetic, ial, jtr, mgm
from search_spaces import quickstart, survey_celeba, survey_nyud, survey_pascal, survey_synthetic
from search_spaces import survey_cityscapes, survey_encoder_synthetic, survey_taskonomy
from search_spaces import survey_decoder, survey_decoder_synthetic

PRESETS: Dict[str, dict] = {
    "quickstart": quickstart.SPEC,
    "survey_synthetic": survey_synthetic.SPEC,
    "balancing_synthetic": balancing_synthetic.SPEC,
    "ial_synthetic": ial.SYNTHETIC,
    "ial_nyuv2": ial.NYUV2,
    "ial_nyuv2_noisy": ial.NYUV2_NOISY,
    "ial_noisy_synthetic": ial.SYNTHETIC_NOISY,
    "ial_cityscapes": ial.CITYSCAPES,
    "ial_cityscapes_noisy": ial.CITYSCAPES_NOISY,
    "ial_pascal": ial.PASCAL,
    "ial_pascal_noisy": ial.PASCAL_NOISY,
    "ial_cifar100": ial.CIFAR100,
    "survey_nyud": survey_nyud.SPEC,
    "survey_nyud_synthetic": survey_encoder_synthetic.NYUD_TWIN,
    "survey_cityscapes": survey_cityscapes.SPEC,
    "survey_cityscapes_synthetic": survey_encoder_synthetic.CITYSCAPES_TWIN,
    "survey_taskonomy": survey_taskonomy.SPEC,
    "survey_taskonomy_synthetic": survey_encoder_synthetic.TASKONOMY_TWIN,
    **jtr.PRESETS,
    "jtr_synthetic": jtr.SYNTHETIC,
    **mgm.PRESETS,
    "mgm_synthetic": mgm.SYNTHETIC,
    "survey_pascal": survey_pascal.SPEC,
    "survey_celeba": survey_celeba.SPEC,
    "survey_nyud_decoder": survey_decoder.TABLE_6,
    "survey_nyud_decoder_synthetic": survey_decoder_synthetic.TABLE_6_TWIN,
    "survey_nyud_hrnet": survey_decoder.TABLE_7,
    "survey_nyud_hrnet_synthetic": survey_decoder_synthetic.TABLE_7_TWIN,
    "survey_pascal_decoder": survey_decoder.TABLE_8,
    "survey_pascal_hrnet": survey_decoder.TABLE_9,
    "survey_nyud_encoder_decoder": survey_decoder.TABLE_10,
    "balancing_nyud": balancing_survey.NYUD_SPEC,
    "balancing_cityscapes": balancing_survey.CITYSCAPES_SPEC,
    "balancing_celeba": balancing_survey.CELEBA_SPEC,
}


def preset(name: str) -> dict:
    """The SPEC dict of a preset, or a KeyError listing the presets."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]
