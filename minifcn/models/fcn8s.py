"""FCN-8s: FCN-16s plus a second skip from pool3, fused at stride 8."""

from .fcn import FCN
from .geometry import crop_offset


class FCN8s(FCN):
    def __init__(self, *args, **config):  # FCN's arguments, positional as before or by name
        super().__init__(*args, **config)
        self.score_pool3 = self.score_layer(self.conv3_3.weight.shape[0])  # registration order as in pytorch-fcn
        self.score_pool4 = self.score_layer(self.conv4_3.weight.shape[0])
        self.upscore2 = self.upsampler(4, 2)
        self.upscore8 = self.upsampler(16, 8, final=True)
        self.upscore_pool4 = self.upsampler(4, 2)
        up2 = self.map_of("score_fr", "upscore2")
        up_pool4 = self.map_of("score_fr", "upscore2", "upscore_pool4")
        self.offsets = {  # 5, 9 and 31 with pad 100
            "score_pool4": crop_offset(self.map_of("pool4", "score_pool4"), up2),
            "score_pool3": crop_offset(self.map_of("pool3", "score_pool3"), up_pool4),
            "upscore8": self.final_offset("score_fr", "upscore2", "upscore_pool4", "upscore8"),
        }

    def forward(self, x):
        x, size = self.prepare(x)
        score_fr, taps = self.body(x, taps=("pool3", "pool4"))
        upscore2 = self.upscore2(score_fr)
        score_pool4 = self.crop_to(self.score_pool4(taps["pool4"]), self.offsets["score_pool4"], upscore2)
        upscore_pool4 = self.upscore_pool4(upscore2 + score_pool4)
        score_pool3 = self.crop_to(self.score_pool3(taps["pool3"]), self.offsets["score_pool3"], upscore_pool4)
        return self.upsample_to(self.upscore8, upscore_pool4 + score_pool3, self.offsets["upscore8"], size)

    @classmethod
    def from_fcn16s(cls, fcn16s):
        """The paper's staged training: start from a trained 16s (score_pool3 starts at zero)."""
        return cls.from_model(fcn16s)
