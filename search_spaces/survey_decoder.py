"""Survey Tables 6-10: decoder-based models on NYUD-v2 and PASCAL-Context, and their comparison
with the encoder-based ones.

Vandenhende et al., TPAMI 2021, Sec. 4.3-4.4. Table 6: JTRL, PAP-Net, PAD-Net on NYUD-v2's
single-scale setup of Table 3 (dilated ResNet-50, ASPP heads for the single-task networks and the
MTL baseline, the whole grid). Table 7: PAD-Net and MTI-Net on HRNet-18 with HRNet heads (the
survey code's NYUD HRNet configs: Adam 1e-4, poly, batch 8, 100 epochs; the survey grid-searches
every model, so the grid is kept). Table 8: ASTMT and PAD-Net on PASCAL-Context with ASTMT's
dilated ResNet-26 + DeepLab-v3+; Table 9: PAD-Net and MTI-Net on PASCAL with HRNet-18; both with
the survey code's fixed loss weights and its PASCAL HRNet config. Table 10: Table 3's encoder-based
models and Table 6's decoder-based ones in one study. HRNet starts from random weights unless
``backbone.params.weights_path`` gives timm's ImageNet file (the survey used ImageNet weights).
``mtl models survey_nyud_decoder`` etc. compare #P / FLOPS with the tables.
"""
from search_spaces.decoder_models import experiment, multi_scale, reference, single_scale_nyud
from search_spaces.encoder_models import EXPERIMENTS as ENCODER_EXPERIMENTS
from search_spaces.survey_nyud import SPEC as TABLE_3
from search_spaces.survey_pascal import SPEC as PASCAL
from trainables.datasets.pascal_context import SURVEY_LOSS_WEIGHTS

HRNET = {"backbone": "hrnet18", "head": "hrnet"}
PASCAL_CONFIG = {"batch_sizes": [8], "schedulers": ["poly"], "optimizers": ["adam"], "lrs": [1e-4]}

TABLE_6 = {
    **TABLE_3, "name": "survey_nyud_decoder", "description": "Survey Table 6: decoder-based models on NYUD-v2, single-scale",
    "experiments": single_scale_nyud(),
    "reference": reference("survey Table 6", single_task=(79, 383), mtl_baseline=(56, 267), jtrl=(295, 660),
                           pap_net=(52, 4800), pad_net=(52, 256)),
}
TABLE_7 = {
    **TABLE_3, **HRNET, "name": "survey_nyud_hrnet", "description": "Survey Table 7: PAD-Net and MTI-Net on NYUD-v2, HRNet-18",
    "experiments": multi_scale(),
    "reference": reference("survey Table 7", single_task=(8, 22), mtl_baseline=(4, 12), pad_net=(7, 44),
                           mti_net=(13, 20)),
}
TABLE_8 = {
    **PASCAL, "name": "survey_pascal_decoder", "description": "Survey Table 8: ASTMT and PAD-Net on PASCAL, single-scale",
    # ASTMT's DeepLab-v3+: ResNet-26 at output stride 16, a 64-wide decoder with a 12-channel skip
    "backbone": {"name": "resnet26", "params": {"dilated": True, "dilate_scale": 16}},
    "head": {"name": "deeplabv3plus", "params": {"channels": 64, "low_level_channels": 12, "rates": [6, 12, 18]}},
    "experiments": [experiment(n, weights=SURVEY_LOSS_WEIGHTS) for n in ("mtl_baseline", "astmt", "pad_net")],
    "search": PASCAL_CONFIG,
    "reference": reference("survey Table 8", single_task=(103, 130), mtl_baseline=(19, 24), astmt=(31, 132),
                           pad_net=(32, 36)),
}
TABLE_9 = {
    **PASCAL, **HRNET, "name": "survey_pascal_hrnet", "description": "Survey Table 9: PAD-Net and MTI-Net on PASCAL, HRNet-18",
    "experiments": multi_scale(SURVEY_LOSS_WEIGHTS), "search": PASCAL_CONFIG,
    "reference": reference("survey Table 9", single_task=(20, 48), mtl_baseline=(4, 10), pad_net=(17, 225),
                           mti_net=(27, 31)),
}
TABLE_10 = {
    **TABLE_3, "name": "survey_nyud_encoder_decoder",
    "description": "Survey Table 10: encoder- vs decoder-based models on NYUD-v2",
    "experiments": ENCODER_EXPERIMENTS + single_scale_nyud()[1:],
    "reference": reference("survey Table 10", single_task=(79, 383), mtl_baseline=(56, 267), mtan=(214, 1064),
                           cross_stitch=(79, 383), nddr_cnn=(101, 413), jtrl=(295, 660), pap_net=(52, 4800),
                           pad_net=(52, 256)),
}
