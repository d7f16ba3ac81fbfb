"""FCN-16s: FCN-32s plus a skip from pool4, fused at stride 16."""

from .fcn import FCN
from .geometry import crop_offset


class FCN16s(FCN):
    def __init__(self, *args, **config):  # FCN's arguments, positional as before or by name
        super().__init__(*args, **config)
        self.score_pool4 = self.score_layer(self.conv4_3.weight.shape[0])
        self.upscore2 = self.upsampler(4, 2)
        self.upscore16 = self.upsampler(32, 16, final=True)
        self.offsets = {  # 5 and 27 with pad 100
            "score_pool4": crop_offset(self.map_of("pool4", "score_pool4"), self.map_of("score_fr", "upscore2")),
            "upscore16": self.final_offset("score_fr", "upscore2", "upscore16"),
        }

    def forward(self, x):
        x, size = self.prepare(x)
        score_fr, taps = self.body(x, taps=("pool4",))
        upscore2 = self.upscore2(score_fr)
        score_pool4 = self.crop_to(self.score_pool4(taps["pool4"]), self.offsets["score_pool4"], upscore2)
        return self.upsample_to(self.upscore16, upscore2 + score_pool4, self.offsets["upscore16"], size)

    @classmethod
    def from_fcn32s(cls, fcn32s):
        """The paper's staged training: start from a trained 32s (score_pool4 starts at zero)."""
        return cls.from_model(fcn32s)
