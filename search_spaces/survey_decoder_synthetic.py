"""The synthetic twins of survey Tables 6 and 7: the decoder-based models on the synthetic scenes.

Table 6's twin trains the MTL baseline, JTRL, PAP-Net and PAD-Net on the tiny backbone with light
conv heads; Table 7's the MTL baseline, PAD-Net and MTI-Net on HRNet-18 with HRNet heads, plus
MTI-Net with normals and edges as auxiliary tasks (the survey code's ``mti_net+edges_normals``:
supervised at every scale, not scored). Both on 64 x 64 semseg + depth scenes with the
quickstart's two grid settings and the single-task networks of their backbone and head, the
decoders at laptop sizes (``decoder_models.LAPTOP_PARAMS``: JTRL's states 64/32/16 wide at 1/8-1/2,
PAD-Net's and PAP-Net's task features 64, 3 PAP-Net diffusion steps); Table 7's on 480 training
scenes instead of 1200.
"""
from search_spaces.decoder_models import WITH_EDGES_NORMALS, synthetic_twin
from search_spaces.survey_decoder import TABLE_6, TABLE_7

TABLE_6_TWIN = synthetic_twin(TABLE_6, "Survey Table 6's decoder-based models on the synthetic scenes (semseg, depth).")
# HRNet-18 costs ~13x the tiny backbone per image: 480 training scenes keep the twin to minutes
TABLE_7_TWIN = synthetic_twin(TABLE_7, "Survey Table 7's multi-scale models on the synthetic scenes (semseg, depth).",
                              backbone="hrnet18", head="hrnet", experiments=TABLE_7["experiments"] + [WITH_EDGES_NORMALS])
TABLE_7_TWIN["dataset"] = {"name": "synthetic", "params": {**TABLE_7_TWIN["dataset"]["params"], "num_train": 480}}
